"""The zones/lines config: load it from ``.json`` (or ``.yaml``/``.yml`` when PyYAML is installed)
and validate it before any frame is read, so a typo is one line naming the file and the key.

Format (JSON shown; YAML is the same tree)::

    {
      "normalized": true,               # optional defaults for every zone and line below
      "anchor": "bottom_center",
      "min_frames": 3,
      "classes": [],
      "zones": [
        {"name": "driveway", "points": [[0.1, 0.6], [0.5, 0.6], [0.5, 0.95], [0.1, 0.95]],
         "classes": ["car", "truck"]}
      ],
      "lines": [
        {"name": "gate", "points": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"], "min_frames": 2}
      ]
    }

``points`` are ``[x, y]`` pairs: pixels of the frame the detector sees, or fractions of its width
and height (0..1) with ``"normalized": true``. A zone is a polygon (>= 3 points, non-zero area); a
line is a directed segment of 2 points: crossing from its left to its right, as seen on screen when
walking from the first point to the second, is ``in``; right to left is ``out`` (swap the points
to swap them). A line drawn left to right across the screen counts objects moving down as ``in``.
``classes`` are label names or 0-based class ids; empty means every class. ``anchor`` is the point
of a box that is judged (:data:`ANCHORS`), ``min_frames`` the consecutive frames an object must
spend on the new side before an event counts (>= 1).

PyYAML is optional and not a dependency: without it a ``.yaml`` file is refused with a message
saying to install it or use JSON.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

#: Box anchor name -> (fraction of width from x0, fraction of height from y0).
ANCHORS: dict[str, tuple[float, float]] = {
    "bottom_center": (0.5, 1.0), "center": (0.5, 0.5), "top_center": (0.5, 0.0),
    "bottom_left": (0.0, 1.0), "bottom_right": (1.0, 1.0), "top_left": (0.0, 0.0), "top_right": (1.0, 0.0),
    "center_left": (0.0, 0.5), "center_right": (1.0, 0.5),
}
DEFAULT_ANCHOR = "bottom_center"  # where a person's feet or a car's tyres touch the ground
DEFAULT_MIN_FRAMES = 3
MAX_CONFIG_BYTES = 1 << 20  # a zones file is a few kilobytes
# Per polygon: more than anyone draws by hand. Zones keeps ~7 float64 arrays of
# [max_tracks, zones, longest polygon] (64 x 1 x 32 x 8 B = 16 KB each), so this bounds memory.
MAX_POINTS = 32

_DEFAULT_KEYS = ("normalized", "anchor", "min_frames", "classes")
TOP_KEYS = ("zones", "lines") + _DEFAULT_KEYS
REGION_KEYS = ("name", "points") + _DEFAULT_KEYS


@dataclass(frozen=True)
class RegionSpec:
    """One validated zone or line, coordinates as written (pixels, or 0..1 when ``normalized``).

    ``classes`` holds class ids (ints) where labels were known while validating, else the names
    and ids as written; :func:`resolve_classes` turns them into ids. Empty: every class."""

    kind: str  # "zone" or "line"
    name: str
    points: tuple[tuple[float, float], ...]
    normalized: bool = False
    classes: tuple[int | str, ...] = ()
    anchor: str = DEFAULT_ANCHOR
    min_frames: int = DEFAULT_MIN_FRAMES


@dataclass(frozen=True)
class EventConfig:
    """Validated zones and lines; ``source`` names where they came from (for later messages)."""

    zones: tuple[RegionSpec, ...] = ()
    lines: tuple[RegionSpec, ...] = ()
    source: str = "zones config"

    @property
    def regions(self) -> tuple[RegionSpec, ...]:
        return self.zones + self.lines


def yaml_available() -> bool:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def load_config(path: str | Path, labels: list[str] | None = None) -> EventConfig:
    """Read and validate a zones/lines file (``.json``, or ``.yaml``/``.yml`` with PyYAML).

    With ``labels`` (the detector's label list), class names are checked and resolved to ids now.
    Raises :class:`~edge.errors.EdgeError` with one line naming the file and what is wrong.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise EdgeError(f"{path}: zones config must be a .json file (or .yaml/.yml with PyYAML installed)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EdgeError(f"{path}: zones config not found") from None
    except (OSError, ValueError) as exc:
        raise EdgeError(f"{path}: cannot read zones config ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise EdgeError(f"{path}: not a regular file, expected a zones config")
    if st.st_size > MAX_CONFIG_BYTES:
        raise EdgeError(f"{path}: {st.st_size} bytes is too large for a zones config (limit {MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeError(f"{path}: cannot read zones config ({getattr(exc, 'strerror', None) or exc})") from None
    if suffix == ".json":
        data = _parse_json(text, path)
    else:
        data = _parse_yaml(text, path)
    return parse_config(data, str(path), labels)


def _parse_json(text: str, path: Path):
    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise EdgeError(f"{path}: key {key!r} appears twice in one object")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise EdgeError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _parse_yaml(text: str, path: Path):
    try:
        import yaml
    except ImportError:
        raise EdgeError(f"{path}: YAML zones configs need PyYAML, which is not installed; "
                        "pip install pyyaml, or write the config as .json") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise EdgeError(f"{path}: not valid YAML: {problem}{where}") from None


def parse_config(data, source: str = "zones config", labels: list[str] | None = None) -> EventConfig:
    """Validate a config tree (a dict, as loaded from JSON or YAML) into an :class:`EventConfig`.

    ``source`` starts every error message (the file name). See the module docstring for the format.
    """
    if not isinstance(data, dict):
        raise EdgeError(f"{source}: expected a mapping with 'zones' and/or 'lines', got {_kind(data)}")
    _check_keys(data, TOP_KEYS, source, "top level")
    defaults = {
        "normalized": _bool(data.get("normalized", False), source, "normalized"),
        "anchor": _anchor(data.get("anchor", DEFAULT_ANCHOR), source, "anchor"),
        "min_frames": _min_frames(data.get("min_frames", DEFAULT_MIN_FRAMES), source, "min_frames"),
        "classes": _classes(data.get("classes", []), source, "classes", labels),
    }
    regions: dict[str, list[RegionSpec]] = {"zones": [], "lines": []}
    names: dict[str, str] = {}
    for key, kind in (("zones", "zone"), ("lines", "line")):
        items = data.get(key, [])
        if items is None:
            items = []
        if not isinstance(items, list):
            raise EdgeError(f"{source}: {key}: expected a list of {kind}s, got {_kind(items)}")
        for index, item in enumerate(items):
            spec = _region(item, kind, f"{key}[{index}]", source, defaults, labels)
            if spec.name in names:
                raise EdgeError(f"{source}: {key}[{index}]: duplicate name {spec.name!r} "
                                f"(already used by {names[spec.name]}); names must be unique")
            names[spec.name] = f"{key}[{index}]"
            regions[key].append(spec)
    if not regions["zones"] and not regions["lines"]:
        raise EdgeError(f"{source}: no zones or lines defined; add a 'zones' or 'lines' list")
    return EventConfig(tuple(regions["zones"]), tuple(regions["lines"]), source)


def _region(item, kind: str, where: str, source: str, defaults: dict, labels) -> RegionSpec:
    if not isinstance(item, dict):
        raise EdgeError(f"{source}: {where}: expected a mapping with 'name' and 'points', got {_kind(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise EdgeError(f"{source}: {where}.name: expected a non-empty string, got {name!r}")
    name = name.strip()
    where = f"{where} ({name!r})"
    _check_keys(item, REGION_KEYS, source, where)
    normalized = _bool(item.get("normalized", defaults["normalized"]), source, f"{where}.normalized")
    points = _points(item.get("points"), kind, source, f"{where}.points", normalized)
    classes = (_classes(item["classes"], source, f"{where}.classes", labels) if "classes" in item
               else defaults["classes"])
    return RegionSpec(
        kind=kind, name=name, points=points, normalized=normalized, classes=classes,
        anchor=_anchor(item.get("anchor", defaults["anchor"]), source, f"{where}.anchor"),
        min_frames=_min_frames(item.get("min_frames", defaults["min_frames"]), source, f"{where}.min_frames"),
    )


def _points(value, kind: str, source: str, where: str, normalized: bool) -> tuple[tuple[float, float], ...]:
    if value is None:
        raise EdgeError(f"{source}: {where}: missing; give a list of [x, y] points")
    if not isinstance(value, (list, tuple)):
        raise EdgeError(f"{source}: {where}: expected a list of [x, y] points, got {_kind(value)}")
    points = []
    for i, point in enumerate(value):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise EdgeError(f"{source}: {where}[{i}]: expected [x, y], got {point!r}")
        xy = []
        for axis, coordinate in zip("xy", point):
            if isinstance(coordinate, bool) or not isinstance(coordinate, (int, float)):
                raise EdgeError(f"{source}: {where}[{i}].{axis}: expected a number, got {coordinate!r}")
            coordinate = float(coordinate)
            if not math.isfinite(coordinate):
                raise EdgeError(f"{source}: {where}[{i}].{axis}: {coordinate} is not a finite number")
            if normalized and not 0.0 <= coordinate <= 1.0:
                raise EdgeError(f"{source}: {where}[{i}].{axis}: {coordinate:g} is outside 0..1 "
                                "(normalized coordinates are fractions of the frame; drop "
                                "'normalized' for pixels)")
            xy.append(coordinate)
        points.append((xy[0], xy[1]))
    if kind == "zone":
        if len(points) < 3:
            raise EdgeError(f"{source}: {where}: a zone polygon needs at least 3 points, got {len(points)}")
        if len(points) > MAX_POINTS:
            raise EdgeError(f"{source}: {where}: {len(points)} points, more than the {MAX_POINTS} a zone "
                            "may have; simplify the outline")
        if abs(_area(points)) <= 1e-12:
            raise EdgeError(f"{source}: {where}: the polygon has zero area (all points on one line)")
    else:
        if len(points) != 2:
            raise EdgeError(f"{source}: {where}: a line needs exactly 2 points, got {len(points)}")
        if points[0] == points[1]:
            raise EdgeError(f"{source}: {where}: both points are {list(points[0])}; a line needs two distinct points")
    return tuple(points)


def _classes(value, source: str, where: str, labels: list[str] | None) -> tuple[int | str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise EdgeError(f"{source}: {where}: expected a list of class names or ids, got {_kind(value)}")
    out: list[int | str] = []
    for i, entry in enumerate(value):
        if isinstance(entry, bool) or not isinstance(entry, (str, int)):
            raise EdgeError(f"{source}: {where}[{i}]: expected a class name or id, got {entry!r}")
        if isinstance(entry, int) and entry < 0:
            raise EdgeError(f"{source}: {where}[{i}]: class id {entry} is negative; ids start at 0")
        if isinstance(entry, str) and not entry.strip():
            raise EdgeError(f"{source}: {where}[{i}]: empty class name")
        out.append(entry.strip() if isinstance(entry, str) else int(entry))
    if labels:
        return resolve_classes(out, labels, f"{source}: {where}")
    return tuple(out)


def resolve_classes(classes, labels: list[str] | None, where: str) -> tuple[int, ...]:
    """Class names and ids -> sorted unique class ids, checked against ``labels`` when given.

    Names match a label exactly, else ignoring case (every id with that label). ``where`` starts
    the error message. Without labels only ids can be resolved.
    """
    ids: set[int] = set()
    for entry in classes:
        if isinstance(entry, int):
            if labels and entry >= len(labels):
                raise EdgeError(f"{where}: class id {entry} is not in the labels (ids 0..{len(labels) - 1})")
            ids.add(entry)
            continue
        if not labels:
            raise EdgeError(f"{where}: class name {entry!r} needs a labels list to resolve; "
                            "give the model's labels or use class ids")
        found = [i for i, label in enumerate(labels) if label == entry]
        if not found:
            folded = entry.casefold()
            found = [i for i, label in enumerate(labels) if label.casefold() == folded]
        if not found:
            shown = ", ".join(sorted({label for label in labels if label != "n/a"})[:8])
            raise EdgeError(f"{where}: unknown class name {entry!r} (labels include {shown}, ...)")
        ids.update(found)
    return tuple(sorted(ids))


def _check_keys(mapping: dict, allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise EdgeError(f"{source}: {where}: unknown key {key!r} (expected one of {', '.join(allowed)})")


def _bool(value, source: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise EdgeError(f"{source}: {where}: expected true or false, got {value!r}")
    return value


def _anchor(value, source: str, where: str) -> str:
    if not isinstance(value, str) or value not in ANCHORS:
        raise EdgeError(f"{source}: {where}: unknown anchor {value!r} (expected one of {', '.join(ANCHORS)})")
    return value


def _min_frames(value, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EdgeError(f"{source}: {where}: expected a whole number of frames >= 1, got {value!r}")
    if value < 1:
        raise EdgeError(f"{source}: {where}: {value} must be at least 1 frame")
    return value


def _area(points) -> float:
    """Shoelace area (signed)."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        total += x0 * y1 - x1 * y0
    return total / 2.0


def _kind(value) -> str:
    return "nothing" if value is None else type(value).__name__
