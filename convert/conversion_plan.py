"""The first stage of ``edge convert``: every cheap check, then every input read (the source, the
fine-tuning data, the calibration frames, the held-out set), so that bad input fails in seconds and
before any slow step. :class:`Plan` is what the later stages (:mod:`convert.conversion`) work from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convert.convert_options import FORMAT_ONNX, ConvertOptions, check_options, wants_channel_pruning
from convert.inputs import Source, load_source
from edge.errors import EdgeError


class Steps:
    """Timed, reported steps."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.records: list[dict] = []
        self.log = log

    def run(self, name: str, fn: Callable, summary: Callable | str = ""):
        self.log(f"{name} ...")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        text = summary(result) if callable(summary) else summary
        self.records.append({"name": name, "seconds": round(seconds, 2), "summary": text})
        self.log(f"{name}: {text} ({seconds:.1f} s)" if text else f"{name}: done ({seconds:.1f} s)")
        return result


@dataclass
class Plan:
    """What will be converted and how, with every input already read."""

    opts: ConvertOptions
    output: Path
    source: Source
    prune: bool  # pruning asked for and possible (a trainable source)
    channel_prune: bool  # --prune-channels / --latency-target
    train_set: object | None  # convert.data.Dataset for pruning / QAT fine-tuning
    frames: list | None  # int8 calibration frames, float32 [1, H, W, 3] raw pixels
    val_set: object | None  # held-out convert.data.Dataset for mAP
    steps: Steps
    notes: list[str]
    started: float  # perf_counter at the start of the conversion
    parity_images: list[Path] | None = None  # --format onnx: the images the parity gate runs on
    parity_source: str | None = None  # where they come from, for the report
    saved_modules: dict = field(default_factory=dict)  # the SavedModels exported so far, by weights

    @property
    def quantization(self) -> str:
        if self.opts.float_model or self.opts.format == FORMAT_ONNX:
            return "float32"
        if self.opts.qat:
            return "int8-pqat" if self.prune else "int8-qat"
        return "int8-ptq"

    @property
    def output_is_reference(self) -> bool:
        """A float model that pruning did not change is the float reference itself."""
        return self.opts.float_model and not self.prune and not self.channel_prune


def _dataset(path: Path, labels: list[str] | None, option: str):
    from convert.data import load_dataset

    try:
        return load_dataset(path, labels=labels)
    except EdgeError as exc:
        raise EdgeError(str(exc).replace("--data", option, 1)) from None


def _validation_set(opts: ConvertOptions):
    from convert.data import load_coco

    if opts.coco is not None:
        if opts.images is None:
            raise EdgeError("--coco needs --images DIR (the folder its file_name entries are relative to)")
        dataset = load_coco(opts.coco, opts.images)
    elif opts.val is not None:
        dataset = _dataset(opts.val, None, "--val")
    else:
        return None
    if not dataset.samples:
        raise EdgeError(f"--val {opts.val or opts.coco}: no usable images")
    return dataset


def _wants_pruning(opts: ConvertOptions, source: Source, notes: list[str]) -> bool:
    if opts.format == FORMAT_ONNX:
        if opts.sparsity > 0.0 and source.trainable:
            notes.append("pruning skipped: --format onnx exports the float model as trained")
        return False
    if opts.sparsity > 0.0 and not source.trainable:
        notes.append(f"pruning skipped: a {source.kind} has no trainable weights to fine-tune")
    if opts.qat and not source.trainable:
        raise EdgeError(f"--qat: a {source.kind} has no trainable weights; convert it without --qat (PTQ)")
    return opts.sparsity > 0.0 and source.trainable


def _check_channel_pruning(opts: ConvertOptions, source: Source) -> bool:
    if not wants_channel_pruning(opts):
        return False
    if not source.trainable:
        option = "--prune-channels" if opts.prune_channels is not None else "--latency-target"
        raise EdgeError(f"{option}: a {source.kind} has no trainable weights here to rebuild narrower and "
                        "fine-tune; prune the training run or Keras model it came from")
    return True


def _training_set(opts: ConvertOptions, source: Source):
    data_path = opts.data or (source.config.training.get("data") if source.config else None)
    if not data_path:
        raise EdgeError("pruning and --qat fine-tune on the training data: pass --data DIR "
                        "(or --sparsity 0 to skip weight pruning)")
    return _dataset(Path(data_path), source.labels, "--data")


def _calibration_paths(calib_paths: list[Path] | None, train_set, notes: list[str]) -> list[Path]:
    if calib_paths is not None:
        return calib_paths
    if train_set is not None:
        notes.append("calibrated on the fine-tuning data (no --calib given)")
        return [s.image_path for s in train_set.samples]
    raise EdgeError("int8 conversion needs calibration images: pass --calib DIR (or --float)")


def plan(opts: ConvertOptions, log: Callable[[str], None] = print) -> Plan:
    """Check ``opts`` and read every input; when this fails, nothing slow has run yet."""
    from convert import quantize

    started = time.perf_counter()
    output = check_options(opts)
    steps, notes = Steps(log), []
    # Cheap checks of the user's folders first: a typo should not cost a model load.
    calib_paths = quantize.list_images(opts.calib) if opts.calib is not None and not opts.float_model else None
    val_set = _validation_set(opts)
    source = steps.run("load", lambda: load_source(opts.source, opts.labels), Source.describe)
    prune = _wants_pruning(opts, source, notes)
    channel_prune = _check_channel_pruning(opts, source)
    train_set = _training_set(opts, source) if prune or opts.qat or channel_prune else None
    frames = None
    parity_images, parity_source = None, None
    if opts.format == FORMAT_ONNX:
        if val_set is not None:
            parity_images = [s.image_path for s in val_set.samples]
            parity_source = f"the held-out set {opts.val or opts.coco}"
        else:
            parity_images = quantize.list_images(opts.calib)[:opts.calib_images]
            parity_source = f"the calibration images --calib {opts.calib} (unlabelled: no mAP compared)"
    elif not opts.float_model:
        paths = _calibration_paths(calib_paths, train_set, notes)
        height, width = source.head.input_size
        frames = steps.run("calibration images", lambda: quantize.load_calibration_frames(
            paths, height, width, opts.calib_images), lambda f: f"{len(f)} images via FrameBuffer")
    return Plan(opts=opts, output=output, source=source, prune=prune, channel_prune=channel_prune,
                train_set=train_set, frames=frames,
                val_set=val_set, steps=steps, notes=notes, started=started, parity_images=parity_images,
                parity_source=parity_source)
