"""``edge eval MODEL (--voc DIR | --coco ANN.json --images DIR)``: mAP of any detector ``.tflite``.

The model runs through the board's :class:`edge.detector.detector.Detector` with no score cut-off; its
classes are matched to the dataset's by label name (``--labels`` for models without embedded
labels, e.g. ``coco_labels.txt`` for Google's SSD MobileNet).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge.backends import RUNTIMES
    from edge.commands._args import thread_count

    parser.add_argument("model", type=Path, help="detector .tflite (post-process op or raw SSD head)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--voc", type=Path, help="VOC folder (Annotations/ + JPEGImages/, or XML beside images)")
    data.add_argument("--coco", type=Path, help="COCO annotation .json (with --images)")
    parser.add_argument("--images", type=Path, help="image folder of --coco")
    parser.add_argument("--labels", type=Path, help="label file, one per line (default: the model's own labels)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--threads", type=thread_count, help="interpreter threads (default: all cores)")
    parser.add_argument("--runtime", "--backend", dest="runtime", choices=list(RUNTIMES), metavar="NAME",
                        help=f"force a runtime: {', '.join(RUNTIMES)} (default: the first found)")


def format_result(model: Path, dataset_name: str, result) -> str:
    lines = [f"{model} on {dataset_name}: {result.num_images} images, {result.num_detections} detections "
             f"({result.seconds:.1f} s)",
             f"  mAP@0.5       {100 * result.map50:6.2f}",
             f"  mAP@[.5:.95]  {100 * result.map:6.2f}"]
    if result.per_class_ap50:
        width = max(len(name) for name in result.per_class_ap50)
        lines.append("  AP@0.5 per class:")
        lines.extend(f"    {name.ljust(width)}  {100 * ap:6.2f}" for name, ap in sorted(result.per_class_ap50.items()))
    if result.unmatched_dataset_classes:
        lines.append(f"  dataset classes the model has no label for (AP 0): {', '.join(result.unmatched_dataset_classes)}")
    if result.skipped_images:
        lines.append(f"  {len(result.skipped_images)} image(s) skipped, e.g. {result.skipped_images[0][0]}: "
                     f"{result.skipped_images[0][1]}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from convert.data import load_coco, load_voc
    from convert.evaluate import evaluate_tflite
    from edge.errors import EdgeError
    from edge.contract.modelinfo import sidecar_path
    from edge.files import FILE, FOLDER, atomic_write_json, check_paths

    if args.json is not None:
        check_paths([("MODEL", args.model), ("the model's sidecar", sidecar_path(args.model)), ("--voc", args.voc),
                     ("--coco", args.coco), ("--images", args.images), ("--labels", args.labels)],
                    [("--json", args.json.parent, FOLDER), ("--json", args.json, FILE)])
    if args.coco is not None:
        if args.images is None:
            raise EdgeError("--coco needs --images DIR (the folder its file_name entries are relative to)")
        dataset, name = load_coco(args.coco, args.images), str(args.coco)
    else:
        if not args.voc.is_dir():
            raise EdgeError(f"--voc {args.voc}: not a directory")
        dataset, name = load_voc(args.voc), str(args.voc)
    if not dataset.samples:
        raise EdgeError(f"{name}: no usable annotated images")
    result = evaluate_tflite(args.model, dataset, labels=args.labels, num_threads=args.threads, runtime=args.runtime)
    print(format_result(args.model, name, result))
    if args.json is not None:
        payload = {"model": str(args.model), "dataset": name, **result.to_dict()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0
