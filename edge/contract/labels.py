"""Label files: one label per line, line i is class i (0-based); ``n/a`` marks unused ids.

Also accepts the ``<id> <label>`` form some exports use (e.g. Coral's ``coco_labels.txt``),
filling gaps with ``n/a`` so that indexing by class id stays valid.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge.errors import EdgeError

_ID_LABEL = re.compile(r"^\s*(\d+)[\s:,]+(.+?)\s*$")
UNUSED = "n/a"


def parse_labels(text: str, source: str = "labels") -> list[str]:
    lines = [line.rstrip("\r") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise EdgeError(f"{source}: labels file is empty")
    matches = [_ID_LABEL.match(line) for line in lines if line.strip()]
    if all(matches) and len({int(m.group(1)) for m in matches}) == len(matches):
        by_id = {int(m.group(1)): m.group(2) for m in matches}
        return [by_id.get(i, UNUSED) for i in range(max(by_id) + 1)]
    return [line.strip() for line in lines]


def load_labels(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeError(f"{path}: cannot read labels file ({exc})") from None
    return parse_labels(text, source=str(path))
