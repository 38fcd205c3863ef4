"""COCO JSON reader (``images``, ``annotations``, ``categories``; ``bbox`` is xywh in pixels).

Labels are the category names in ascending category id (COCO's ids have gaps; class ids here are
dense 0-based). Crowd annotations are dropped: they are regions, not objects to box.

Every entry is checked before it is used: ids are JSON integers (not booleans, not ``1e999``, which
``json`` reads as infinity), image sizes positive finite whole numbers, a ``bbox`` a list of four
finite numbers with positive width and height (a string such as ``"1234"`` is not a box). A bad
entry is skipped with one warning line naming the file and the entry, and listed in
:attr:`~convert.data.Dataset.skipped`; an image with a bad annotation is skipped whole (training
on it with an object missing would teach the model that the object is background). A file that
cannot be used at all (not JSON, nested too deeply, no ``images``/``categories`` lists,
``annotations`` not a list, bad categories) is one :class:`~edge.errors.EdgeError` line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, first_line

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 1 << 20  # pixels; any annotation claiming more is not describing a real image


class _BadEntry(ValueError):
    """One entry of the file that cannot be used (the message says why)."""


def _read_json(annotation_json: Path):
    try:
        st = os.stat(annotation_json)
    except FileNotFoundError:
        raise EdgeError(f"{annotation_json}: no such COCO annotation file") from None
    except OSError as exc:
        raise EdgeError(f"{annotation_json}: cannot read COCO annotation file ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read; a directory cannot be read
        raise EdgeError(f"{annotation_json}: not a regular file, expected a COCO annotation .json")
    try:
        text = annotation_json.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeError(f"{annotation_json}: cannot read COCO annotation file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise EdgeError(f"{annotation_json}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgeError(f"{annotation_json}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise EdgeError(f"{annotation_json}: not valid JSON for COCO (nested too deeply)") from None
    except (ValueError, MemoryError) as exc:  # e.g. an integer longer than Python's digit limit
        raise EdgeError(f"{annotation_json}: not valid JSON ({first_line(exc, 120)})") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a file_name too long for the file system
        return False


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadEntry(f"{what} must be an integer, not {_show(value)}")
    return value


def _side(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadEntry(f"{what} must be a number of pixels, not {_show(value)}")
    raw = value
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        value = None
    if value is None or not 0 < value <= MAX_IMAGE_SIDE:
        raise _BadEntry(f"{what} {_show(raw)} is not a whole number of pixels in 1..{MAX_IMAGE_SIDE}")
    return int(value)


def _bbox(value) -> list[float]:
    """COCO ``[x, y, w, h]`` -> xyxy; four finite numbers, w and h positive."""
    if not isinstance(value, list) or len(value) != 4:
        raise _BadEntry(f"bbox must be a list [x, y, width, height], not {_show(value)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise _BadEntry(f"bbox {_show(value)} has a value that is not a number")
    try:
        x, y, w, h = (float(v) for v in value)
    except OverflowError:  # an integer literal with hundreds of digits
        raise _BadEntry(f"bbox {_show(value)} is not finite") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise _BadEntry(f"bbox {_show(value)} is not finite")
    if w <= 0 or h <= 0:
        raise _BadEntry(f"bbox {_show(value)} has no positive width and height")
    return [x, y, x + w, y + h]


def _show(value, limit: int = 40) -> str:
    """A short rendering of a JSON value for a message (never a page of nested lists)."""
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=str) if _shallow(value) else f"<nested {type(value).__name__}>"
    elif value is None:
        text = "null"
    else:
        text = repr(value)  # 1e999 in the file is float inf here: shown as inf
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shallow(value, depth: int = 3) -> bool:
    if depth == 0:
        return False
    items = value.values() if isinstance(value, dict) else value
    return len(value) <= 16 and all(_shallow(v, depth - 1) for v in items if isinstance(v, (list, dict)))


def _entry(kind: str, index: int, entry) -> str:
    """``annotation #3 (id 17)``: the position, plus the entry's own id when it has a sane one."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    if isinstance(ident, int) and not isinstance(ident, bool):
        return f"{kind} #{index} (id {ident})"
    return f"{kind} #{index}"


def _categories(data, annotation_json: Path) -> tuple[list[str], dict[int, int]]:
    entries = []
    for i, cat in enumerate(data["categories"]):
        try:
            if not isinstance(cat, dict):
                raise _BadEntry(f"is {type(cat).__name__}, not an object")
            if "id" not in cat or "name" not in cat:
                raise _BadEntry("needs 'id' and 'name'")
            cat_id = _integer(cat["id"], "id")
            name = cat["name"]
            if not isinstance(name, str) or not name.strip():
                raise _BadEntry(f"name must be a non-empty string, not {_show(name)}")
        except _BadEntry as exc:
            raise EdgeError(f"{annotation_json}: bad 'categories' entry, {_entry('category', i, cat)}: {exc}") from None
        entries.append((cat_id, name.strip()))
    if not entries:
        raise EdgeError(f"{annotation_json}: no categories")
    entries.sort()
    ids = [c for c, _ in entries]
    twice = next((a for a, b in zip(ids, ids[1:]) if a == b), None)  # sorted: duplicates are neighbours
    if twice is not None:
        raise EdgeError(f"{annotation_json}: category id {twice} is used by more than one category")
    names = [n for _, n in entries]
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None) if len(set(names)) < len(names) else None
    if repeated is not None:  # class names must map to one class id each (--classes, validation sets)
        raise EdgeError(f"{annotation_json}: category name {repeated!r} is used by more than one category id")
    return names, {c: i for i, (c, _) in enumerate(entries)}


def load_coco(annotation_json, images_dir):
    from convert.data import Dataset, Sample, clean_box

    annotation_json, images_dir = Path(annotation_json), Path(images_dir)
    data = _read_json(annotation_json)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise EdgeError(f"{annotation_json}: not a COCO detection file (needs 'images' and 'categories' lists)")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise EdgeError(f"{annotation_json}: 'annotations' must be a list of objects, not "
                        f"{'null' if annotations is None else type(annotations).__name__}")
    labels, cat_index = _categories(data, annotation_json)
    skipped: list[tuple[str, str]] = []

    def skip(file: str, reason: str) -> None:
        skipped.append((file, reason))
        log.warning("skipped %s: %s", file, reason)

    per_image: dict[int, list] = {}
    bad_images: dict[int, list[str]] = {}  # image id -> why each of its bad annotations is bad
    for i, ann in enumerate(annotations):
        name = _entry("annotation", i, ann)
        if not isinstance(ann, dict):
            skip(str(annotation_json), f"{name}: is {type(ann).__name__}, not an object")
            continue
        try:
            image_id = _integer(ann.get("image_id"), "image_id")
        except _BadEntry as exc:
            skip(str(annotation_json), f"{name}: {exc}")
            continue
        try:
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1, None):
                raise _BadEntry(f"iscrowd must be 0 or 1, not {_show(crowd)}")
            if crowd:
                continue
            category = _integer(ann.get("category_id"), "category_id")
            if category not in cat_index:
                raise _BadEntry(f"category_id {category} is not in 'categories'")
            box = _bbox(ann.get("bbox"))
        except _BadEntry as exc:
            bad_images.setdefault(image_id, []).append(f"{name} in {annotation_json.name}: {exc}")
            continue
        per_image.setdefault(image_id, []).append((cat_index[category], box, name))

    samples = []
    seen: set[int] = set()
    for i, img in enumerate(data["images"]):
        name = _entry("image", i, img)
        try:
            if not isinstance(img, dict):
                raise _BadEntry(f"is {type(img).__name__}, not an object")
            image_id = _integer(img.get("id"), "id")
            file_name = img.get("file_name")
            if not isinstance(file_name, str) or not file_name.strip() or "\x00" in file_name:
                raise _BadEntry(f"file_name must be a non-empty string, not {_show(file_name)}")
            width, height = _side(img.get("width"), "width"), _side(img.get("height"), "height")
            if image_id in seen:
                raise _BadEntry(f"image id {image_id} appears more than once")
        except _BadEntry as exc:
            skip(str(annotation_json), f"{name}: {exc}")
            continue
        seen.add(image_id)
        path = images_dir / file_name
        try:
            if image_id in bad_images:
                reasons = bad_images[image_id]
                more = f" (and {len(reasons) - 1} more bad annotation(s))" if len(reasons) > 1 else ""
                raise ValueError(reasons[0] + more)
            if not _is_file(path):
                raise ValueError("image file not found")
            objects = [(c, clean_box(b, width, height, f"{entry} in {annotation_json.name} ({labels[c]})"))
                       for c, b, entry in per_image.get(image_id, [])]
        except ValueError as exc:
            skip(str(path), str(exc))
            continue
        boxes = np.array([b for _, b in objects], dtype=np.float32).reshape(-1, 4)
        ids = np.array([c for c, _ in objects], dtype=np.int32)
        samples.append(Sample(path, width, height, boxes, ids))
    if not samples:
        first = f"; first: {Path(skipped[0][0]).name}: {skipped[0][1]}" if skipped else ""
        raise EdgeError(f"{annotation_json}: no usable images under {images_dir} ({len(skipped)} skipped{first})")
    return Dataset(labels, samples, skipped)
