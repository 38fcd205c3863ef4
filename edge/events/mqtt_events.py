"""What the MQTT sink's messages are made of: the zones and lines it knows, the counts per region,
class and direction, and the events still open, each as the Frigate-style state its ``new``,
``update`` and ``end`` messages carry. No broker and no paho here: :class:`~edge.events.mqtt.MqttSink`
records events into an :class:`EventLedger` on the detector thread and publishes from it on its own.
When an open event gets an ``update``: :mod:`edge.events.mqtt_updates`.
"""

from __future__ import annotations

import threading

from edge.errors import EdgeError
from edge.events.config import ANCHORS, DEFAULT_ANCHOR
from edge.events.mqtt_target import safe_id, topic_level
from edge.events.mqtt_updates import OpenEvent, seen_fields


class Region:
    """A zone or line as the sink knows it: kind, name, topic level, the classes the config names
    (``None``: every class) and the anchor of a box it judges (fractions of the box)."""

    __slots__ = ("kind", "name", "level", "classes", "anchor")

    def __init__(self, kind: str, name: str, classes: tuple[str, ...] | None,
                 anchor: str = DEFAULT_ANCHOR) -> None:
        self.kind, self.name, self.level, self.classes = kind, name, topic_level(name), classes
        self.anchor = ANCHORS.get(anchor, ANCHORS[DEFAULT_ANCHOR])


def ended_state(state: dict, reason: str, seq, stamp, point) -> dict:
    """An event's final state (``after`` of its ``end`` message) from ``state`` (the last box and
    score seen): ``reason`` is ``leave``, ``cross``, ``lost`` or ``stopped``; ``point`` None when the
    object was not seen going."""
    return dict(state, end_time=stamp, end_frame=seq, active=False, reason=reason,
                end_point=[round(point[0], 1), round(point[1], 1)] if point is not None else None,
                current_zones=[])


class EventLedger:
    """The regions, counts and open events of one camera's run.

    ``camera`` and ``run_id`` go into every event's state and id; ``update_interval`` (seconds, None:
    no updates) is the least time between two messages of one event. One lock guards it all: the
    detector thread records events while the sink's helper thread reads the counts. ``dirty`` says
    the counts changed since they were last taken for publishing.

    An event that ends comes out as ``(before, last)``: ``before`` the state last published for it
    (its ``end``'s ``before``), ``last`` that state with the last box and score seen (what its
    ``end``'s ``after`` is made from).
    """

    def __init__(self, camera: str, run_id: str, update_interval: float | None = None) -> None:
        self.camera, self.run_id = camera, run_id
        self.update_interval = update_interval
        self.lock = threading.Lock()  # counts, regions and the open events (never held while publishing)
        self.counts: dict[tuple[str, str | None, str], int] = {}  # (region, class or None, dir) -> n
        self.regions: dict[str, Region] = {}
        self.open: dict[tuple[str, int], OpenEvent] = {}  # (zone, track) -> the open event
        self.dirty = False

    def load_regions(self, source) -> None:
        """Zones and lines from the config (the stage's or the Zones'), with the classes they name."""
        config = getattr(source, "config", None)
        if config is None:
            return
        from edge.events.config import resolve_classes

        labels = list(getattr(source, "labels", None) or [])
        for spec in config.regions:
            classes = None
            if spec.classes:
                try:
                    ids = resolve_classes(spec.classes, labels or None, f"{spec.kind} {spec.name!r}")
                    classes = tuple(labels[i] if 0 <= i < len(labels) else str(i) for i in ids)
                except EdgeError:
                    classes = tuple(str(c) for c in spec.classes)
            self.regions[spec.name] = Region(spec.kind, spec.name, classes, spec.anchor)
            for cls in (None,) + (classes or ()):
                for direction in ("in", "out"):
                    self.counts.setdefault((spec.name, cls, direction), 0)

    def _region(self, kind: str, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            region = self.regions[name] = Region(kind, name, None)
            for direction in ("in", "out"):
                self.counts.setdefault((name, None, direction), 0)
        return region

    def _state(self, event, event_id: str, seen, entered: bool = True) -> dict:
        region = "zone" if event.region == "zone" else "line"
        point = [round(event.x, 1), round(event.y, 1)]
        return {"id": event_id, "camera": self.camera, "label": event.label, "class_id": event.class_id,
                "track": event.track_id, region: event.name, "region": region, "direction": event.direction,
                "start_time": event.time, "end_time": None, "start_frame": event.seq, "end_frame": None,
                "start_point": point, "end_point": None, "entered": entered, "active": True, "reason": None,
                "current_zones": [event.name] if region == "zone" else [],
                "entered_zones": [event.name] if region == "zone" else [],
                "frame": event.seq, "time": event.time, "point": point, **seen_fields(seen)}

    def _event_id(self, event) -> str:
        return f"{self.run_id}-{safe_id(event.name)}-{event.track_id}-{event.seq}"

    def record(self, event, seen=None) -> tuple[dict | None, tuple[dict, dict] | None]:
        """Count a zone or line event and open or close its event: ``(started, ended)``, the state
        of a ``new`` and the ``(before, last)`` of an ``end``, each None when this event neither
        starts nor ends one (a crossing both starts and ends one). ``seen``: the track's row, box
        and score this frame (:func:`~edge.events.mqtt_updates.seen_now`), None if not known."""
        key = (event.name, event.track_id)
        started = ended = None
        with self.lock:
            region = self._region(event.region, event.name)
            for cls in (None, event.label):
                count_key = (event.name, cls, event.direction)
                self.counts[count_key] = self.counts.get(count_key, 0) + 1
            self.dirty = True
            if event.region != "zone":  # a crossing: an instant, new and end back to back
                started = self._state(event, self._event_id(event), seen)
                ended = (started, started)
            elif event.kind == "enter":
                if key not in self.open:  # (twice cannot happen: the zones' hysteresis)
                    started = self._state(event, self._event_id(event), seen)
                    interval = self.update_interval if self.update_interval is not None else float("inf")
                    self.open[key] = OpenEvent(started, region.anchor, seen, event.seq, event.time, interval)
            else:
                opened = self.open.pop(key, None)
                if opened is not None:
                    ended = (opened.state, opened.current())
                else:  # left without an enter: it was inside when first tracked
                    started = self._state(event, self._event_id(event), seen, entered=False)
                    ended = (started, started)
        return started, ended

    def follow(self, tracks, seq: int, stamp: float, judge: bool = True) -> list[OpenEvent] | None:
        """Note this frame's box and score of every open event's track (``tracks``: the tracker's,
        this frame); the events an update is due for (None: none, nearly always). ``judge`` False:
        only note them (:meth:`judge` follows, once this frame's events are recorded)."""
        if self.update_interval is None:
            return None
        due = None
        with self.lock:
            ids, boxes, scores, missed = tracks.ids, tracks.boxes, tracks.scores, tracks.missed
            for opened in self.open.values():
                if opened.observe(ids, boxes, scores, missed, seq, stamp) and judge:
                    due = self._judge(opened, stamp, due)
        return due

    def judge(self, seq: int, stamp: float) -> list[OpenEvent] | None:
        """The open events seen on frame ``seq`` (by :meth:`follow`) an update is due for."""
        if self.update_interval is None:
            return None
        due = None
        with self.lock:
            for opened in self.open.values():
                if opened.seq == seq and opened.known:
                    due = self._judge(opened, stamp, due)
        return due

    def _judge(self, opened: OpenEvent, stamp: float, due: list | None) -> list | None:
        """``due`` with ``opened`` added if an update is due for it; its next one then waits
        ``update_interval`` from now, whether this one is published or dropped."""
        if opened.due(stamp, self.update_interval):
            opened.next_at = stamp + self.update_interval
            if due is None:
                due = []
            due.append(opened)
        return due

    def take_lost(self, alive: set) -> list[tuple[dict, dict]]:
        """The ``(before, last)`` of the open events of tracks not in ``alive``, no longer open."""
        with self.lock:
            gone = [key for key in self.open if key[1] not in alive]
            return [(opened.state, opened.current()) for opened in map(self.open.pop, gone)]

    def take_open(self) -> list[tuple[dict, dict]]:
        """The ``(before, last)`` of every open event, no longer open (the run is ending)."""
        with self.lock:
            ending = [(opened.state, opened.current()) for opened in self.open.values()]
            self.open.clear()
        return ending

    def take_counts(self) -> dict[tuple[str, str | None, str], int]:
        """The counts now, no longer ``dirty`` (the publisher sets it again for a count it could not send)."""
        with self.lock:
            self.dirty = False
            return dict(self.counts)

    def snapshot(self) -> tuple[list[tuple[str, str | None, str]], dict[str, Region]]:
        """The count keys and the regions now, for the discovery configs."""
        with self.lock:
            return list(self.counts), dict(self.regions)

    def add_open_occupancy(self, occupancy: dict[str, int]) -> None:
        """For the zones ``occupancy`` has no number of: the events open inside them."""
        with self.lock:
            for region in self.regions.values():
                if region.kind == "zone" and region.name not in occupancy:
                    occupancy[region.name] = sum(1 for key in self.open if key[0] == region.name)
