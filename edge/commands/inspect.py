"""``edge inspect MODEL``: tensors, operators, head kind, metadata and the engine's memory.

A ``.tflite`` model is shown as its TFLite interpreter sees it; an ``.onnx`` one as ONNX Runtime
does: its post-process is the graph's own box decoding + NonMaxSuppression tail (not a
TFLite_Detection_PostProcess op), with the providers the session runs on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.commands._args import add_onnx_args, onnx_options_from_args, thread_count
from edge.contract.heads import classify_head, describe_head, postprocess_roles, raw_head_roles
from edge.contract.labels import load_labels
from edge.contract.modelinfo import HEAD_POSTPROCESS
from edge.errors import EdgeError, first_line
from edge.memory import rss_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge.backends import RUNTIMES

    parser.add_argument("model", type=Path, help="model file (.tflite, or .onnx for ONNX Runtime)")
    parser.add_argument("--labels", type=Path, help="labels file to show with the model")
    parser.add_argument("--runtime", "--backend", dest="runtime", choices=list(RUNTIMES), metavar="NAME",
                        help=f"force a runtime: {', '.join(RUNTIMES)}")
    parser.add_argument("--threads", type=thread_count, default=None, help="interpreter threads (default: all cores)")
    parser.add_argument("--json", metavar="PATH|-", help="write the report as JSON to PATH or stdout (-) instead of text")
    add_onnx_args(parser)


def _tensor(spec) -> dict:
    scale, zero_point = spec.quantization
    return {"name": spec.name, "index": int(spec.index), "shape": [int(v) for v in spec.shape],
            "dtype": np.dtype(spec.dtype).name, "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}


def _head(backend, info) -> str:
    """The head as ``edge run`` would classify it (the same pure functions), or why it is not a detector."""
    try:
        outputs = backend.detection_outputs
        kind = classify_head(outputs, backend.has_postprocess, info.head if info else None, backend.model_path)
        roles = (postprocess_roles(outputs, backend.signature_output_names(), backend.model_path)
                 if kind == HEAD_POSTPROCESS else raw_head_roles(outputs))
    except EdgeError as exc:
        return f"not an SSD detector ({first_line(exc).split(': ', 1)[-1]})"
    if kind == HEAD_POSTPROCESS and _is_onnx_backend(backend):
        capacity = int(roles["boxes"].shape[1]) if len(roles["boxes"].shape) > 1 else 0
        return (f"post-process tail in the graph (box decoding + NonMaxSuppression, {capacity} detections "
                "padded, count says how many are valid)")
    return describe_head(kind, roles)


def _is_onnx_backend(backend) -> bool:
    return backend.info.name == "onnxruntime"


def inspect_model(model: Path, labels: Path | None = None, runtime: str | None = None,
                  threads: int | None = None, backend_options: dict | None = None) -> dict:
    from edge.backends import open_backend

    rss_before = rss_bytes()
    backend = open_backend(model, runtime, threads, **(backend_options or {}))
    rss_after = rss_bytes()
    info = backend.model_info()
    label_list = load_labels(labels) if labels else (info.labels if info else [])
    onnx = _is_onnx_backend(backend)
    extra = {"providers": list(backend.providers), "opsets": dict(backend.opsets)} if onnx else {}
    return {
        "engine": "onnxruntime" if onnx else "tflite",
        **extra,
        "model": str(model),
        "file_bytes": model.stat().st_size,
        "runtime": backend.info.describe(),
        "runtime_note": backend.info.note,
        "runtime_warnings": list(backend.info.warnings),
        "inputs": [_tensor(d) for d in backend.inputs],
        "outputs": [_tensor(d) for d in backend.outputs],
        "operators": sorted(set(backend.operators)),
        "head": _head(backend, info),
        "recurrent_state": [[out.name, inp.name] for out, inp in backend.state_pairs],
        "labels": label_list,
        "anchors": info.anchors.to_dict() if info and info.anchors else None,
        "metadata": info.to_dict() if info else None,
        # One key for both engines (a JSON reader needs no branch); for ONNX Runtime it is the session
        # load, its activation arena being allocated on the first run.
        "memory": {"rss_delta_load_and_allocate_bytes": max(0, rss_after - rss_before),
                   "tensor_bytes": backend.memory()["tensor_bytes"]},
    }


def _print_text(report: dict) -> None:
    mib = 1024 * 1024
    print(f"model     {report['model']} ({report['file_bytes'] / mib:.2f} MiB)")
    print(f"runtime   {report['runtime']}")
    if report.get("providers"):
        print(f"providers {', '.join(report['providers'])}")
    for warning in report.get("runtime_warnings") or ():
        print(f"warning   {warning}")
    if report["runtime_note"]:
        print(f"note      {report['runtime_note']}")
    print(f"head      {report['head']}")
    for kind in ("inputs", "outputs"):
        print(kind)
        for t in report[kind]:
            q = t["quantization"]
            quant = f"  scale {q['scale']:.6g} zero point {q['zero_point']}" if q["scale"] else ""
            print(f"  [{t['index']:>3}] {t['name']:<44} {str(t['shape']):<18} {t['dtype']}{quant}")
    print(f"operators {', '.join(report['operators'])}")
    labels = report["labels"]
    if labels:
        shown = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")
        print(f"labels    {shown}")
    else:
        print("labels    none (pass --labels)")
    anchors = report["anchors"]
    if anchors:
        sizes = "x".join(str(s[0]) for s in anchors["feature_map_sizes"])
        print(f"anchors   ssd_anchor_generator, grids {sizes}, scales {anchors['min_scale']}..{anchors['max_scale']}")
    meta = report["metadata"]
    if meta and meta.get("provenance"):
        provenance = dict(meta["provenance"])
        pruning = provenance.pop("channel_pruning", None)
        print(f"provenance {json.dumps(provenance, sort_keys=True)}")
        if pruning:
            _print_channel_pruning(pruning)
    memory = report["memory"]
    if report.get("engine") == "onnxruntime":
        tensors, after = "weights + bound inputs/outputs", ("after the session load (ONNX Runtime allocates its "
                                                            "activation arena on the first run: not counted)")
    else:
        tensors, after = "tensors", "after load + allocate_tensors()"
    print(f"memory    {tensors} {memory['tensor_bytes'] / mib:.2f} MiB; RSS "
          f"+{memory['rss_delta_load_and_allocate_bytes'] / mib:.2f} MiB {after}")


def _print_channel_pruning(record: dict) -> None:
    """The narrowing ``edge convert --prune-channels`` recorded: widths, sizes, measured latency."""
    channels, params, macs = record.get("channels", {}), record.get("params", {}), record.get("macs", {})
    net = record.get("int8_network") or {}

    def ratio(entry: dict) -> str:
        return f"{entry['pruned']:,} of {entry['dense']:,} ({entry['pruned'] / entry['dense']:.2f}x)" \
            if entry.get("dense") else "-"

    print(f"channels  pruned: {channels.get('kept')} of {channels.get('prunable')} prunable channels kept; "
          f"params {ratio(params)}; MACs {ratio(macs)}")
    if net.get("dense_ms"):
        print(f"          int8 network (no post-process) {net['pruned_ms']:.2f} vs {net['dense_ms']:.2f} ms dense "
              f"({net['pruned_ms'] / net['dense_ms']:.2f}x), {net['pruned_bytes'] / 1024:.0f} vs "
              f"{net['dense_bytes'] / 1024:.0f} KiB, measured at conversion")
    teacher = (record.get("distillation") or {}).get("teacher")
    if teacher:
        print(f"          fine-tuned with {teacher} as teacher (weight {record['distillation']['weight']})")
    narrowed = [g for g in record.get("groups", []) if g["kept"] != g["dense"]]
    if narrowed:
        print("          widths " + ", ".join(f"{g['name']} {g['kept']}/{g['dense']}" for g in narrowed))


def main(args: argparse.Namespace) -> int:
    from edge.files import FILE, atomic_write_json, check_paths

    if args.json and args.json != "-":
        check_paths([("MODEL", args.model), ("--labels", args.labels)], [("--json", args.json, FILE)])
    report = inspect_model(args.model, args.labels, args.runtime, args.threads,
                           onnx_options_from_args(args, args.model))
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    else:
        _print_text(report)
    return 0
