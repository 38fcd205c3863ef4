"""Synthetic detection data: coloured shapes with exact boxes, written as Pascal VOC.

The shapes are drawn by :func:`edge.live.synthetic.draw_shape`, the same code behind ``edge run --source
synthetic``, so the bundled demo model sees at run time what it was trained on. Written as VOC so it
goes through the same reader as user data. Deterministic: the same seed gives the same files.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET  # writing only; reading goes through defusedxml
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.images import ImageError, list_images, read_image
from edge.live.synthetic import PALETTE, SHAPE_CLASSES, draw_shape

MIN_SIZE_FRACTION, MAX_SIZE_FRACTION = 0.08, 0.45  # shape size as a fraction of the image side
MAX_OVERLAP_IOU = 0.15  # shapes may touch and overlap a little, never hide each other


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _load_backgrounds(backgrounds) -> list[np.ndarray]:
    if backgrounds is None:
        return []
    folder = Path(backgrounds)
    if not folder.is_dir():
        raise EdgeError(f"--backgrounds {folder}: not a directory")
    photos = []
    for path in list_images(folder):
        try:
            image = read_image(path)
        except ImageError:
            continue
        if min(image.shape[:2]) >= 8:  # crops of a few pixels are no background
            photos.append(image)
    if not photos:
        raise EdgeError(f"--backgrounds {folder}: no readable photos (.jpg, .png, .bmp, ...)")
    return photos


def _background(rng: np.random.Generator, size: int, photos: list[np.ndarray]) -> np.ndarray:
    """A random crop of a photo, smooth noise, or a colour gradient, ``size`` x ``size`` BGR uint8."""
    kind = rng.integers(0, 3) if photos else rng.integers(1, 3)
    if kind == 0:
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        return cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    if kind == 1:
        cells = int(rng.integers(4, 17))
        coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, rng.uniform(2, 20), image.shape)
        return np.clip(image + noise, 0, 255).astype(np.uint8)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)
    ramp = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
    image = c0 + (c1 - c0) * np.broadcast_to(ramp, (size, size, 1))
    return np.clip(image + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.5:
        return tuple(int(c) for c in PALETTE[rng.integers(len(PALETTE))])
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(150, 256)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def render_sample(rng: np.random.Generator, size: int, classes, photos=()):
    """One image: (BGR uint8 [size, size, 3], boxes xyxy pixels [N, 4], class ids [N])."""
    image = _background(rng, size, list(photos))
    boxes, ids = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            side = rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION) * size
            cx, cy = rng.uniform(side / 2, size - side / 2, 2)
            candidate = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            if all(_iou(candidate, b) <= MAX_OVERLAP_IOU for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(classes)))
        box = draw_shape(image, classes[cls], float(cx), float(cy), float(side), _colour(rng))
        # A later shape may cover part of this one; it stays within MAX_OVERLAP_IOU.
        boxes.append(tuple(float(v) for v in box))
        ids.append(cls)
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(ids, np.int32)


def _voc_xml(filename: str, size: int, boxes, ids, classes) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    sz = ET.SubElement(ann, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(value)
    for box, cls in zip(boxes, ids):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = classes[int(cls)]
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bnd, tag).text = str(int(round(float(value))))
    return ET.tostring(ann, encoding="utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_synthetic_voc(out_dir, n: int, classes=SHAPE_CLASSES, size: int = 320, seed: int = 0,
                        backgrounds=None):
    """Write ``n`` images of shapes as VOC under ``out_dir`` and return the dataset read back.

    ``classes``: shape names from :data:`edge.live.synthetic.SHAPE_CLASSES`; ``size``: image side in pixels;
    ``backgrounds``: optional folder of photos to paste shapes on (else noise and gradients).
    """
    from convert.data.voc import load_voc

    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or not classes:
        raise EdgeError(f"--classes {','.join(unknown) or '(empty)'}: synthetic shapes are {', '.join(SHAPE_CLASSES)}")
    if n < 1:
        raise EdgeError(f"--n {n}: need at least one image")
    if not 32 <= size <= 4096:
        raise EdgeError(f"--size {size}: expected 32..4096 pixels")
    photos = _load_backgrounds(backgrounds)
    out = Path(out_dir)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = max(6, len(str(n - 1)))
    for i in range(n):
        image, boxes, ids = render_sample(rng, size, classes, photos)
        name = f"{i:0{digits}d}"
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _write_atomic(out / "JPEGImages" / f"{name}.jpg", jpeg.tobytes())
        _write_atomic(out / "Annotations" / f"{name}.xml", _voc_xml(f"{name}.jpg", size, boxes, ids, classes))
    _write_atomic(out / "labels.txt", ("\n".join(classes) + "\n").encode())
    return load_voc(out, labels=list(classes))
