"""``edge inspect MODEL``: tensors, operators, head kind, metadata and the interpreter's memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.commands._args import thread_count
from edge.contract.heads import classify_head, describe_head, postprocess_roles, raw_head_roles
from edge.contract.labels import load_labels
from edge.contract.modelinfo import HEAD_POSTPROCESS
from edge.errors import EdgeError, first_line
from edge.memory import rss_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge.backends import RUNTIMES

    parser.add_argument("model", type=Path, help="model file (.tflite)")
    parser.add_argument("--labels", type=Path, help="labels file to show with the model")
    parser.add_argument("--runtime", choices=list(RUNTIMES), help="force a runtime")
    parser.add_argument("--threads", type=thread_count, default=None, help="interpreter threads (default: all cores)")
    parser.add_argument("--json", metavar="PATH|-", help="write the report as JSON to PATH or stdout (-) instead of text")


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
    return describe_head(kind, roles)


def inspect_model(model: Path, labels: Path | None = None, runtime: str | None = None,
                  threads: int | None = None) -> dict:
    from edge.backends import open_backend

    rss_before = rss_bytes()
    backend = open_backend(model, runtime, threads)
    rss_after = rss_bytes()
    info = backend.model_info()
    label_list = load_labels(labels) if labels else (info.labels if info else [])
    return {
        "model": str(model),
        "file_bytes": model.stat().st_size,
        "runtime": backend.info.describe(),
        "runtime_note": backend.info.note,
        "inputs": [_tensor(d) for d in backend.inputs],
        "outputs": [_tensor(d) for d in backend.outputs],
        "operators": sorted(set(backend.operators)),
        "head": _head(backend, info),
        "recurrent_state": [[out.name, inp.name] for out, inp in backend.state_pairs],
        "labels": label_list,
        "anchors": info.anchors.to_dict() if info and info.anchors else None,
        "metadata": info.to_dict() if info else None,
        "memory": {"rss_delta_load_and_allocate_bytes": max(0, rss_after - rss_before),
                   "tensor_bytes": backend.memory()["tensor_bytes"]},
    }


def _print_text(report: dict) -> None:
    mib = 1024 * 1024
    print(f"model     {report['model']} ({report['file_bytes'] / mib:.2f} MiB)")
    print(f"runtime   {report['runtime']}")
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
        print(f"provenance {json.dumps(meta['provenance'], sort_keys=True)}")
    memory = report["memory"]
    print(f"memory    tensors {memory['tensor_bytes'] / mib:.2f} MiB; RSS +{memory['rss_delta_load_and_allocate_bytes'] / mib:.2f} MiB "
          "after load + allocate_tensors()")


def main(args: argparse.Namespace) -> int:
    from edge.files import FILE, atomic_write_json, check_paths

    if args.json and args.json != "-":
        check_paths([("MODEL", args.model), ("--labels", args.labels)], [("--json", args.json, FILE)])
    report = inspect_model(args.model, args.labels, args.runtime, args.threads)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    else:
        _print_text(report)
    return 0
