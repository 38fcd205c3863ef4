"""``edge convert``: source -> (prune) -> (QAT) -> int8 or float ``.tflite`` -> validation -> files.

Sources: an edgekit training run directory (``config.json`` + checkpoints), a Keras model file of
our SSD with its ``config.json`` beside it, a TF1 OD API ``frozen_inference_graph.pb``, or a TF2
SavedModel from the OD API's ``export_tflite_graph_tf2.py``.

Order matters: the float reference is exported before pruning touches anything, every model is
built in a private temporary directory, and only a conversion that passed every step (including
``--max-map-drop``) renames its model and report into place. A failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from convert.config import CONFIG_NAME, SSDConfig
from convert.export import RAW_PIXELS, HeadSpec, PostprocessOptions
from edge.errors import EdgeError
from edge.contract.modelinfo import HEAD_POSTPROCESS, ModelInfo

KIND_RUN = "training run"
KIND_KERAS = "keras model"
KIND_FROZEN = "OD API frozen graph"
KIND_SAVED_MODEL = "OD API TF2 SavedModel"


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


@dataclass
class _Source:
    kind: str
    head: HeadSpec
    labels: list[str]
    config: SSDConfig | None = None
    model: object = None  # tf-keras model (trainable sources)
    network: Callable | None = None  # frozen graph head
    saved_model: Path | None = None  # TF2 export directory


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("edgekit", "tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def _load_labels(path: Path | None, count: int) -> list[str]:
    if path is None:
        return [f"class_{i + 1}" for i in range(count)]
    from edge.contract.labels import load_labels

    labels = load_labels(path)
    if len(labels) < count:
        raise EdgeError(f"--labels {path}: {len(labels)} labels but the model has {count} classes")
    return labels[:count]


def load_source(opts: ConvertOptions) -> _Source:
    """Identify and load ``opts.source``; EdgeError (one line) for anything unusable."""
    source = Path(opts.source)
    if not source.exists():
        raise EdgeError(f"{source}: no such file or directory")
    if source.is_dir() and (source / CONFIG_NAME).is_file():
        from convert.train import load_trained_model

        try:
            model, config = load_trained_model(source)
        except (IndexError, OSError, RuntimeError) as exc:  # truncated data files surface as IndexError
            raise EdgeError(f"{source}: unreadable checkpoint ({str(exc).splitlines()[0][:200]})") from None
        return _keras_source(KIND_RUN, model, config)
    if source.is_file() and source.suffix.lower() in (".keras", ".h5"):
        config_path = source.parent / CONFIG_NAME
        if not config_path.is_file():
            raise EdgeError(f"{source}: a Keras model needs its {CONFIG_NAME} beside it ({config_path} is missing)")
        config = SSDConfig.load(config_path)
        from convert.tf import import_keras

        keras = import_keras()
        try:
            model = keras.models.load_model(str(source), compile=False)
        except Exception as exc:  # OSError, ValueError from h5py/zip
            raise EdgeError(f"{source}: cannot load the Keras model ({str(exc).splitlines()[0][:200]})") from None
        anchors = int(model.outputs[0].shape[1]) if model.outputs else -1
        if anchors != config.anchors.num_anchors or tuple(model.inputs[0].shape[1:3]) != \
                (config.architecture.input_size,) * 2:
            raise EdgeError(f"{source}: the model does not match {config_path} (input {model.inputs[0].shape}, "
                            f"{anchors} boxes vs {config.anchors.num_anchors} anchors)")
        return _keras_source(KIND_KERAS, model, config)
    if source.is_file() and source.suffix.lower() in (".pb", ".pbtxt") and source.name != "saved_model.pb":
        from convert.odapi import load_frozen_graph

        graph = load_frozen_graph(source)
        head = HeadSpec(graph.input_size, graph.anchor_config, graph.num_classes, graph.box_coder,
                        graph.normalization, graph.score_conversion, graph.anchors)
        return _Source(KIND_FROZEN, head, _load_labels(opts.labels, graph.num_classes), network=graph.network)
    saved = source if source.is_dir() else source.parent
    if (saved / "saved_model.pb").is_file():
        from convert.odapi import load_tf2_saved_model

        export = load_tf2_saved_model(saved)
        return _Source(KIND_SAVED_MODEL, export.head, _load_labels(opts.labels, export.head.num_classes),
                       network=export.network, saved_model=saved)
    raise EdgeError(f"{source}: not a training run directory (no {CONFIG_NAME}), Keras model (.keras/.h5), "
                    "frozen graph (.pb) or SavedModel directory")


def _keras_source(kind: str, model, config: SSDConfig) -> _Source:
    arch = config.architecture
    head = HeadSpec((arch.input_size, arch.input_size), config.anchors, arch.num_classes, config.box_coder,
                    config.normalization, config.score_conversion)
    return _Source(kind, head, list(config.labels), config=config, model=model)


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


def _export(source: _Source, model, opts: ConvertOptions, workdir: Path, name: str, *, int8: bool,
            frames=None, qat: bool = False) -> bytes:
    from convert import export, quantize

    if source.kind == KIND_SAVED_MODEL:
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
    attributes = opts.postprocess.op_attributes(source.head.num_classes, source.head.box_coder)
    return export.set_postprocess_attributes(model_bytes, attributes)


def _model_info(source: _Source, opts: ConvertOptions, provenance: dict) -> ModelInfo:
    attributes = opts.postprocess.op_attributes(source.head.num_classes, source.head.box_coder)
    return ModelInfo(
        labels=list(source.labels), normalization=RAW_PIXELS, head=HEAD_POSTPROCESS,
        anchors=source.head.anchors, box_coder=source.head.box_coder,
        score_conversion=source.head.score_conversion, has_background=True,
        nms_iou_threshold=opts.postprocess.iou_threshold, max_detections=opts.postprocess.max_detections,
        postprocess=attributes, provenance=provenance,
    )


def convert(opts: ConvertOptions, log: Callable[[str], None] = print) -> dict:
    """Run the whole conversion; returns the report (also written beside the model)."""
    from convert import export, quantize, validate
    from convert.report import table, write_report

    started = time.perf_counter()
    opts.postprocess.validate()
    output = Path(opts.output)
    if output.suffix.lower() != ".tflite":
        raise EdgeError(f"-o {output}: the output must be a .tflite file")
    if output.parent.exists() and not output.parent.is_dir():
        raise EdgeError(f"-o {output}: {output.parent} is not a directory")
    if opts.max_map_drop is not None and opts.val is None and opts.coco is None:
        raise EdgeError("--max-map-drop needs a held-out set to measure on: --val DIR or --coco ANN.json --images DIR")
    if not 0.0 <= opts.sparsity < 1.0:
        raise EdgeError(f"--sparsity {opts.sparsity}: must be in [0, 1) (0 disables pruning)")
    steps = _Steps(log)
    notes: list[str] = []
    # Cheap checks of the user's folders first: a typo should not cost a model load.
    calib_paths = quantize.list_images(opts.calib) if opts.calib is not None and not opts.float_model else None
    val_set = _validation_set(opts)

    source = steps.run("load", lambda: load_source(opts), lambda s: f"{s.kind}, {s.head.num_classes} classes, "
                       f"input {s.head.input_size[0]}x{s.head.input_size[1]}")
    trainable = source.model is not None
    prune = opts.sparsity > 0.0 and trainable
    if opts.sparsity > 0.0 and not trainable:
        notes.append(f"pruning skipped: a {source.kind} has no trainable weights to fine-tune")
    if opts.qat and not trainable:
        raise EdgeError(f"--qat: a {source.kind} has no trainable weights; convert it without --qat (PTQ)")

    # Every input is read before any slow step, so bad input fails in seconds.
    train_set = None
    if prune or opts.qat:
        data_path = opts.data or (source.config.training.get("data") if source.config else None)
        if not data_path:
            raise EdgeError("pruning and --qat fine-tune on the training data: pass --data DIR "
                            "(or --sparsity 0 to skip pruning)")
        train_set = _dataset(Path(data_path), source.labels, "--data")
    frames = None
    if not opts.float_model:
        if calib_paths is not None:
            pass
        elif train_set is not None:
            calib_paths = [s.image_path for s in train_set.samples]
            notes.append("calibrated on the fine-tuning data (no --calib given)")
        else:
            raise EdgeError("int8 conversion needs calibration images: pass --calib DIR (or --float)")
        height, width = source.head.input_size
        frames = steps.run("calibration images", lambda: quantize.load_calibration_frames(
            calib_paths, height, width, opts.calib_images), lambda f: f"{len(f)} images via FrameBuffer")

    workdir = Path(tempfile.mkdtemp(prefix="edge-convert-"))
    try:
        provenance = {
            "source": str(Path(opts.source).resolve()), "source_kind": source.kind,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(), "command": opts.command,
        }
        # 1. The float reference, before pruning can touch the weights.
        reference_info = _model_info(source, opts, dict(provenance, quantization="float32", sparsity=0.0))
        reference_bytes = steps.run("float reference", lambda: export.finish_model(
            _export(source, source.model, opts, workdir, "float", int8=False), reference_info),
            lambda b: f"{len(b) / 1024:.0f} KiB")
        reference_path = export.write_atomic(workdir / "float.tflite", reference_bytes)

        model = source.model
        pruning = None
        if prune:
            from convert.finetune import make_fine_tuner
            from convert.prune import prune_model

            tuner = make_fine_tuner(source.config, train_set, opts.batch_size, seed=opts.seed, log=log)
            pruning = steps.run("prune", lambda: prune_model(model, opts.sparsity, opts.prune_steps, tuner),
                                lambda r: f"target {r.target_sparsity:.2f}, achieved {r.sparsity['overall']:.3f} "
                                f"({', '.join(f'{k} {v:.2f}' for k, v in r.sparsity['by_kind'].items())}) "
                                f"after {r.steps} steps")
            model = pruning.model
            if pruning.left_dense:
                notes.append(f"left dense (the pruning wrapper refused them): {', '.join(pruning.left_dense)}")
        qat_info = None
        if opts.qat:
            from convert.finetune import make_fine_tuner

            qat_model = steps.run("quantization-aware model", lambda: quantize.quantize_aware(model, prune),
                                  "PQAT (sparsity-preserving)" if prune else "QAT (default 8-bit scheme)")
            tuner = make_fine_tuner(source.config, train_set, opts.batch_size, seed=opts.seed + 1, log=log)
            qat_info = steps.run("QAT fine-tune", lambda: tuner(qat_model, opts.qat_steps, []),
                                 lambda r: f"{r['steps']} steps, loss {r['final_loss']}")
            model = qat_model

        if opts.float_model:
            quantization = "float32"
        elif opts.qat:
            quantization = "int8-pqat" if prune else "int8-qat"
        else:
            quantization = "int8-ptq"
        sparsity_record = {"target": opts.sparsity if prune else 0.0,
                           "achieved": pruning.sparsity if pruning else None,
                           "steps": opts.prune_steps if prune else 0}
        info = _model_info(source, opts, dict(provenance, quantization=quantization, sparsity=sparsity_record,
                                              calibration={"dir": str(opts.calib) if opts.calib else None,
                                                           "images": len(frames) if frames else 0},
                                              qat=qat_info))
        if opts.float_model and not prune:
            output_bytes = export.finish_model(reference_bytes, info)
        else:
            output_bytes = steps.run(
                "convert", lambda: export.finish_model(_export(
                    source, model, opts, workdir, "output", int8=not opts.float_model, frames=frames,
                    qat=opts.qat), info),
                lambda b: f"{quantization}, {len(b) / 1024:.0f} KiB")
        staged = export.write_atomic(workdir / "output.tflite", output_bytes)

        # Validation: both models through the board's Detector, same data, same metric.
        report = {
            "output": str(output), "source": provenance["source"], "source_kind": source.kind,
            "quantization": quantization, "sparsity": sparsity_record,
            "postprocess": info.postprocess, "labels": list(source.labels),
            "input": None, "models": {}, "map_drop": None, "max_map_drop": opts.max_map_drop,
            "steps": steps.records, "notes": notes, "versions": provenance["versions"],
        }
        measured = {"float": reference_path, quantization if quantization != "float32" else "output": staged}
        if opts.float_model and not prune:
            measured = {"output": staged}
        evaluations = {}
        for name, path in measured.items():
            def measure(path=path):
                stats = validate.model_stats(path)
                latency = validate.measure_latency(path, runs=opts.latency_runs, num_threads=opts.num_threads)
                evaluation = None
                if val_set is not None:
                    from convert.evaluate import evaluate_tflite

                    evaluation = evaluate_tflite(path, val_set, num_threads=opts.num_threads)
                return stats, latency, evaluation

            stats, latency, evaluation = steps.run(
                f"validate {name}", measure,
                lambda r: f"{r[0].size_bytes / 1024:.0f} KiB (gzip {r[0].gzip_bytes / 1024:.0f}), "
                f"{r[1].median_ms:.2f} ms" + (f", mAP@0.5 {100 * r[2].map50:.1f}" if r[2] else ""))
            stats.path = str(output) if path == staged else "(float reference, not kept)"
            report["models"][name] = {"stats": stats.to_dict(), "latency": latency.to_dict(),
                                      "eval": evaluation.to_dict() if evaluation else None}
            evaluations[name] = evaluation
            if latency.note and latency.note not in notes:
                notes.append(latency.note)
        report["input"] = report["models"][list(measured)[-1]]["stats"]["input"]
        if val_set is None:
            notes.append("mAP not measured: pass --val DIR or --coco ANN.json --images DIR")
        elif "float" in evaluations:
            ref, out = evaluations["float"], evaluations[list(measured)[-1]]
            report["map_drop"] = {"map50_points": round(100 * (ref.map50 - out.map50), 3),
                                  "map_points": round(100 * (ref.map - out.map), 3)}
        report["conversion_seconds"] = round(time.perf_counter() - started, 1)
        log(table(report))
        drop = report["map_drop"]
        if opts.max_map_drop is not None and drop is not None and drop["map50_points"] > opts.max_map_drop:
            raise ValidationFailed(f"{quantization} model loses {drop['map50_points']:.2f} mAP@0.5 points "
                                   f"(> --max-map-drop {opts.max_map_drop}); nothing written")
        # All steps passed: only now do files appear at the destination.
        export.write_atomic(output, output_bytes)
        write_report(output, report)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def command_line() -> str:
    return " ".join(["edge"] + sys.argv[1:]) if sys.argv else "edge convert"
