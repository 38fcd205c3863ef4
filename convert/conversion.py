"""``edge convert``: source -> (channel prune) -> (sparsity) -> (QAT) -> int8 or float ``.tflite`` -> validation -> files.

Four stages, each a function, and :func:`convert` runs them in order:

- :func:`plan` (:mod:`convert.conversion_plan`; the options and their checks are in
  :mod:`convert.convert_options`): every cheap check, then the source (:mod:`convert.inputs`), the
  fine-tuning data, the calibration frames and the held-out set. Every input is read before any
  slow step, so bad input fails in seconds.
- :func:`build`: the float reference, channel pruning (:mod:`convert.channel_stage`: the widths by
  :mod:`convert.channel_plan`, then fine-tuning with the unpruned model as teacher), weight sparsity, QAT and the output model, each a timed,
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
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable

from convert import channel_stage
from convert.conversion_plan import Plan, plan
from convert.convert_options import FORMAT_ONNX, ConvertOptions
from convert.tflite_edit import embed_metadata, set_postprocess_attributes
from edge.contract.modelinfo import ModelInfo
from edge.errors import EdgeError
from edge.signals import check_interrupted
from edge.files import atomic_path, atomic_write
from edge.provenance import package_versions

# Distributions a converted model's provenance names (None when absent).
CONVERT_DISTS = ("edgekit", "tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert")


class ValidationFailed(EdgeError):
    """The converted model lost more accuracy than ``--max-map-drop`` allows (no file written)."""

    exit_code = 3


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


# ---------------------------------------------------------------- build

def _provenance(plan: Plan) -> dict:
    return {
        "source": str(Path(plan.opts.source).resolve()), "source_kind": plan.source.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(CONVERT_DISTS, installed_only=False), "command": plan.opts.command,
    }


def _saved_module(plan: Plan, model, workdir: Path, name: str) -> Path:
    """The detection module of ``model`` (or of the source's own network) as a SavedModel, saved once
    per set of weights: the float reference and an int8 model of the same weights convert from one.
    Saving traces every layer, ~5 s of a tiny SSD's ~14-s conversion on two cores."""
    from convert import export

    source, opts = plan.source, plan.opts
    key = (id(model), export.weights_digest(model)) if model is not None else (id(source.network), None)
    saved = plan.saved_modules.get(key)
    if saved is not None:
        return saved
    if source.ends_in_postprocess:
        module = export.build_passthrough_module(source.network, source.head)
    elif model is not None:
        module = export.build_detection_module(export.keras_network(model), source.head, opts.postprocess,
                                               trackable=model)
    else:
        module = export.build_detection_module(source.network, source.head, opts.postprocess)
    saved = plan.saved_modules[key] = export.save_module(module, workdir / f"{name}_savedmodel")
    return saved


def _export(plan: Plan, model, workdir: Path, name: str, info: ModelInfo, *, int8: bool,
            frames=None, qat: bool = False) -> bytes:
    """One model: the detection module as a SavedModel -> ``.tflite`` -> the op's attributes and metadata."""
    from convert import export, quantize

    saved = _saved_module(plan, model, workdir, name)
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
        model, channel_record = channel_stage.channel_prune(plan)
        provenance = dict(provenance, channel_pruning=channel_stage.channel_provenance(channel_record))
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
        from convert import onnx_parity

        report["format"] = FORMAT_ONNX
        parity = plan.steps.run("parity", lambda: onnx_parity.check_parity(
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
