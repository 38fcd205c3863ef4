"""COCO JSON reader (``images``, ``annotations``, ``categories``; ``bbox`` is xywh in pixels).

Labels are the category names in ascending category id (COCO's ids have gaps; class ids here are
dense 0-based). Crowd annotations are dropped: they are regions, not objects to box.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)


def load_coco(annotation_json, images_dir):
    from convert.data import Dataset, Sample, clean_box

    annotation_json, images_dir = Path(annotation_json), Path(images_dir)
    try:
        data = json.loads(annotation_json.read_text())
    except FileNotFoundError:
        raise EdgeError(f"{annotation_json}: no such COCO annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeError(f"{annotation_json}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise EdgeError(f"{annotation_json}: not a COCO detection file (needs 'images' and 'categories' lists)")
    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        labels = [str(c["name"]) for c in categories]
        cat_index = {int(c["id"]): i for i, c in enumerate(categories)}
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeError(f"{annotation_json}: bad 'categories' entry ({exc!r})") from None
    if not labels:
        raise EdgeError(f"{annotation_json}: no categories")

    per_image: dict[int, list] = {}
    bad_images: dict[int, str] = {}
    for ann in data.get("annotations", []):
        try:
            image_id = int(ann["image_id"])
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            per_image.setdefault(image_id, []).append((cat_index[int(ann["category_id"])], [x, y, x + w, y + h]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(ann, dict) and "image_id" in ann:
                bad_images[ann["image_id"]] = f"annotation {ann.get('id')}: bad entry ({exc!r})"
            else:
                log.warning("%s: ignoring malformed annotation %r", annotation_json, ann)

    samples, skipped = [], []
    for img in data["images"]:
        try:
            image_id, file_name = int(img["id"]), str(img["file_name"])
            width, height = int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError) as exc:
            skipped.append((str(annotation_json), f"bad image entry {img!r:.80} ({exc!r})"))
            continue
        path = images_dir / file_name
        try:
            if image_id in bad_images:
                raise ValueError(bad_images[image_id])
            if not path.is_file():
                raise ValueError("image file not found")
            objects = [(c, clean_box(b, width, height, labels[c])) for c, b in per_image.get(image_id, [])]
        except ValueError as exc:
            skipped.append((str(path), str(exc)))
            log.warning("skipped %s: %s", path, exc)
            continue
        boxes = np.array([b for _, b in objects], dtype=np.float32).reshape(-1, 4)
        ids = np.array([c for c, _ in objects], dtype=np.int32)
        samples.append(Sample(path, width, height, boxes, ids))
    if not samples:
        raise EdgeError(f"{annotation_json}: no usable images under {images_dir} ({len(skipped)} skipped)")
    return Dataset(labels, samples, skipped)
