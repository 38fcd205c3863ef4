"""``edge detect [MODEL] IMAGE... [--out DIR]``: detections on image files.

Prints one line per detection, and with ``--out`` writes COCO-style results
(``detections.json``: image file, category id, ``bbox`` as ``[x, y, width, height]`` pixels, score)
and annotated copies of the images. Without a model it uses the bundled demo detector.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import cv2

from edge.live.annotate import Annotator
from edge.detector.detector import Detector
from edge.errors import EdgeError
from edge.backends.tflite import RUNTIMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="[MODEL] IMAGE",
                        help="an optional .tflite model first, then image files")
    parser.add_argument("--model", type=Path, help="detector .tflite (default: the bundled demo model)")
    parser.add_argument("--labels", type=Path, help="labels file, one per line (default: the model's own)")
    parser.add_argument("--score", type=float, default=0.5, help="minimum score, 0..1 (default 0.5)")
    parser.add_argument("--resize", choices=["stretch", "letterbox"], help="how frames fit the input (default: the model's)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")
    parser.add_argument("--runtime", choices=list(RUNTIMES), help="force a TFLite runtime")
    parser.add_argument("--out", type=Path, help="write detections.json and annotated images here")


def read_image(path: Path):
    """BGR image or EdgeError naming the file (OpenCV returns None for missing/corrupt files)."""
    if not path.is_file():
        raise EdgeError(f"{path}: image not found")
    if path.stat().st_size == 0:
        raise EdgeError(f"{path}: image file is empty")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise EdgeError(f"{path}: not a readable image (corrupt or unsupported format)")
    if image.dtype != "uint8":  # 16-bit PNG/TIFF: scale to 8 bits
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    return image


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    model = args.model
    if model is None and paths and paths[0].suffix.lower() == ".tflite":
        model, paths = paths[0], paths[1:]
    if not paths:
        raise EdgeError("no image given: edge detect [MODEL] IMAGE...")
    images = [(path, read_image(path)) for path in paths]  # fail before any output is written
    detector = Detector(model, labels=args.labels, score_threshold=args.score, num_threads=args.threads,
                        runtime=args.runtime, resize=args.resize)
    print(f"# {detector.describe()}", flush=True)
    if detector.runtime_info.note:
        print(f"# note: {detector.runtime_info.note}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    annotator = Annotator()
    results = []
    for image_id, (path, image) in enumerate(images):
        detections = detector.detect(image)
        print(f"{path}: {detections.count} detection(s)")
        for i in range(detections.count):
            x0, y0, x1, y1 = (float(v) for v in detections.boxes[i])
            print(f"  {detections.label(i):<16} {detections.scores[i]:.2f}  [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
            results.append({"image_id": image_id, "file_name": path.name,
                            "category_id": int(detections.class_ids[i]), "label": detections.label(i),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(detections.scores[i]), 5)})
        if args.out:
            annotated = annotator.draw(image, detections)
            target = args.out / f"{path.stem}.annotated.jpg"
            _write_atomic(target, lambda tmp: cv2.imwrite(tmp, annotated) or _raise_write(target))
    if args.out:
        target = args.out / "detections.json"
        _write_atomic(target, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
        print(f"wrote {target} and {len(images)} annotated image(s) to {args.out}")
    return 0


def _raise_write(path: Path):
    raise EdgeError(f"{path}: OpenCV could not write the image")
