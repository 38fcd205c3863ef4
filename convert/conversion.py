"""``edge convert``: source -> (channel prune) -> (sparsity) -> (QAT) -> int8 or float ``.tflite`` -> validation -> files.

Four stages, each a function, and :func:`convert` runs them in order:

- :func:`plan`: every cheap check, then the source (:mod:`convert.inputs`), the fine-tuning data,
  the calibration frames and the held-out set. Every input is read before any slow step, so bad
  input fails in seconds.
- :func:`build`: the float reference, channel pruning (:mod:`convert.channel_plan`, then fine-tuning
  with the unpruned model as teacher), weight sparsity, QAT and the output model, each a timed,
  reported step.
- :func:`measure`: every model through the board's own code, same data, same metric: the report.
- :func:`publish`: the ``--max-map-drop`` gate, then the model and its report.

Order matters: the float reference is exported before pruning touches anything, every model is
built in a private temporary directory, and only a conversion that passed every step (including
``--max-map-drop``) renames its model and report into place. A failure leaves nothing behind.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable

from convert.head import PostprocessOptions
from convert.inputs import Source, load_source
from convert.tflite_edit import embed_metadata, set_postprocess_attributes
from edge.contract.modelinfo import ModelInfo
from edge.errors import EdgeError
from edge.signals import check_interrupted
from edge.files import atomic_path, atomic_write
from edge.provenance import package_versions

# Distributions a converted model's provenance names (None when absent).
CONVERT_DISTS = ("edgekit", "tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert")


FORMAT_TFLITE, FORMAT_ONNX = "tflite", "onnx"
FORMATS = (FORMAT_TFLITE, FORMAT_ONNX)


class ValidationFailed(EdgeError):
    """The converted model lost more accuracy than ``--max-map-drop`` allows (no file written)."""

    exit_code = 3


@dataclass
class ConvertOptions:
    source: Path
    output: Path
    calib: Path | None = None  # calibration images (int8); default: the fine-tuning data's images
    val: Path | None = None  # held-out VOC folder (or a folder with one COCO json)
    coco: Path | None = None  # held-out COCO annotation json (with images)
    images: Path | None = None
    data: Path | None = None  # training data for pruning / QAT fine-tuning
    labels: Path | None = None  # label file for OD API sources
    sparsity: float = 0.5  # 0 disables pruning
    prune_steps: int = 300
    prune_channels: float | None = None  # fraction of the prunable channels removed
    latency_target: float | None = None  # fraction of the dense int8 network's invoke time
    channel_steps: int = 300  # fine-tuning steps after channel pruning
    distill_weight: float = 1.0  # channel-pruned fine-tuning learns from the unpruned model; 0: ground truth only
    qat: bool = False
    qat_steps: int = 300
    float_model: bool = False
    max_map_drop: float | None = None  # mAP@0.5 points
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)
    calib_images: int = 100
    batch_size: int = 8
    latency_runs: int = 30
    num_threads: int | None = None
    seed: int = 0
    command: str | None = None  # for provenance
    format: str = "tflite"  # "onnx": the float model as ONNX (convert.onnx_export), parity-gated


class _Steps:
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
    steps: _Steps
    notes: list[str]
    started: float  # perf_counter at the start of the conversion
    parity_images: list[Path] | None = None  # --format onnx: the images the parity gate runs on
    parity_source: str | None = None  # where they come from, for the report

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


@dataclass
class Built:
    """The output model in memory, and every model to measure staged in the private directory."""

    plan: Plan
    provenance: dict
    info: ModelInfo  # the output model's metadata
    sparsity: dict  # target, achieved, steps
    output_bytes: bytes
    models: dict[str, Path]  # report name -> staged file, in measuring order; the last is the output
    channel_pruning: dict | None = None  # convert.channel_plan's record, plus the fine-tuning

    @property
    def staged(self) -> Path:
        return list(self.models.values())[-1]


# ---------------------------------------------------------------- plan

def _check_options(opts: ConvertOptions) -> Path:
    opts.postprocess.validate()
    output = Path(opts.output)
    if opts.format not in FORMATS:
        raise EdgeError(f"--format {opts.format!r}: choose {' or '.join(FORMATS)}")
    if output.suffix.lower() != f".{opts.format}":
        raise EdgeError(f"-o {output}: the output must be a .{opts.format} file (--format {opts.format})")
    if opts.format == FORMAT_ONNX:
        if opts.qat:
            raise EdgeError("--qat: --format onnx exports the float model; QAT applies to int8 TFLite only")
        if opts.val is None and opts.coco is None and opts.calib is None:
            raise EdgeError("--format onnx checks the export against the float TFLite model on images: "
                            "pass --val DIR (or --coco ANN.json --images DIR) or --calib DIR")
    if output.parent.exists() and not output.parent.is_dir():
        raise EdgeError(f"-o {output}: {output.parent} is not a directory")
    if opts.max_map_drop is not None and opts.val is None and opts.coco is None:
        raise EdgeError("--max-map-drop needs a held-out set to measure on: --val DIR or --coco ANN.json --images DIR")
    if not 0.0 <= opts.sparsity < 1.0:
        raise EdgeError(f"--sparsity {opts.sparsity}: must be in [0, 1) (0 disables pruning)")
    if opts.prune_channels is not None and not 0.0 <= opts.prune_channels < 1.0:
        raise EdgeError(f"--prune-channels {opts.prune_channels}: must be in [0, 1) "
                        "(the fraction of the prunable channels removed)")
    if opts.latency_target is not None and not 0.0 < opts.latency_target < 1.0:
        raise EdgeError(f"--latency-target {opts.latency_target}: must be between 0 and 1 "
                        "(a fraction of the dense int8 model's invoke time)")
    if opts.channel_steps < 0:
        raise EdgeError(f"--channel-steps {opts.channel_steps}: must be 0 or more")
    if opts.distill_weight < 0:
        raise EdgeError(f"--distill-weight {opts.distill_weight}: must be 0 or more (0: no teacher)")
    if _wants_channel_pruning(opts) and opts.format == FORMAT_ONNX:
        raise EdgeError("--prune-channels / --latency-target: --format onnx exports the float model as trained; "
                        "channel pruning applies to --format tflite")
    _check_paths(opts, output)
    return output


def _check_paths(opts: ConvertOptions, output: Path) -> None:
    """Before any work: the model and its report may land on no input and must be writable."""
    from convert.report import report_path
    from edge.files import FILE, FOLDER, check_paths

    inputs = [("SOURCE", opts.source), ("--calib", opts.calib), ("--val", opts.val), ("--coco", opts.coco),
              ("--images", opts.images), ("--data", opts.data), ("--labels", opts.labels)]
    check_paths(inputs, [("-o", output.parent, FOLDER), ("-o", output, FILE),
                         ("the report", report_path(output), FILE)])


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


def _wants_channel_pruning(opts: ConvertOptions) -> bool:
    return opts.prune_channels is not None or opts.latency_target is not None


def _check_channel_pruning(opts: ConvertOptions, source: Source) -> bool:
    if not _wants_channel_pruning(opts):
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
    output = _check_options(opts)
    steps, notes = _Steps(log), []
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


# ---------------------------------------------------------------- build

def _provenance(plan: Plan) -> dict:
    return {
        "source": str(Path(plan.opts.source).resolve()), "source_kind": plan.source.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(CONVERT_DISTS, installed_only=False), "command": plan.opts.command,
    }


def _export(plan: Plan, model, workdir: Path, name: str, info: ModelInfo, *, int8: bool,
            frames=None, qat: bool = False) -> bytes:
    """One model: the detection module as a SavedModel -> ``.tflite`` -> the op's attributes and metadata."""
    from convert import export, quantize

    source, opts = plan.source, plan.opts
    if source.ends_in_postprocess:
        module = export.build_passthrough_module(source.network, source.head)
    elif model is not None:
        module = export.build_detection_module(export.keras_network(model), source.head, opts.postprocess,
                                               trackable=model)
    else:
        module = export.build_detection_module(source.network, source.head, opts.postprocess)
    saved = export.save_module(module, workdir / f"{name}_savedmodel")
    representative = quantize.representative_dataset(frames) if frames is not None else None
    model_bytes = export.tflite_from_saved_model(saved, int8=int8, representative=representative, qat=qat)
    # The converter drops attributes it does not know (detections_per_class), and a TF2 OD API
    # export carries the OD API's own: write the requested set into the op, as the metadata says.
    return embed_metadata(set_postprocess_attributes(model_bytes, info.postprocess), info)


def _float_reference(plan: Plan, workdir: Path, provenance: dict) -> bytes:
    """The float model before pruning can touch the weights: what every other model is compared with."""
    source = plan.source
    info = source.head.model_info(source.labels, plan.opts.postprocess,
                                  dict(provenance, quantization="float32", sparsity=0.0))
    return _export(plan, source.model, workdir, "float", info, int8=False)


def _prune(plan: Plan, model):
    from convert.finetune import make_fine_tuner
    from convert.prune import prune_model

    opts = plan.opts
    tuner = make_fine_tuner(plan.source.config, plan.train_set, opts.batch_size, seed=opts.seed, log=plan.steps.log)
    return prune_model(model, opts.sparsity, opts.prune_steps, tuner)


def _importance_images(plan: Plan, limit: int = 64):
    """Normalised float inputs for channel importance: the calibration frames, or the training images."""
    import numpy as np

    from convert import quantize

    frames = plan.frames
    if frames is None:
        height, width = plan.source.head.input_size
        frames = quantize.load_calibration_frames([s.image_path for s in plan.train_set.samples], height, width,
                                                  limit)
    norm = plan.source.config.normalization
    return np.concatenate([(f - norm.mean) / norm.std for f in frames[:limit]]).astype(np.float32)


def _channel_prune(plan: Plan):
    """Narrow the model by measured int8 latency, then fine-tune it (the unpruned model teaching)."""
    from convert import channel_plan
    from convert.finetune import make_fine_tuner

    opts, steps = plan.opts, plan.steps
    images = steps.run("channel importance images", lambda: _importance_images(plan),
                       lambda x: f"{len(x)} images")
    result = steps.run("channel prune", lambda: channel_plan.prune_channels(
        plan.source.model, images, opts.prune_channels, opts.latency_target, runs=opts.latency_runs,
        num_threads=opts.num_threads, log=steps.log), lambda r: channel_plan.describe(r.record))
    record = result.record
    if record.get("latency_target_missed"):
        plan.notes.append(f"--latency-target {opts.latency_target}: not reached within "
                          f"{channel_plan.MAX_LATENCY_ROUNDS} rounds (see channel_pruning.rounds)")
    teacher, distill = None, None
    if opts.distill_weight > 0:
        from convert.distill import DistillConfig, Teacher

        config = plan.source.config
        teacher = Teacher(plan.source.model, config, config)
        distill = DistillConfig(weight=opts.distill_weight)
    record["distillation"] = {"teacher": "the unpruned model" if teacher else None,
                              "weight": opts.distill_weight if teacher else 0.0}
    if opts.channel_steps:
        tuner = make_fine_tuner(plan.source.config, plan.train_set, opts.batch_size, seed=opts.seed + 2,
                                log=steps.log, teacher=teacher, distill=distill)
        record["fine_tune"] = steps.run("channel fine-tune", lambda: tuner(result.model, opts.channel_steps, []),
                                        lambda r: f"{r['steps']} steps, loss {r['final_loss']}"
                                                  + (" (distilled from the unpruned model)" if teacher else ""))
    return result.model, record


def _channel_provenance(record: dict) -> dict:
    """What the model's own metadata keeps of the channel pruning (the report has the rest)."""
    keys = ("remove_fraction", "latency_target", "channels", "groups", "params", "macs", "int8_network",
            "distillation", "importance", "chooser")
    return {k: record[k] for k in keys if k in record}


def _describe_pruning(result) -> str:
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in result.sparsity["by_kind"].items())
    return (f"target {result.target_sparsity:.2f}, achieved {result.sparsity['overall']:.3f} ({kinds}) "
            f"after {result.steps} steps")


def _qat_fine_tune(plan: Plan, qat_model) -> dict:
    from convert.finetune import make_fine_tuner

    opts = plan.opts
    tuner = make_fine_tuner(plan.source.config, plan.train_set, opts.batch_size, seed=opts.seed + 1,
                            log=plan.steps.log)
    return tuner(qat_model, opts.qat_steps, [])


def _output_info(plan: Plan, provenance: dict, sparsity: dict, qat: dict | None) -> ModelInfo:
    opts, source = plan.opts, plan.source
    calibration = {"dir": str(opts.calib) if opts.calib else None, "images": len(plan.frames) if plan.frames else 0}
    return source.head.model_info(source.labels, opts.postprocess, dict(
        provenance, quantization=plan.quantization, sparsity=sparsity, calibration=calibration, qat=qat))


def build(plan: Plan, workdir: Path) -> Built:
    """The float reference, then pruning and QAT when asked, then the output model, staged in ``workdir``."""
    from convert import quantize

    steps, opts = plan.steps, plan.opts
    provenance = _provenance(plan)
    reference = steps.run("float reference", lambda: _float_reference(plan, workdir, provenance),
                          lambda b: f"{len(b) / 1024:.0f} KiB")
    model, pruning, qat, channel_record = plan.source.model, None, None, None
    dense_int8 = None
    if plan.channel_prune:
        if not opts.float_model:
            dense_info = _output_info(plan, provenance, {"target": 0.0, "achieved": None, "steps": 0}, None)
            dense_int8 = steps.run("dense int8 (for comparison)", lambda: _export(
                plan, plan.source.model, workdir, "dense", dense_info, int8=True, frames=plan.frames),
                lambda b: f"{len(b) / 1024:.0f} KiB")
        model, channel_record = _channel_prune(plan)
        provenance = dict(provenance, channel_pruning=_channel_provenance(channel_record))
    if plan.prune:
        pruning = steps.run("prune", lambda: _prune(plan, model), _describe_pruning)
        model = pruning.model
        if pruning.left_dense:
            plan.notes.append(f"left dense (the pruning wrapper refused them): {', '.join(pruning.left_dense)}")
    if opts.qat:
        model = steps.run("quantization-aware model", lambda: quantize.quantize_aware(model, plan.prune),
                          "PQAT (sparsity-preserving)" if plan.prune else "QAT (default 8-bit scheme)")
        qat = steps.run("QAT fine-tune", lambda: _qat_fine_tune(plan, model),
                        lambda r: f"{r['steps']} steps, loss {r['final_loss']}")
    sparsity = {"target": opts.sparsity if plan.prune else 0.0, "achieved": pruning.sparsity if pruning else None,
                "steps": opts.prune_steps if plan.prune else 0}
    info = _output_info(plan, provenance, sparsity, qat)
    if opts.format == FORMAT_ONNX:
        from convert import onnx_export

        info.provenance = dict(onnx_export.onnx_provenance(info.provenance), calibration=None)
        output = steps.run("export onnx", lambda: onnx_export.export_onnx(plan.source, info, opts.postprocess),
                           lambda b: f"float32, opset {onnx_export.OPSET}, {len(b) / 1024:.0f} KiB")
        models = {"float": atomic_write(workdir / "float.tflite", reference),
                  "onnx": atomic_write(workdir / "output.onnx", output)}
    elif plan.output_is_reference:
        output = embed_metadata(reference, info)
        models = {"output": atomic_write(workdir / "output.tflite", output)}
    else:
        output = steps.run("convert", lambda: _export(plan, model, workdir, "output", info, int8=not opts.float_model,
                                                      frames=plan.frames, qat=opts.qat),
                           lambda b: f"{plan.quantization}, {len(b) / 1024:.0f} KiB")
        name = plan.quantization if plan.quantization != "float32" else "output"
        if plan.channel_prune:
            name += " channel-pruned"
        models = {"float": atomic_write(workdir / "float.tflite", reference),
                  name: atomic_write(workdir / "output.tflite", output)}
    if dense_int8 is not None:  # measured between the float reference and the output
        models = {"float": models["float"], "int8 dense": atomic_write(workdir / "dense.tflite", dense_int8),
                  **{k: v for k, v in models.items() if k != "float"}}
    return Built(plan=plan, provenance=provenance, info=info, sparsity=sparsity, output_bytes=output, models=models,
                 channel_pruning=channel_record)


# ---------------------------------------------------------------- measure

def _measure_model(plan: Plan, path: Path):
    """(ModelStats, Latency, Evaluation or None) of one staged model."""
    from convert import validate
    from convert.evaluate import evaluate_tflite

    opts = plan.opts
    if path.suffix.lower() == ".onnx":  # --format onnx: ONNX Runtime's CPU provider
        from convert import onnx_export

        stats = onnx_export.model_stats(path)
        latency = onnx_export.measure_latency(path, runs=opts.latency_runs, num_threads=opts.num_threads)
        return stats, latency, None  # its mAP comes from the parity run, on the CPU provider too
    stats = validate.model_stats(path)
    latency = validate.measure_latency(path, runs=opts.latency_runs, num_threads=opts.num_threads)
    evaluation = None
    if plan.val_set is not None:
        evaluation = evaluate_tflite(path, plan.val_set, num_threads=opts.num_threads)
    return stats, latency, evaluation


def _describe_measurement(result) -> str:
    stats, latency, evaluation = result
    text = f"{stats.size_bytes / 1024:.0f} KiB (gzip {stats.gzip_bytes / 1024:.0f}), {latency.median_ms:.2f} ms"
    return text + (f", mAP@0.5 {100 * evaluation.map50:.1f}" if evaluation else "")


def measure(built: Built) -> dict:
    """Every staged model through the board's code (size, sparsity, latency, mAP); returns the report."""
    plan = built.plan
    report = {
        "output": str(plan.output), "source": built.provenance["source"], "source_kind": plan.source.kind,
        "quantization": plan.quantization, "sparsity": built.sparsity,
        "postprocess": built.info.postprocess, "labels": list(plan.source.labels),
        "input": None, "models": {}, "map_drop": None, "max_map_drop": plan.opts.max_map_drop,
        "steps": plan.steps.records, "notes": plan.notes, "versions": built.provenance["versions"],
        "channel_pruning": built.channel_pruning,
    }
    evaluations = {}
    for name, path in built.models.items():
        stats, latency, evaluation = plan.steps.run(f"validate {name}", partial(_measure_model, plan, path),
                                                    _describe_measurement)
        stats.path = str(plan.output) if path == built.staged else "(float reference, not kept)"
        report["models"][name] = {"stats": stats.to_dict(), "latency": latency.to_dict(),
                                  "eval": evaluation.to_dict() if evaluation else None}
        evaluations[name] = evaluation
        if latency.note and latency.note not in plan.notes:
            plan.notes.append(latency.note)
    output_name = list(built.models)[-1]
    report["output_model"] = output_name
    if plan.opts.format == FORMAT_ONNX:
        from convert import onnx_export

        report["format"] = FORMAT_ONNX
        parity = plan.steps.run("parity", lambda: onnx_export.check_parity(
            built.models["onnx"], built.models["float"], plan.parity_images, plan.parity_source, plan.val_set,
            plan.opts.num_threads), lambda p: p.describe())
        report["parity"] = parity.to_dict()
        evaluations["onnx"] = parity.evaluation
        report["models"]["onnx"]["eval"] = parity.evaluation.to_dict() if parity.evaluation else None
    report["input"] = report["models"][output_name]["stats"]["input"]
    if plan.val_set is None:
        plan.notes.append("mAP not measured: pass --val DIR or --coco ANN.json --images DIR")
    elif "float" in evaluations and evaluations[output_name] is not None:
        ref, out = evaluations["float"], evaluations[output_name]
        report["map_drop"] = {"map50_points": round(100 * (ref.map50 - out.map50), 3),
                              "map_points": round(100 * (ref.map - out.map), 3)}
    report["conversion_seconds"] = round(time.perf_counter() - plan.started, 1)
    return report


# ---------------------------------------------------------------- publish

def publish(report: dict, model_bytes: bytes) -> Path:
    """The ``--max-map-drop`` gate, then the model and its report, each renamed into place; returns the model."""
    from convert.report import report_path

    parity = report.get("parity")
    if parity is not None and not parity["passed"]:
        raise ValidationFailed(f"the ONNX export does not match the float TFLite model: {parity['failures'][0]} "
                               f"({parity['compared']}); nothing written")
    drop, allowed = report["map_drop"], report["max_map_drop"]
    if allowed is not None and drop is not None and drop["map50_points"] > allowed:
        raise ValidationFailed(f"{report['quantization']} model loses {drop['map50_points']:.2f} mAP@0.5 points "
                               f"(> --max-map-drop {allowed}); nothing written")
    # All steps passed: only now do files appear at the destination, the model and its report as one
    # unit: both are written in full under temporary names before either is renamed into place.
    check_interrupted()  # a stop signal that a library swallowed must not end in an overwritten model
    output = Path(report["output"])
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as model_tmp, atomic_path(report_path(output)) as report_tmp:
        model_tmp.write_bytes(model_bytes)
        report_tmp.write_text(json.dumps(report, indent=2) + "\n")
        check_interrupted()
    return output


def convert(opts: ConvertOptions, log: Callable[[str], None] = print) -> dict:
    """Run the whole conversion; returns the report (also written beside the model)."""
    from convert.report import table

    planned = plan(opts, log)
    with tempfile.TemporaryDirectory(prefix="edge-convert-", ignore_cleanup_errors=True) as workdir:
        built = build(planned, Path(workdir))
        report = measure(built)
    log(table(report))
    publish(report, built.output_bytes)
    return report
