"""``edge inspect MODEL``: tensors, operators, head kind, metadata and the interpreter's memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.contract.labels import load_labels
from edge.memory import rss_bytes
from edge.contract.tflite_file import load_model_info, read_tflite
from edge.backends.tflite import RUNTIMES, load_interpreter, tensor_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help=".tflite model file")
    parser.add_argument("--labels", type=Path, help="labels file to show with the model")
    parser.add_argument("--runtime", choices=list(RUNTIMES), help="force a TFLite runtime")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    parser.add_argument("--json", dest="json_out", action="store_true", help="print JSON instead of text")


def _tensor(d: dict) -> dict:
    scale, zero_point = d["quantization"]
    return {"name": d["name"], "index": int(d["index"]), "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name, "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}


def _head_kind(has_postprocess: bool, outputs: list[dict]) -> str:
    if has_postprocess:
        return "TFLite_Detection_PostProcess"
    shapes = [d["shape"] for d in outputs]
    boxes = [s for s in shapes if len(s) in (3, 4) and s[-1] == 4]
    if len(outputs) == 2 and boxes:
        return f"raw SSD head ({int(np.prod(boxes[0][:-1]))} anchors)"
    return "not an SSD detector"


def inspect_model(model: Path, labels: Path | None = None, runtime: str | None = None,
                  threads: int | None = None) -> dict:
    tflite = read_tflite(model)
    info = load_model_info(model, tflite)
    rss_before = rss_bytes()
    interpreter, runtime_info = load_interpreter(model, runtime, threads)
    interpreter.allocate_tensors()
    rss_after = rss_bytes()
    outputs = [_tensor(d) for d in interpreter.get_output_details()]
    label_list = load_labels(labels) if labels else (info.labels if info else [])
    return {
        "model": str(model),
        "file_bytes": model.stat().st_size,
        "runtime": runtime_info.describe(),
        "runtime_note": runtime_info.note,
        "inputs": [_tensor(d) for d in interpreter.get_input_details()],
        "outputs": outputs,
        "operators": sorted(set(tflite.operators)),
        "head": _head_kind(tflite.has_postprocess, outputs),
        "labels": label_list,
        "anchors": info.anchors.to_dict() if info and info.anchors else None,
        "metadata": info.to_dict() if info else None,
        "memory": {"rss_delta_load_and_allocate_bytes": max(0, rss_after - rss_before),
                   "tensor_bytes": tensor_bytes(interpreter)},
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
    report = inspect_model(args.model, args.labels, args.runtime, args.threads)
    if args.json_out:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return 0
