"""``edge detect [MODEL] IMAGE|FOLDER... [--out DIR]``: detections on image files.

Prints one line per detection, and with ``--out`` writes COCO-style results
(``detections.json``: image file, 0-based ``class_id``, ``bbox`` as ``[x, y, width, height]`` pixels,
score, and COCO's ``category_id`` when the labels are COCO's 90-id map, so the file feeds pycocotools)
and annotated copies of the images. Folders and globs are expanded to the images in them; an
unreadable image is skipped and named, the others processed, and the exit code is 1 when any was
skipped. Without a model it uses the bundled demo detector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.commands._args import add_model_args
from edge.errors import EdgeError

MODEL_SUFFIXES = (".tflite", ".onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="[MODEL] IMAGE",
                        help="an optional model file first, then image files, folders or globs")
    add_model_args(parser, positional=False)
    parser.add_argument("--out", type=Path, help="write detections.json and annotated images into this folder")


def _images(paths: list[Path]) -> list[Path]:
    from edge.images import is_glob, list_images

    found = []
    for path in paths:
        if path.is_dir() or is_glob(path):
            listed = list_images(path)
            if not listed:
                raise EdgeError(f"{path}: no images there")
            found += listed
        elif not path.exists():
            raise EdgeError(f"{path}: image not found")
        else:
            found.append(path)
    return found


def _outputs(out: Path, images: list[Path]) -> list[tuple[str, Path, str]]:
    from edge.files import FILE, FOLDER

    return ([("--out", out, FOLDER), ("--out", out / "detections.json", FILE)]
            + [("--out", out / f"{path.stem}.annotated.jpg", FILE) for path in images])


def main(args: argparse.Namespace) -> int:
    import cv2

    from edge.commands._args import detector_from_args, runtime_lines
    from edge.contract.labels import coco_category_offset
    from edge.contract.modelinfo import sidecar_path
    from edge.files import atomic_path, atomic_write_json, check_paths
    from edge.images import read_image
    from edge.live.annotate import Annotator

    paths = [Path(p) for p in args.paths]
    if args.model is None and paths and paths[0].suffix.lower() in MODEL_SUFFIXES:
        args.model, paths = paths[0], paths[1:]
    if not paths:
        raise EdgeError("no image given: edge detect [MODEL] IMAGE...")
    images = _images(paths)
    if args.out:
        inputs = [("IMAGE", p) for p in images] + [("--labels", args.labels)]
        if args.model:
            inputs += [("--model", args.model), ("the model's sidecar", sidecar_path(args.model))]
        check_paths(inputs, _outputs(args.out, images))
    detector = detector_from_args(args)
    print(f"# {detector.describe()}", flush=True)
    for line in runtime_lines(detector.runtime_info) + [f"note: {note}" for note in detector.label_notes]:
        if line.startswith("warning:"):  # stderr, so a fallback is seen even when stdout is parsed
            print(f"edge detect: {line}", file=sys.stderr)
        else:
            print(f"# {line}")
    annotator = Annotator()
    coco = coco_category_offset(detector.labels)
    results, skipped = [], []
    for image_id, path in enumerate(images):
        try:
            image = read_image(path, stretch_16bit=True)
        except EdgeError as exc:
            skipped.append(exc)
            print(f"edge detect: skipped {exc}", file=sys.stderr)
            continue
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)  # only once an image is readable: no empty results
        detections = detector.detect(image)
        print(f"{path}: {detections.count} detection(s)")
        for i in range(detections.count):
            x0, y0, x1, y1 = (float(v) for v in detections.boxes[i])
            print(f"  {detections.label(i):<16} {detections.scores[i]:.2f}  [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
            class_id = int(detections.class_ids[i])
            results.append({"image_id": image_id, "file_name": path.name, "class_id": class_id,
                            **({"category_id": class_id + coco} if coco is not None else {}),
                            "label": detections.label(i),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(detections.scores[i]), 5)})
        if args.out:
            target = args.out / f"{path.stem}.annotated.jpg"
            with atomic_path(target) as tmp:
                if not cv2.imwrite(str(tmp), annotator.draw(image, detections)):
                    raise EdgeError(f"{target}: OpenCV could not write the image")
    if len(skipped) == len(images):
        raise EdgeError(str(skipped[0]) if len(images) == 1 else f"none of the {len(images)} images could be read")
    if args.out:
        target = atomic_write_json(args.out / "detections.json", results, indent=1)
        print(f"wrote {target} and {len(images) - len(skipped)} annotated image(s) to {args.out}")
    if skipped:
        print(f"edge detect: {len(skipped)} of {len(images)} image(s) skipped", file=sys.stderr)
        return 1
    return 0
