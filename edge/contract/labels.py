"""Label files: one label per line, line i is class i (0-based); ``n/a`` marks unused ids.

Also accepts the ``<id> <label>`` form some exports use (e.g. Coral's ``coco_labels.txt``),
filling gaps with ``n/a`` so that indexing by class id stays valid. Ids are capped at
:data:`MAX_LABEL_ID`: ``999999999 toaster`` would otherwise build a billion-entry list.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from edge.errors import EdgeError

_ID_LABEL = re.compile(r"^\s*(\d+)[\s:,]+(.+?)\s*$")
UNUSED = "n/a"
MAX_LABEL_ID = 65535  # far beyond any detector's class count
MAX_LABELS_BYTES = 16 << 20  # a labels file is a few kilobytes


def parse_labels(text: str, source: str = "labels") -> list[str]:
    lines = [line.rstrip("\r") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise EdgeError(f"{source}: labels file is empty")
    numbered = [(number, _ID_LABEL.match(line)) for number, line in enumerate(lines, 1) if line.strip()]
    if all(match for _, match in numbered):
        ids = [_label_id(match.group(1), source, number) for number, match in numbered]
        if len(set(ids)) == len(ids):
            by_id = {i: match.group(2) for i, (_, match) in zip(ids, numbered)}
            return [by_id.get(i, UNUSED) for i in range(max(by_id) + 1)]
    if len(lines) > MAX_LABEL_ID + 1:
        raise EdgeError(f"{source}: {len(lines)} labels, more than {MAX_LABEL_ID + 1} classes; "
                        "is this a labels file?")
    return [line.strip() for line in lines]


def _label_id(digits: str, source: str, number: int) -> int:
    value = int(digits) if len(digits) <= len(str(MAX_LABEL_ID)) else None
    if value is None or value > MAX_LABEL_ID:
        shown = digits if len(digits) <= 12 else digits[:9] + "..."
        raise EdgeError(f"{source}: line {number}: class id {shown} is over {MAX_LABEL_ID}; "
                        "ids must be the model's class numbers (0, 1, 2, ...)")
    return value


def load_labels(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EdgeError(f"{path}: labels file not found") from None
    except (OSError, ValueError) as exc:
        raise EdgeError(f"{path}: cannot read labels file ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a directory cannot be read
        raise EdgeError(f"{path}: not a regular file, expected a labels .txt file")
    if st.st_size > MAX_LABELS_BYTES:
        raise EdgeError(f"{path}: labels file is {st.st_size / 1e6:.0f} MB; a labels file has one short "
                        "line per class")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeError(f"{path}: cannot read labels file ({exc})") from None
    return parse_labels(text, source=str(path))


BACKGROUND_NAMES = ("???", "background", "__background__")
#: Files beside a model that hold its labels, as the TF Model Zoo and Coral ship them.
LABEL_FILE_NAMES = ("labels.txt", "labelmap.txt")


def labels_beside(model_path: str | Path) -> Path | None:
    """``<model>.labels.txt``, ``labels.txt`` or ``labelmap.txt`` next to the model, if one exists."""
    model_path = Path(model_path)
    for candidate in [model_path.with_suffix(".labels.txt")] + [model_path.parent / n for n in LABEL_FILE_NAMES]:
        if candidate.is_file():
            return candidate
    return None


def align_labels(labels: list[str], num_classes: int | None) -> list[str]:
    """Drop a leading background entry (``???`` in the Model Zoo's labelmap.txt) when the file has
    exactly one label more than the model's 0-based classes."""
    if num_classes and len(labels) == num_classes + 1 and labels[0].strip().lower() in BACKGROUND_NAMES:
        return labels[1:]
    return labels


def coco_category_offset(labels: list[str]) -> int | None:
    """1 when ``labels`` are COCO's 90-id map in 0-based order (``person`` first, gaps as ``n/a``), as
    Google's and Coral's COCO SSDs use: COCO's ``category_id`` is then the class id + 1. None otherwise."""
    if len(labels) >= 90 and labels[0] == "person" and labels[2] == "car" and labels[89] == "toothbrush":
        return 1
    return None
