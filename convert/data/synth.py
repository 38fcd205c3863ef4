"""Synthetic detection data: coloured shapes with exact boxes, written as Pascal VOC.

The shapes are drawn by :func:`edge.live.synthetic.draw_shape`, the same code behind ``edge run --source
synthetic``, so the bundled demo model sees at run time what it was trained on. Written as VOC so it
goes through the same reader as user data. Deterministic: the same seed gives the same files.

Two presets. ``default``: 1-4 large shapes of three classes, easy enough for a tiny model to reach
~95 mAP@0.5 (the bundled demo). ``hard``: a task on which compression visibly costs accuracy -- eight
classes that differ only in shape or in a small hue step, small objects, overlaps between classes,
3-10 objects per image and unlabelled clutter. The default preset's output never changes: it is what
the demo model and earlier results were made from.
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

PRESETS = ("default", "hard")

# The hard preset: four shapes in two hues 40 degrees apart (OpenCV hue 0 and 20 of 180). The step
# is kept just above what training's hue augmentation (+-0.04 of the circle, 7 OpenCV units) plus
# the per-object jitter can blur, so the classes stay separable but only through colour detail
# that a narrow or pruned model is the first to lose.
HARD_SHAPES = ("circle", "square", "triangle", "diamond")
HARD_HUES = {"red": 0, "orange": 20}
HARD_CLASSES: tuple[str, ...] = tuple(f"{shape}-{hue}" for shape in HARD_SHAPES for hue in HARD_HUES)
HARD_HUE_JITTER = 2  # OpenCV hue units either side of the class hue
HARD_MIN_SIZE_FRACTION, HARD_MAX_SIZE_FRACTION = 0.05, 0.30  # log-uniform: most objects are small
HARD_OBJECTS = (3, 10)  # objects per image, inclusive
HARD_MAX_OVERLAP_IOU = 0.4  # between boxes of different classes
HARD_SAME_CLASS_IOU = MAX_OVERLAP_IOU  # same class: as little as the default, so no two are near-duplicates
HARD_MAX_COVER = 0.5  # of an object's box that the boxes drawn over it may cover (summed): never hidden
HARD_NEAR_FRACTION = 0.4  # objects placed against an earlier one of another class, so overlaps happen
HARD_CLUTTER = (4, 12)  # unlabelled strokes and blobs under the objects, inclusive
HARD_STROKES_ON_TOP = (0, 3)  # thin strokes drawn over the objects, inclusive


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


def _hard_colour(rng: np.random.Generator, hue: int) -> tuple[int, int, int]:
    h = (hue + int(rng.integers(-HARD_HUE_JITTER, HARD_HUE_JITTER + 1))) % 180
    hsv = np.array([[[h, rng.integers(170, 256), rng.integers(170, 256)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _draw_hard_shape(image: np.ndarray, shape: str, cx: float, cy: float, side: float, colour) -> tuple:
    if shape != "diamond":
        return draw_shape(image, shape, cx, cy, side, colour)
    half = side / 2
    pts = np.array([[cx, cy - half], [cx + half, cy], [cx, cy + half], [cx - half, cy]], dtype=np.int32)
    cv2.fillConvexPoly(image, pts, colour, cv2.LINE_AA)
    h, w = image.shape[:2]
    return (max(0, int(round(cx - half))), max(0, int(round(cy - half))),
            min(w, int(round(cx + half))), min(h, int(round(cy + half))))


def _clutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    # A third of the clutter takes the objects' own hues, so colour alone never finds an object.
    if rng.random() < 1 / 3:
        return _hard_colour(rng, list(HARD_HUES.values())[int(rng.integers(len(HARD_HUES)))])
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _draw_clutter(image: np.ndarray, rng: np.random.Generator, count: int, thin: bool = False) -> None:
    """Unlabelled distractors: strokes, elongated ellipses and ragged polygons (never the labelled shapes)."""
    size = image.shape[0]
    for _ in range(count):
        kind = 0 if thin else int(rng.integers(0, 3))
        colour = _clutter_colour(rng)
        if kind == 0:
            pts = rng.uniform(0, size, (int(rng.integers(2, 6)), 2)).astype(np.int32)
            thickness = 1 if thin else int(rng.integers(1, max(2, size // 80) + 1))
            cv2.polylines(image, [pts], False, colour, thickness, cv2.LINE_AA)
        elif kind == 1:
            major = rng.uniform(0.02, 0.15) * size
            minor = major * rng.uniform(0.2, 0.55)  # elongated: never taken for a circle
            centre = tuple(int(v) for v in rng.uniform(0, size, 2))
            cv2.ellipse(image, centre, (int(major), max(1, int(minor))), float(rng.uniform(0, 180)), 0, 360,
                        colour, -1, cv2.LINE_AA)
        else:
            radius = rng.uniform(0.02, 0.12) * size
            cx, cy = rng.uniform(0, size, 2)
            n = int(rng.integers(5, 10))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = radius * rng.uniform(0.35, 1.0, n)  # ragged, usually concave
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32)
            cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)


def _intersection(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _hard_fits(candidate, cls: int, boxes, ids, covered) -> bool:
    for box, other, cover in zip(boxes, ids, covered):
        limit = HARD_SAME_CLASS_IOU if other == cls else HARD_MAX_OVERLAP_IOU
        if _iou(candidate, box) > limit:
            return False
        area = (box[2] - box[0]) * (box[3] - box[1])
        if cover + _intersection(candidate, box) > HARD_MAX_COVER * area:
            return False
    return True


def render_hard_sample(rng: np.random.Generator, size: int, classes, photos=()):
    """One ``hard`` preset image: (BGR uint8 [size, size, 3], boxes xyxy pixels [N, 4], class ids [N]).

    ``classes`` are names from :data:`HARD_CLASSES`; class ids index into it.
    """
    image = _background(rng, size, list(photos))
    _draw_clutter(image, rng, int(rng.integers(HARD_CLUTTER[0], HARD_CLUTTER[1] + 1)))
    log_min, log_max = np.log(HARD_MIN_SIZE_FRACTION), np.log(HARD_MAX_SIZE_FRACTION)
    boxes, ids, covered = [], [], []
    for _ in range(int(rng.integers(HARD_OBJECTS[0], HARD_OBJECTS[1] + 1))):
        cls = int(rng.integers(len(classes)))
        near = [i for i, other in enumerate(ids) if other != cls]
        for _attempt in range(30):
            side = float(np.exp(rng.uniform(log_min, log_max))) * size
            if near and rng.random() < HARD_NEAR_FRACTION:
                anchor = boxes[near[int(rng.integers(len(near)))]]
                anchor_side = anchor[2] - anchor[0]
                # A similar size, so the pair's IoU can reach the limit rather than stay tiny.
                side = float(np.clip(anchor_side * rng.uniform(0.7, 1.3), HARD_MIN_SIZE_FRACTION * size,
                                     HARD_MAX_SIZE_FRACTION * size))
                angle = rng.uniform(0, 2 * np.pi)
                reach = (anchor_side + side) / 2 * rng.uniform(0.3, 0.9)
                cx = (anchor[0] + anchor[2]) / 2 + reach * np.cos(angle)
                cy = (anchor[1] + anchor[3]) / 2 + reach * np.sin(angle)
                cx, cy = np.clip([cx, cy], side / 2, size - side / 2)
            else:
                cx, cy = rng.uniform(side / 2, size - side / 2, 2)
            candidate = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            if _hard_fits(candidate, cls, boxes, ids, covered):
                break
        else:
            continue
        shape, hue = classes[cls].split("-")
        box = tuple(float(v) for v in _draw_hard_shape(image, shape, float(cx), float(cy), side,
                                                         _hard_colour(rng, HARD_HUES[hue])))
        covered = [cover + _intersection(box, other) for cover, other in zip(covered, boxes)]
        boxes.append(box)
        ids.append(cls)
        covered.append(0.0)
    _draw_clutter(image, rng, int(rng.integers(HARD_STROKES_ON_TOP[0], HARD_STROKES_ON_TOP[1] + 1)), thin=True)
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


def preset_classes(preset: str) -> tuple[str, ...]:
    """The classes a preset draws by default (and the only ones it knows)."""
    if preset not in PRESETS:
        raise EdgeError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    return HARD_CLASSES if preset == "hard" else SHAPE_CLASSES


def write_synthetic_voc(out_dir, n: int, classes=None, size: int = 320, seed: int = 0,
                        backgrounds=None, preset: str = "default"):
    """Write ``n`` images of shapes as VOC under ``out_dir`` and return the dataset read back.

    ``classes``: names from the preset's classes (default all of them: :data:`edge.live.synthetic.SHAPE_CLASSES`
    for ``default``, :data:`HARD_CLASSES` for ``hard``); ``size``: image side in pixels;
    ``backgrounds``: optional folder of photos to paste shapes on (else noise and gradients).
    """
    from convert.data.voc import load_voc

    known = preset_classes(preset)
    classes = tuple(known if classes is None else classes)
    unknown = [c for c in classes if c not in known]
    if unknown or not classes:
        raise EdgeError(f"--classes {','.join(unknown) or '(empty)'}: synthetic shapes"
                        f"{' of --preset ' + preset if preset != 'default' else ''} are {', '.join(known)}")
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
        render = render_hard_sample if preset == "hard" else render_sample
        image, boxes, ids = render(rng, size, classes, photos)
        name = f"{i:0{digits}d}"
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _write_atomic(out / "JPEGImages" / f"{name}.jpg", jpeg.tobytes())
        _write_atomic(out / "Annotations" / f"{name}.xml", _voc_xml(f"{name}.jpg", size, boxes, ids, classes))
    _write_atomic(out / "labels.txt", ("\n".join(classes) + "\n").encode())
    return load_voc(out, labels=list(classes))
