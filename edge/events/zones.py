"""Zone enter/leave and line crossing events from confirmed tracks, with hysteresis.

Why the hysteresis
------------------
Detector boxes jitter by a few pixels and sometimes vanish for a frame, so the anchor of a box that
sits on a zone edge or a line hops across it. Counting every hop would count one car ten times.
Here every (track, zone-or-line) pair keeps a confirmed *side* (inside/outside a zone, left/right
of a line) and a candidate side with a streak: an event fires only when the anchor has been on the
new side for ``min_frames`` consecutive observed frames, and the new side becomes the confirmed
one. A box flickering across, or lingering on, a line never fires; entering then leaving fires
twice; nothing fires for the first side a track is seen on (where it is when first confirmed is not
an incident). A line crossing also needs the anchor's path from its last point on the old side to
its first point on the new one to cut the segment itself, not the line's extension beyond its ends.

Only tracks seen this frame (``missed == 0``) are observed: a coasting track's predicted box is a
guess, and it keeps its state, so an object occluded while crossing is counted once it is seen on
the far side. Tentative tracks are observed too, so that a track's side is already known when it
is confirmed (an object first detected just before a line is still counted), but only confirmed
tracks produce events and occupancy: tentative ones have no id and would inflate counts. Per-track
state is keyed by tracker slot and starts afresh for every new track (ids are never reused), so an
id switch gives the object a fresh state instead of counting the same crossing twice.

Memory: all state and work arrays are ``[max_tracks, zones]`` and ``[max_tracks, lines]``
(polygon tests ``[max_tracks, zones, vertices]``, :mod:`edge.events.geometry`; the sides,
:mod:`edge.events.hysteresis`), allocated once and indexed by tracker slot; per frame, only
numpy's small call overheads and one reduction buffer (under 2 KB in all, measured in
``tests/test_zones.py``), plus the events themselves on frames that have some. Every
ufunc gets same-shape contiguous operands: numpy (2.x) copies a broadcast or 2-D strided operand
into a temporary, so per-track columns are first spread into preallocated tiles with
``np.copyto``, which does not.

Units: coordinates are pixels of the frame the detector saw (normalised configs are multiplied by
the frame size given here, once); ``seq`` is the source frame number; ``time`` is whatever clock
the caller passes (``Frame.stamp``: Unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge.errors import EdgeError
from edge.events.config import ANCHORS, EventConfig, parse_config, resolve_classes
from edge.events.geometry import Polygons, Segments
from edge.events.hysteresis import _Sides
from edge.events.tracks import Tracks

_NO_EVENTS: tuple = ()  # what a frame with nothing to report returns: shared, allocates nothing
IN, OUT = 0, 1  # direction index in :attr:`Zones.counts`


@dataclass(slots=True)
class Event:
    """One incident: ``kind`` is ``"enter"`` / ``"leave"`` (zone) or ``"cross"`` (line);
    ``direction`` is ``"in"`` (entered, or crossed left to right) or ``"out"``; ``region`` is
    ``"zone"`` or ``"line"`` and ``name`` its name from the config; ``track_id`` the public id;
    ``class_id`` / ``label`` the track's class; ``seq`` the source frame number; ``time`` the
    caller's timestamp (Unix seconds from ``Frame.stamp``, or ``None``); ``x``, ``y`` the anchor
    point (pixels) on the frame that confirmed it."""

    kind: str
    direction: str
    region: str
    name: str
    track_id: int
    class_id: int
    label: str
    seq: int
    time: float | None
    x: float
    y: float

    def to_dict(self) -> dict:
        """For a JSON line: ``{"event", "direction", "zone"|"line", "track", "label", ...}``."""
        return {"event": self.kind, "direction": self.direction, self.region: self.name,
                "track": self.track_id, "label": self.label, "class_id": self.class_id,
                "frame": self.seq, "time": self.time, "point": [round(self.x, 1), round(self.y, 1)]}


class Zones:
    """The zones and lines of one config, resolved to pixels for one frame size.

    ``Zones(config, (width, height), labels, max_tracks=tracker.max_tracks)``, then per frame
    ``update(tracks, seq, time) -> events``. ``config`` is an :class:`~edge.events.config.EventConfig`
    (from :func:`~edge.events.config.load_config`) or a plain dict in the same format. ``labels``
    resolves class names and names events' classes.

    After each update: :attr:`counts` ``[regions, classes + 1, 2]`` int64 (region order: zones then
    lines, as in :attr:`names`; the last class row gathers ids beyond the labels; direction
    ``[..., IN]`` entered / crossed in, ``[..., OUT]`` left / crossed out), :attr:`occupancy`
    ``[zones]`` int64 (confirmed tracks inside now, coasting ones included), and :meth:`summary`.
    """

    def __init__(self, config: EventConfig | dict, frame_size: tuple[int, int],
                 labels: list[str] | None = None, *, max_tracks: int = 64) -> None:
        if isinstance(config, dict):
            config = parse_config(config, "zones config", labels)
        width, height = (int(v) for v in frame_size)
        if width <= 0 or height <= 0:
            raise EdgeError(f"{config.source}: frame size {width}x{height} must be positive")
        self.config = config
        self.frame_size = (width, height)
        self.labels = list(labels or [])
        self.max_tracks = m = int(max_tracks)
        zones, lines = config.zones, config.lines
        self.zone_count = nz = len(zones)
        self.line_count = nl = len(lines)
        regions = zones + lines
        self.names: list[str] = [spec.name for spec in regions]
        self.kinds: list[str] = [spec.kind for spec in regions]
        self.total_events = 0

        def pixels(spec) -> np.ndarray:
            pts = np.array(spec.points, np.float64)
            if spec.normalized:
                pts *= (width, height)
            return pts

        #: Pixel outlines for drawing: zone polygons and line segments (first point -> second),
        #: float64 ``[points, 2]``.
        self.zone_points = [pixels(spec) for spec in zones]
        self.line_points = [pixels(spec) for spec in lines]

        # Classes: a table [classes + 1, regions], True where a region counts that class; class
        # ids past the table share its last row (counted only by regions that take every class).
        resolved = [resolve_classes(spec.classes, self.labels or None,
                                    f"{config.source}: {spec.kind} {spec.name!r}.classes") for spec in regions]
        top = max([len(self.labels)] + [max(ids) + 1 for ids in resolved if ids] + [1])
        self.class_count = top
        table = np.zeros((top + 1, len(regions)), bool)
        for col, ids in enumerate(resolved):
            if ids:
                table[list(ids), col] = True
            else:
                table[:, col] = True
        self._zone_table = np.ascontiguousarray(table[:, :nz])
        self._line_table = np.ascontiguousarray(table[:, nz:])
        self.counts = np.zeros((len(regions), top + 1, 2), np.int64)
        self.occupancy = np.zeros(nz, np.int64)

        self._polygons = Polygons(self.zone_points, m)  # zones: which anchors are inside
        self._inside = np.zeros((m, nz), bool)
        self._inside_i = np.zeros((m, nz), np.int64)
        self._segments = Segments(self.line_points, m)  # lines: which side, and was the segment cut
        # per (slot, line): the last anchor on the confirmed side, and whether the path from it to
        # the candidate side cut the segment
        shape2 = (m, nl)
        self._lastx, self._lasty = np.zeros(shape2), np.zeros(shape2)
        self._hit = np.zeros(shape2, bool)

        min_frames = np.array([spec.min_frames for spec in regions], np.int32)
        self._zones = _Sides(m, nz, min_frames[:nz])
        self._lines = _Sides(m, nl, min_frames[nz:], (self._lastx, self._lasty, self._hit))
        for sides, specs in ((self._zones, zones), (self._lines, lines)):
            sides.fx[:] = [ANCHORS[spec.anchor][0] for spec in specs] if specs else 0.0
            sides.fy[:] = [ANCHORS[spec.anchor][1] for spec in specs] if specs else 0.0

        # ---- per slot, this frame: the tracks' columns reordered by slot
        self._arange = np.arange(m, dtype=np.intp)
        self._row = np.zeros(m, np.intp)  # row of Tracks holding each slot
        self._live = np.zeros(m, bool)
        self._owner = np.full(m, -1, np.int64)  # public id of the track each slot's state is for
        self._ids = np.zeros(m, np.int64)
        self._cls = np.zeros(m, np.int32)
        self._cls_idx = np.zeros(m, np.intp)
        self._confirmed = np.zeros(m, bool)
        self._missed = np.zeros(m, np.int32)
        self._age = np.zeros(m, np.int32)
        self._boxes = np.zeros((m, 4), np.float32)
        self._x0, self._y0, self._w, self._h, self._x1 = (np.zeros(m) for _ in range(5))
        self._stale, self._not_live, self._no_seen, self._b, self._b2 = (np.zeros(m, bool) for _ in range(5))
        self._unconfirmed = np.zeros(m, bool)
        # column views, made once (making them per frame would allocate)
        self._box_cols = tuple(self._boxes[:, c] for c in range(4))
        self._x0_col, self._y0_col = self._x0[:, None], self._y0[:, None]
        self._w_col, self._h_col = self._w[:, None], self._h[:, None]
        self._stale_col = self._stale[:, None]
        self._not_live_col, self._no_seen_col = self._not_live[:, None], self._no_seen[:, None]
        self._unconfirmed_col = self._unconfirmed[:, None]
        self._zx3, self._zy3 = self._zones.ax[:, :, None], self._zones.ay[:, :, None]

    # ---- per frame ----------------------------------------------------------------------------

    def update(self, tracks: Tracks, seq: int | None = None, time: float | None = None) -> Sequence[Event]:
        """Judge this frame's confirmed, seen tracks; returns the events it confirmed.

        ``tracks`` is what :meth:`~edge.events.tracker.Tracker.update` just returned; ``seq`` and
        ``time`` go into the events (``seq`` defaults to ``tracks.seq``). Returns a shared empty
        tuple on frames without events (nearly all), else a new list of :class:`Event`.
        """
        if tracks.capacity > self.max_tracks:
            raise ValueError(f"Zones(max_tracks={self.max_tracks}) cannot follow a tracker with "
                             f"{tracks.capacity} slots; give it max_tracks={tracks.capacity}")
        if seq is None:
            seq = tracks.seq
        k = tracks.count
        if k == 0:
            self.occupancy.fill(0)
            return _NO_EVENTS
        self._by_slot(tracks, k)

        # A track born this frame (age 1) starts from nothing; so does a slot whose confirmed id
        # changed (a track ended and another took the slot between two calls). Ids are never
        # reused, so an id switch is a new track with fresh state, never the old one's crossing.
        # A tentative track keeps its state when it is confirmed (-1 -> its id).
        np.equal(self._age, 1, out=self._stale)
        np.not_equal(self._owner, self._ids, out=self._b)
        np.greater_equal(self._owner, 0, out=self._b2)
        np.logical_and(self._b, self._b2, out=self._b)
        np.logical_or(self._stale, self._b, out=self._stale)
        np.logical_and(self._stale, self._live, out=self._stale)
        if np.count_nonzero(self._stale):
            self._zones.reset(self._stale_col)
            self._lines.reset(self._stale_col)
        np.copyto(self._owner, self._ids, where=self._live)

        # Observed: live tracks seen this frame (a coasting track's box is a prediction, not
        # evidence), tentative ones included so that a track's side is known by the time it is
        # confirmed; events and occupancy need confirmed tracks (tentative ones have no id).
        np.logical_not(self._live, out=self._not_live)
        np.not_equal(self._missed, 0, out=self._no_seen)
        np.logical_not(self._confirmed, out=self._unconfirmed)
        np.minimum(self._cls_idx, self.class_count, out=self._cls_idx)
        x0, y0, x1, y1 = self._box_cols
        np.copyto(self._x0, x0)
        np.copyto(self._y0, y0)
        np.copyto(self._x1, x1)
        np.subtract(self._x1, self._x0, out=self._w)
        np.copyto(self._x1, y1)
        np.subtract(self._x1, self._y0, out=self._h)

        fired = 0
        if self.zone_count:
            sides = self._zones
            sides.select(self._zone_table, self._cls_idx, self._not_live_col, self._no_seen_col)
            sides.anchors(self._x0_col, self._y0_col, self._w_col, self._h_col)
            self._inside_zones()
            fired += sides.advance()
        if self.line_count:
            sides = self._lines
            sides.select(self._line_table, self._cls_idx, self._not_live_col, self._no_seen_col)
            sides.anchors(self._x0_col, self._y0_col, self._w_col, self._h_col)
            self._line_sides()
            fired += sides.advance()
            # on the confirmed side: remember where (the start of the next crossing's path); a
            # candidate side just started: remember whether the path there cut the segment
            np.copyto(self._lastx, sides.ax, where=sides.agree)
            np.copyto(self._lasty, sides.ay, where=sides.agree)
            np.copyto(self._hit, self._segments.cuts, where=sides.new)

        events = _NO_EVENTS
        if fired:
            events = self._emit(tracks, seq, time)
        if self.zone_count:
            np.equal(self._zones.side, 1, out=self._inside)
            np.logical_and(self._inside, self._zones.relevant, out=self._inside)
            np.copyto(self._inside, False, where=self._unconfirmed_col)
            np.copyto(self._inside_i, self._inside)
            np.sum(self._inside_i, axis=0, out=self.occupancy)
        return events

    def _by_slot(self, tracks: Tracks, k: int) -> None:
        """The tracks' columns reordered by tracker slot, so state stays in place (indexed by slot)
        and only these few columns move. ``tracks._slots`` is a permutation of every slot."""
        row = self._row
        row.fill(self.max_tracks)  # slots beyond a smaller tracker's: never live
        np.put(row, tracks._slots, self._arange[: tracks.capacity])  # row[slot] = its Tracks row
        np.less(row, k, out=self._live)
        np.take(tracks._ids, row, out=self._ids, mode="clip")
        np.take(tracks._class_ids, row, out=self._cls, mode="clip")
        np.copyto(self._cls_idx, self._cls)
        np.take(tracks._confirmed, row, out=self._confirmed, mode="clip")
        np.take(tracks._missed, row, out=self._missed, mode="clip")
        np.take(tracks._age, row, out=self._age, mode="clip")
        np.take(tracks._boxes, row, axis=0, out=self._boxes, mode="clip")

    def _inside_zones(self) -> None:
        """+1 inside each zone's polygon, -1 outside, 0 unobserved, into obs."""
        sides = self._zones
        self._polygons.contains(self._zx3, self._zy3, out=self._inside)
        obs = sides.obs
        obs.fill(-1)
        np.copyto(obs, 1, where=self._inside)
        np.logical_not(sides.observing, out=sides.no)
        np.copyto(obs, 0, where=sides.no)

    def _line_sides(self) -> None:
        """Side of each line's anchor (+1 right of A->B on screen, -1 left, 0 on it or unobserved)
        into obs, and in ``_segments.cuts`` whether the path from the last anchor on the confirmed
        side to this one cuts the segment between its ends (used where a candidate side starts)."""
        sides = self._lines
        self._segments.sides_and_cuts(sides.ax, sides.ay, self._lastx, self._lasty, sides.obs)
        np.logical_not(sides.observing, out=sides.no)
        np.copyto(sides.obs, 0, where=sides.no)

    def _emit(self, tracks: Tracks, seq: int, time: float | None) -> Sequence[Event]:
        """Events where a side was confirmed (runs only on frames where something changed side)."""
        events: list[Event] = []
        labels, top = tracks.labels or self.labels, self.class_count
        for sides, offset, is_zone in ((self._zones, 0, True), (self._lines, self.zone_count, False)):
            if not sides.n or not np.count_nonzero(sides.fire):
                continue
            slots, cols = np.nonzero(sides.fire)
            for slot, col in zip(slots.tolist(), cols.tolist()):
                old, new = int(sides.side[slot, col]), int(sides.obs[slot, col])
                if old == 0:
                    continue  # the first side this track is seen on: where it is, not an incident
                if not self._confirmed[slot]:
                    continue  # a tentative track has no id and counts nothing (its side still moves)
                if is_zone:
                    kind, region = ("enter" if new > 0 else "leave"), "zone"
                else:
                    if not self._hit[slot, col]:
                        continue  # it crossed the line's extension, beyond the segment's ends
                    kind, region = "cross", "line"
                direction = IN if new > 0 else OUT
                class_id = int(self._cls[slot])
                self.counts[offset + col, min(max(class_id, 0), top), direction] += 1
                label = labels[class_id] if 0 <= class_id < len(labels) else str(class_id)
                events.append(Event(kind, "in" if direction == IN else "out", region, self.names[offset + col],
                                    int(self._ids[slot]), class_id, label, int(seq), time,
                                    float(sides.ax[slot, col]), float(sides.ay[slot, col])))
            # the new side is confirmed (with or without an event); the next path starts here
            sides.settle()
            if not is_zone:
                np.copyto(self._lastx, sides.ax, where=sides.fire)
                np.copyto(self._lasty, sides.ay, where=sides.fire)
                np.copyto(self._hit, False, where=sides.fire)
        self.total_events += len(events)
        return events if events else _NO_EVENTS

    # ---- results ------------------------------------------------------------------------------

    def _class_name(self, index: int) -> str:
        if index < len(self.labels):
            return self.labels[index]
        return str(index) if index < self.class_count else "other"

    def count(self, name: str, direction: str | None = None, cls: int | str | None = None) -> int:
        """Events so far for zone/line ``name``: ``direction`` ``"in"`` / ``"out"`` (None: both),
        ``cls`` a class id or label (None: all)."""
        try:
            col = self.names.index(name)
        except ValueError:
            raise KeyError(f"no zone or line named {name!r} (have {', '.join(self.names)})") from None
        table = self.counts[col]
        if cls is not None:
            ids = resolve_classes([cls], self.labels or None, f"count({name!r})")
            table = table[[min(i, self.class_count) for i in ids]]
        if direction is None:
            return int(table.sum())
        return int(table[..., {"in": IN, "out": OUT}[direction]].sum())

    def summary(self) -> dict:
        """Counts so far, for a JSON line or the run summary (allocates; call it now and then):
        ``{"zones": {name: {"entered", "left", "inside", "classes": {label: {"entered", "left"}}}},
        "lines": {name: {"in", "out", "classes": {label: {"in", "out"}}}}}``."""
        out: dict = {"zones": {}, "lines": {}}
        for col, name in enumerate(self.names):
            table = self.counts[col]
            is_zone = col < self.zone_count
            keys = ("entered", "left") if is_zone else ("in", "out")
            classes = {self._class_name(i): {keys[0]: int(table[i, IN]), keys[1]: int(table[i, OUT])}
                       for i in np.flatnonzero(table.sum(axis=1)).tolist()}
            entry = {keys[0]: int(table[:, IN].sum()), keys[1]: int(table[:, OUT].sum())}
            if is_zone:
                entry["inside"] = int(self.occupancy[col])
            entry["classes"] = classes
            out["zones" if is_zone else "lines"][name] = entry
        return out
