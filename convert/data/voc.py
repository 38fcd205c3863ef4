"""Pascal VOC reader: ``root/Annotations/*.xml`` + ``root/JPEGImages/`` (or XML next to the images).

XML is parsed with defusedxml: entity declarations (billion laughs), external entities and DTDs are
refused, so a hostile annotation is skipped with that reason instead of eating the machine's memory.
Box coordinates are used as written (pixels, xyxy); VOC's 1-based offset is below labelling noise.

Every value is checked: ``<width>``/``<height>`` must be positive finite whole numbers of pixels
(``inf``, ``nan``, ``-3`` or ``1e999`` are refused), box coordinates finite and inside the image (see
:func:`convert.data.clean_box`), every ``<object>`` must have a ``<name>`` and all four coordinates.
A bad annotation file is skipped with one warning line naming it and the reason, and listed in
:attr:`~convert.data.Dataset.skipped`; non-regular files (a FIFO named ``x.xml``) are never opened.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, first_line
from edge.images import IMAGE_EXTENSIONS

MAX_IMAGE_SIDE = 1 << 20  # pixels; a <size> claiming more does not describe a real image
log = logging.getLogger(__name__)


def _defused():
    try:
        import defusedxml
        import defusedxml.ElementTree as ET
    except ImportError:
        raise EdgeError('defusedxml is not installed; install the desktop extra: pip install ".[convert]"') from None
    return ET, defusedxml.DefusedXmlException


def _find_image(xml_path: Path, root: Path, filename: str | None) -> Path | None:
    dirs = [root / "JPEGImages", xml_path.parent, root, xml_path.parent.parent / "JPEGImages"]
    if filename:
        for d in dirs:
            if _is_file(d / filename):
                return d / filename
    for d in dirs:
        for ext in IMAGE_EXTENSIONS:
            candidate = d / (xml_path.stem + ext)
            if _is_file(candidate):
                return candidate
    return None


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that is False, not an exception, for names no file system takes (too long)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _text(node, tag: str, default: str | None = None) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else default


def _clip(text, limit: int = 40) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _side(size, tag: str) -> int:
    """``<size><width>`` or ``<height>``: a positive finite whole number of pixels (``640.0`` is fine)."""
    text = _text(size, tag)
    if text is None:
        raise ValueError(f"missing <size>/<{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"<size>/<{tag}> {_clip(text)!r} is not a number") from None
    if not math.isfinite(value) or not value.is_integer() or not 0 < value <= MAX_IMAGE_SIDE:
        raise ValueError(f"<size>/<{tag}> {_clip(text)!r} is not a whole number of pixels in 1..{MAX_IMAGE_SIDE}")
    return int(value)


def parse_voc_xml(xml_path: Path):
    """Parse one annotation -> (filename, width, height, [(name, [x0, y0, x1, y1]), ...]).

    Raises ValueError with a one-line reason for anything malformed or refused.
    """
    from convert.data import clean_box

    ET, DefusedError = _defused()
    try:
        st = os.stat(xml_path)
    except OSError as exc:
        raise ValueError(f"cannot read ({exc.strerror or first_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block
        raise ValueError("not a regular file")
    try:
        root = ET.parse(str(xml_path)).getroot()
    except DefusedError as exc:
        raise ValueError(f"refused unsafe XML ({type(exc).__name__}: entity/DTD declarations are "
                         "not allowed in annotations, possible XML bomb)") from None
    except ET.ParseError as exc:
        raise ValueError(f"not valid XML ({first_line(exc, 120)})") from None
    except (LookupError, UnicodeError, RecursionError, MemoryError) as exc:  # e.g. an unknown encoding
        raise ValueError(f"not valid XML ({first_line(exc, 120, with_type=True)})") from None
    if root.tag != "annotation":
        raise ValueError(f"root element is <{_clip(root.tag)}>, not <annotation>")
    size = root.find("size")
    if size is None:
        raise ValueError("missing <size> (width and height of the image)")
    width, height = _side(size, "width"), _side(size, "height")
    objects = []
    for number, obj in enumerate(root.findall("object"), 1):
        name = _text(obj, "name")
        bnd = obj.find("bndbox")
        if not name or bnd is None:
            raise ValueError(f"<object> #{number} lacks <name> or <bndbox>")
        box = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(bnd, tag)
            try:
                value = float(text)
            except (TypeError, ValueError):
                raise ValueError(f"object #{number} {_clip(name)!r}: <{tag}> is missing or not a number "
                                 f"({_clip(text)!r})") from None
            if not math.isfinite(value):
                raise ValueError(f"object #{number} {_clip(name)!r}: <{tag}> is {_clip(text)!r}, not a finite number")
            box.append(value)
        objects.append((name, box))
    objects = [(n, clean_box(b, width, height, f"object #{i} {_clip(n)!r}")) for i, (n, b) in enumerate(objects, 1)]
    return _text(root, "filename"), width, height, objects


def load_voc(root, labels=None):
    """Read a VOC folder into a :class:`~convert.data.Dataset`.

    ``labels``: class names in model order; objects of other classes are dropped. ``None``: every
    class found, sorted by name (deterministic across runs and machines).
    """
    from convert.data import Dataset, Sample

    root = Path(root)
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise EdgeError(f"--data {root}: no VOC annotations (*.xml in {ann_dir})")
    parsed, skipped = [], []
    for xml_path in xml_files:
        try:
            filename, width, height, objects = parse_voc_xml(xml_path)
        except (ValueError, OSError) as exc:
            exc = first_line(exc, 300)
            skipped.append((str(xml_path), exc))
            log.warning("skipped %s: %s", xml_path, exc)
            continue
        image = _find_image(xml_path, root, filename)
        if image is None:
            reason = f"image {_clip(filename, 80)!r} not found"
            skipped.append((str(xml_path), reason))
            log.warning("skipped %s: %s", xml_path, reason)
            continue
        parsed.append((image, width, height, objects))
    names = list(labels) if labels else sorted({n for *_, objs in parsed for n, _ in objs})
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for image, width, height, objects in parsed:
        kept = [(index[n], b) for n, b in objects if n in index]
        boxes = np.array([b for _, b in kept], dtype=np.float32).reshape(-1, 4)
        ids = np.array([c for c, _ in kept], dtype=np.int32)
        samples.append(Sample(image, width, height, boxes, ids))
    if not samples:
        reasons = "; ".join(f"{Path(f).name}: {r}" for f, r in skipped[:3])
        raise EdgeError(f"--data {root}: no usable VOC samples ({len(skipped)} skipped: {reasons})")
    if not names:
        raise EdgeError(f"--data {root}: the annotations contain no objects")
    return Dataset(names, samples, skipped)
