"""Pascal VOC reader: ``root/Annotations/*.xml`` + ``root/JPEGImages/`` (or XML next to the images).

XML is parsed with defusedxml: entity declarations (billion laughs), external entities and DTDs are
refused, so a hostile annotation is skipped with that reason instead of eating the machine's memory.
Box coordinates are used as written (pixels, xyxy); VOC's 1-based offset is below labelling noise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
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
            if (d / filename).is_file():
                return d / filename
    for d in dirs:
        for ext in _IMAGE_EXTS:
            candidate = d / (xml_path.stem + ext)
            if candidate.is_file():
                return candidate
    return None


def _text(node, tag: str, default: str | None = None) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else default


def parse_voc_xml(xml_path: Path):
    """Parse one annotation -> (filename, width, height, [(name, [x0, y0, x1, y1]), ...]).

    Raises ValueError with a one-line reason for anything malformed or refused.
    """
    from convert.data import clean_box

    ET, DefusedError = _defused()
    try:
        root = ET.parse(str(xml_path)).getroot()
    except DefusedError as exc:
        raise ValueError(f"refused unsafe XML ({type(exc).__name__}: entity/DTD declarations are "
                         "not allowed in annotations, possible XML bomb)") from None
    except ET.ParseError as exc:
        raise ValueError(f"not valid XML ({exc})") from None
    if root.tag != "annotation":
        raise ValueError(f"root element is <{root.tag}>, not <annotation>")
    size = root.find("size")
    try:
        width = int(float(_text(size, "width", "0"))) if size is not None else 0
        height = int(float(_text(size, "height", "0"))) if size is not None else 0
    except ValueError:
        raise ValueError("size/width or size/height is not a number") from None
    objects = []
    for obj in root.findall("object"):
        name = _text(obj, "name")
        bnd = obj.find("bndbox")
        if not name or bnd is None:
            raise ValueError("an <object> lacks <name> or <bndbox>")
        try:
            box = [float(_text(bnd, t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"object {name!r}: bndbox coordinates are missing or not numbers") from None
        objects.append((name, box))
    if width <= 0 or height <= 0:
        raise ValueError("missing or zero <size> width/height")
    objects = [(n, clean_box(b, width, height, n)) for n, b in objects]
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
            skipped.append((str(xml_path), str(exc)))
            log.warning("skipped %s: %s", xml_path, exc)
            continue
        image = _find_image(xml_path, root, filename)
        if image is None:
            skipped.append((str(xml_path), f"image {filename!r} not found"))
            log.warning("skipped %s: image %r not found", xml_path, filename)
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
