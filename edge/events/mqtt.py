"""Zone and line events, counts and live stats to an MQTT broker, with Home Assistant discovery.

``--mqtt mqtt://[user:pass@]host[:port][/prefix]`` (``mqtts://`` for TLS, checked against the system's
CA store; ports 1883 / 8883 by default). The prefix defaults to ``edgekit/<camera>``. A user without
a password in the URL takes it from ``EDGE_MQTT_PASSWORD`` (keeps it out of ``ps``).

Topics (``P`` is the prefix)
----------------------------
``P/availability``                  ``online`` (retained) on every connect; the broker publishes the
                                    last will ``offline`` (retained) when the connection dies (a kill
                                    -9, a power cut, a network cut after the keepalive); ``offline``
                                    too when the run ends
``P/events``                        Frigate-style event JSON, QoS 1: ``{"type": "new" | "end",
                                    "before": {...}, "after": {...}}``, one event per object per zone
``P/counts/REGION/DIR``             events so far for a zone or line, all classes (retained, QoS 1);
                                    ``DIR`` is ``in`` (entered / crossed in) or ``out`` (left /
                                    crossed out), as in the JSON lines
``P/counts/REGION/CLASS/DIR``       the same per class (retained, QoS 1)
``P/occupancy/ZONE``                objects inside the zone now (retained, QoS 1)
``P/stats``                         the loop's live numbers and this sink's, JSON, QoS 0, every
                                    ``stats_every`` seconds
``homeassistant/.../config``        discovery (retained): a sensor per region x class x direction count
                                    (classes the config names, and each class once first counted; an
                                    all-classes sensor per region and direction), an fps sensor, an
                                    objects-inside sensor and an occupancy binary sensor per zone; every
                                    one with ``availability_topic``, ``unique_id`` and a ``device`` block

Topic levels are the names with ``/``, ``+``, ``#`` and white space replaced by ``_``.

Events
------
An ``enter`` starts an event (``type: "new"``); the same object's ``leave`` of that zone ends it
(``type: "end"``, ``after.reason: "leave"``), ``before`` holding the state published with ``new`` and
``after`` the final one (``end_time``, ``end_frame``, ``end_point``). A ``cross`` of a line is an
instant: a ``new`` and an ``end`` with the same id, back to back (``after.reason: "cross"``), so a
consumer sees one shape for everything: every ``new`` gets its ``end``. An object that was already
inside when first tracked and then leaves (no ``enter`` was ever seen) also gets a ``new`` + ``end``
pair, with ``entered: false``. When the tracker drops an object that is still inside (it was lost,
not seen leaving), its event ends with ``reason: "lost"`` (needs the
:class:`~edge.events.stage.EventStage` as ``zones``; checked at most every ``LOST_CHECK_SECONDS``);
events still open when the run stops end with ``reason: "stopped"``. A run killed outright leaves
them open; ``P/availability`` then says ``offline``.

The detector never waits for the broker
---------------------------------------
Messages go into paho's outbound queue and paho's own network thread (``loop_start``) sends them,
reconnects (back-off ``reconnect_delay`` seconds, doubling) and resends what was queued while the
broker was away. Events queue up to ``queue_size`` messages (QoS 1, unacknowledged); past that they are
dropped and counted (``report()``, ``P/stats``). Counts and occupancy are state, not history: they
are never queued while disconnected but published again, current, after every connect (with the
discovery configs), so a restarted broker without persistence gets them back. paho's own limit
(``max_queued_messages_set``) sits above ``queue_size`` by the number of those state topics, so an
event backlog never crowds them out. A wrong password or a broker that cannot be reached is one log
line (through ``log``); the run goes on and paho keeps retrying.

Per frame with nothing happening: no JSON, no lock, no paho call; :meth:`MqttSink.write` only checks
whether objects are inside a zone (then, at most every ``LOST_CHECK_SECONDS``, whether the tracker
still has them). Stats are published by a small thread of this sink's own, so they keep coming when
frames stop (a stalled camera shows as such).

``paho-mqtt>=2`` is imported when a sink is made, not with this module (``pip install 'edgekit[events]'``).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import threading
import time
from typing import Callable

from edge.errors import EdgeError, first_line
from edge.events.ha_discovery import DISCOVERY_PREFIX, discovery_configs
from edge.events.mqtt_target import MqttTarget, parse_mqtt_url, safe_id, topic_level
from edge.live.sinks import Sink

QUEUE_SIZE = 1000  # unacknowledged QoS 1 event messages held while the broker is slow or away
STATE_HEADROOM = 64  # paho's limit is queue_size + this + the state topics (availability, discovery, counts)
STATS_EVERY = 5.0  # seconds between P/stats messages
OCCUPANCY_EVERY = 1.0  # seconds between checks of the zones' occupancy (it changes without events too)
LOST_CHECK_SECONDS = 0.5  # objects inside a zone: how often the tracker is asked whether they are still there
KEEPALIVE = 30  # seconds; the broker publishes the last will ~1.5 keepalives after a silent network cut
RECONNECT_DELAY = (1, 30)  # seconds: paho's first and longest wait between connection attempts
CLOSE_TIMEOUT = 2.0  # seconds close() waits for queued messages to reach a connected broker


def _import_paho():
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise EdgeError("--mqtt needs paho-mqtt 2: pip install 'edgekit[events]' (or pip install 'paho-mqtt>=2')") \
            from None
    return mqtt, CallbackAPIVersion


class _Region:
    """A zone or line as the sink knows it: kind, name, topic level and the classes the config
    names (``None``: every class)."""

    __slots__ = ("kind", "name", "level", "classes")

    def __init__(self, kind: str, name: str, classes: tuple[str, ...] | None) -> None:
        self.kind, self.name, self.level, self.classes = kind, name, topic_level(name), classes


class MqttSink(Sink):
    """Publishes zone/line events, counts, occupancy, stats and availability to an MQTT broker.

    ``url``: an ``mqtt://`` / ``mqtts://`` URL or a :class:`MqttTarget`. ``camera`` names the camera
    (default prefix ``edgekit/<camera>``, Home Assistant device and ids). ``zones``: the
    :class:`~edge.events.stage.EventStage` (preferred: its tracker tells when an object inside a zone
    is gone) or a :class:`~edge.events.zones.Zones`; it gives the zones, lines and their classes for
    discovery before any event, and the zones' occupancy. Without it, regions are learnt from events.
    ``log`` gets one line per connection problem and per reconnect. ``discovery_prefix`` ``None``
    turns Home Assistant discovery off. The rest are the module constants (tests pass small ones).

    The connection starts in :meth:`start` (the loop calls it before the first frame) and runs on
    paho's thread; nothing here raises into the loop once started (never :class:`SinkError`).
    """

    def __init__(self, url: str | MqttTarget, *, camera: str = "camera", zones=None,
                 log: Callable[[str], None] | None = None, queue_size: int = QUEUE_SIZE,
                 stats_every: float = STATS_EVERY, keepalive: int = KEEPALIVE,
                 reconnect_delay: tuple[int, int] = RECONNECT_DELAY, close_timeout: float = CLOSE_TIMEOUT,
                 discovery_prefix: str | None = DISCOVERY_PREFIX, client_id: str | None = None,
                 model: str | None = None) -> None:
        self.target = url if isinstance(url, MqttTarget) else parse_mqtt_url(url)
        if not str(camera).strip():
            raise EdgeError("--mqtt: the camera name is empty; give a name (it goes into the topics)")
        if queue_size < 1:
            raise ValueError(f"MqttSink queue_size={queue_size!r}: must be at least 1")
        self._mqtt, api = _import_paho()
        self.camera = str(camera).strip()
        self.prefix = self.target.prefix or f"edgekit/{topic_level(self.camera)}"
        self.queue_size = int(queue_size)
        self.stats_every = float(stats_every)
        self.close_timeout = float(close_timeout)
        self.discovery_prefix = discovery_prefix.strip("/") if discovery_prefix else None
        self.model = model
        self._log = log or (lambda message: print(f"edge run: {message}", file=sys.stderr, flush=True))
        self._source = zones
        self.availability_topic = f"{self.prefix}/availability"
        self.events_topic = f"{self.prefix}/events"
        self.stats_topic = f"{self.prefix}/stats"
        self._node = safe_id(f"edgekit_{self.camera}")
        self._run_id = f"{int(time.time() * 1000):x}"
        try:
            from importlib.metadata import version

            self._version = version("edgekit")
        except Exception:
            self._version = None

        # what was sent and what is due (the detector thread writes, the helper thread reads)
        self.events_published = 0  # event messages accepted into the queue
        self.published = 0  # all messages accepted
        self.dropped = 0  # messages that found the queue full (events, state, a stats tick still unsent)
        self.connects = 0  # successful connections (1 + reconnects)
        self.attempts = 0  # connection attempts
        self.undelivered = 0  # queued messages the broker had not acknowledged when the sink closed
        self.connected = False
        self._pending: collections.deque = collections.deque()  # MQTTMessageInfo of QoS 1 messages not acked
        self._lock = threading.Lock()  # counts, regions and the open events (never held while publishing)
        self._numbers = threading.Lock()  # the counters above, bumped from several threads
        self._counts: dict[tuple[str, str | None, str], int] = {}  # (region, class or None, dir) -> n
        self._sent_counts: dict[tuple[str, str | None, str], int] = {}
        self._sent_occupancy: dict[str, int] = {}
        self._regions: dict[str, _Region] = {}
        self._discovered: set[str] = set()  # discovery topics published since the last connect
        self._open: dict[tuple[str, int], dict] = {}  # (zone, track) -> the event's state
        self._dirty = False
        self._resync = False  # set on connect: republish discovery, counts, occupancy
        self._stats: Callable[[], dict] = dict
        self._stats_info = None
        self._next_lost_check = 0.0
        self._down_since: float | None = None
        self._problem: str | None = None  # the last connection problem logged (each is logged once)
        self._started = self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-mqtt", daemon=True)

        mqtt = self._mqtt
        cid = client_id or f"edgekit-{safe_id(self.camera)}-{os.getpid()}-{os.urandom(3).hex()}"
        client = mqtt.Client(api.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=True)
        client.reconnect_delay_set(int(reconnect_delay[0]), int(reconnect_delay[1]))
        self.reconnect_max = int(reconnect_delay[1])
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        if self.target.tls:
            import ssl

            client.tls_set_context(ssl.create_default_context())  # the system's CA store, host name checked
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self._on_pre_connect
        self._client = client
        self._keepalive = int(keepalive)
        self._load_regions()
        self._fit_queue()

    # ---- the Sink interface (detector thread) -------------------------------------------------

    def start(self, stats: Callable[[], dict]) -> None:
        if self._started:
            return
        self._started = True
        self._stats = stats
        try:
            self._client.connect_async(self.target.host, self.target.port, self._keepalive)
            self._client.loop_start()
        except Exception as exc:  # a host name paho refuses: the run goes on without MQTT
            self._say(f"cannot start the connection to {self.target.describe()} ({first_line(exc)}); "
                      "running without MQTT")
        self._thread.start()

    def write(self, frame, detections, annotated) -> None:
        if not self._open or self._stage_tracker() is None:
            return
        now = time.monotonic()
        if now < self._next_lost_check:
            return
        self._next_lost_check = now + LOST_CHECK_SECONDS
        try:
            self._end_lost(frame)
        except Exception as exc:  # never into the loop
            self._say(f"internal error checking lost objects ({first_line(exc, with_type=True)})")

    def events(self, frame, events) -> None:
        try:
            for event in events:
                self._event(event)
            self._wake.set()
        except Exception as exc:  # never into the loop
            self._say(f"internal error publishing an event ({first_line(exc, with_type=True)})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(2.0)
        client = self._client
        now = time.time()
        with self._lock:
            still_open = list(self._open.values())
            self._open.clear()
        if self.connected:  # else nothing more can arrive: the will said offline, or it never connected
            for step in (lambda: [self._end(state, "stopped", None, now, None) for state in still_open],
                         lambda: self._publish_state(full=False),
                         lambda: self._publish(self.availability_topic, "offline", retain=True, state=True)):
                try:
                    step()
                except Exception as exc:
                    self._say(f"internal error while closing ({first_line(exc, with_type=True)})")
            deadline = time.monotonic() + self.close_timeout
            while self.connected and self._pending_count() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.undelivered = self._pending_count()
        try:
            client.disconnect()  # a clean disconnect: the broker does not send the will
        except Exception:
            pass
        stopper = threading.Thread(target=client.loop_stop, name="edge-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(1.0, self.close_timeout))  # paho may be inside a connect attempt (its timeout)

    def report(self) -> str | None:
        dropped = f", {self.dropped} dropped (queue full)" if self.dropped else ""
        lost = f", {self.undelivered} not delivered (the broker was away at the end)" if self.undelivered else ""
        state = "" if self.connects else " (never connected)"
        again = self.connects - 1
        return (f"mqtt: {self.events_published} event messages, {self.published} messages in all to "
                f"{self.target.describe()}/{self.prefix}{dropped}{lost}{state}"
                + (f", {again} reconnect{'s' if again != 1 else ''}" if again > 0 else ""))

    def counters(self) -> dict:
        """This sink's numbers (also in ``P/stats`` under ``"mqtt"``)."""
        return {"connected": self.connected, "published": self.published, "events": self.events_published,
                "dropped": self.dropped, "queued": self._pending_count(), "connects": self.connects,
                "attempts": self.attempts}

    # ---- regions and counts --------------------------------------------------------------------

    def _stage_tracker(self):
        return getattr(self._source, "tracker", None)

    def _zones(self):
        """The :class:`Zones` (an EventStage makes it on the first frame), or None."""
        source = self._source
        if source is None:
            return None
        if hasattr(source, "tracker"):
            return source.zones
        return source

    def _load_regions(self) -> None:
        """Zones and lines from the config (the stage's or the Zones'), with the classes they name."""
        source = self._source
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
            self._regions[spec.name] = _Region(spec.kind, spec.name, classes)
            for cls in (None,) + (classes or ()):
                for direction in ("in", "out"):
                    self._counts.setdefault((spec.name, cls, direction), 0)

    def _fit_queue(self) -> None:
        """paho's hard limit (set once: paho refuses changes on a connection): the event queue plus
        room for every state message of a connect, for every class the labels name."""
        classes = len(getattr(self._source, "labels", None) or ()) + 1
        if self._regions:
            topics = sum(2 * (1 + (classes if r.classes is None else len(r.classes) + classes)) + 3
                         for r in self._regions.values())
        else:
            topics = 2 * STATE_HEADROOM  # regions will be learnt from events
        self.state_room = 2 * topics + 8 + STATE_HEADROOM  # discovery + value for each, availability, fps
        self._client.max_queued_messages_set(self.queue_size + self.state_room)

    def _region(self, kind: str, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            region = self._regions[name] = _Region(kind, name, None)
            for direction in ("in", "out"):
                self._counts.setdefault((name, None, direction), 0)
        return region

    # ---- events (detector thread) --------------------------------------------------------------

    def _state(self, event, event_id: str, entered: bool = True) -> dict:
        region = "zone" if event.region == "zone" else "line"
        return {"id": event_id, "camera": self.camera, "label": event.label, "class_id": event.class_id,
                "track": event.track_id, region: event.name, "region": region, "direction": event.direction,
                "start_time": event.time, "end_time": None, "start_frame": event.seq, "end_frame": None,
                "start_point": [round(event.x, 1), round(event.y, 1)], "end_point": None,
                "entered": entered, "active": True, "reason": None,
                "current_zones": [event.name] if region == "zone" else [],
                "entered_zones": [event.name] if region == "zone" else []}

    def _event_id(self, event) -> str:
        return f"{self._run_id}-{safe_id(event.name)}-{event.track_id}-{event.seq}"

    def _event(self, event) -> None:
        point = (event.x, event.y)
        key = (event.name, event.track_id)
        started = ended = None
        with self._lock:
            self._region(event.region, event.name)
            for cls in (None, event.label):
                count_key = (event.name, cls, event.direction)
                self._counts[count_key] = self._counts.get(count_key, 0) + 1
            self._dirty = True
            if event.region != "zone":  # a crossing: an instant, new and end back to back
                started = ended = self._state(event, self._event_id(event))
            elif event.kind == "enter":
                if key not in self._open:  # (twice cannot happen: the zones' hysteresis)
                    started = self._open[key] = self._state(event, self._event_id(event))
            else:
                ended = self._open.pop(key, None)
                if ended is None:  # left without an enter: it was inside when first tracked
                    started = ended = self._state(event, self._event_id(event), entered=False)
        if started is not None:
            self._send_event("new", started, started)
        if ended is not None:
            self._end(ended, "cross" if event.region != "zone" else "leave", event.seq, event.time, point)

    def _end(self, state: dict, reason: str, seq, stamp, point) -> None:
        after = dict(state, end_time=stamp, end_frame=seq, active=False, reason=reason,
                     end_point=[round(point[0], 1), round(point[1], 1)] if point is not None else None,
                     current_zones=[])
        self._send_event("end", state, after)

    def _send_event(self, kind: str, before: dict, after: dict) -> None:
        payload = json.dumps({"type": kind, "before": before, "after": after}, separators=(",", ":"))
        if self._publish(self.events_topic, payload):
            self._count("events_published")

    def _end_lost(self, frame) -> None:
        """End the events of objects the tracker no longer has (lost inside the zone)."""
        tracks = self._stage_tracker().tracks
        alive = set(tracks.ids.tolist())
        with self._lock:
            gone = [key for key in self._open if key[1] not in alive]
            states = [self._open.pop(key) for key in gone]
        for state in states:
            self._end(state, "lost", frame.seq, frame.stamp, None)
        if states:
            self._wake.set()

    # ---- publishing ------------------------------------------------------------------------------

    def _pending_count(self) -> int:
        """QoS 1 messages paho holds that the broker has not acknowledged (from the oldest on:
        acknowledgements come in order, so an over-count is brief)."""
        pending = self._pending
        try:
            while pending:
                try:
                    if not pending[0].is_published():
                        break
                except (ValueError, RuntimeError):  # paho gave up on it
                    pass
                pending.popleft()
        except IndexError:  # another thread emptied it first
            pass
        return len(pending)

    def _count(self, name: str, n: int = 1) -> None:
        with self._numbers:
            setattr(self, name, getattr(self, name) + n)

    def _publish(self, topic: str, payload, *, qos: int = 1, retain: bool = False, state: bool = False) -> bool:
        """Into paho's queue, never waiting. Events find room up to ``queue_size``; state messages
        (``state``) the headroom above it. Returns whether the message was taken."""
        if qos and not state and self._pending_count() >= self.queue_size:
            self._count("dropped")
            return False
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except Exception as exc:  # a topic paho refuses
            self._count("dropped")
            self._say(f"cannot publish to {topic!r} ({first_line(exc)})")
            return False
        rc = info.rc
        if rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self._count("dropped")
            return False
        if qos:
            if rc == self._mqtt.MQTT_ERR_NO_CONN:  # queued all the same: paho sends it on (re)connect
                info.rc = self._mqtt.MQTT_ERR_SUCCESS  # so that is_published() tells when it was acked
            self._pending.append(info)
        elif rc != self._mqtt.MQTT_ERR_SUCCESS:
            return False
        self._count("published")
        return True

    def _discovery(self) -> list[tuple[str, dict]]:
        """The Home Assistant discovery configs not yet sent since the last connect."""
        if not self.discovery_prefix:
            return []
        with self._lock:
            keys = list(self._counts)
            regions = dict(self._regions)
        return discovery_configs(self.discovery_prefix, node=self._node, camera=self.camera, model=self.model,
                                 version=self._version, availability_topic=self.availability_topic,
                                 stats_topic=self.stats_topic, prefix=self.prefix, count_keys=keys,
                                 regions=regions, count_topic=self._count_topic, sent=self._discovered)

    def _count_topic(self, region: _Region, cls: str | None, direction: str) -> str:
        if cls is None:
            return f"{self.prefix}/counts/{region.level}/{direction}"
        return f"{self.prefix}/counts/{region.level}/{topic_level(cls)}/{direction}"

    def _occupancy(self) -> dict[str, int]:
        """Objects inside each zone now: the Zones' own number when there is one (it counts objects
        first seen inside too), else the open events."""
        zones = self._zones()
        out: dict[str, int] = {}
        if zones is not None and getattr(zones, "occupancy", None) is not None:
            occupancy = zones.occupancy.tolist()
            for i, name in enumerate(zones.names[: zones.zone_count]):
                out[name] = int(occupancy[i]) if i < len(occupancy) else 0
        with self._lock:
            for region in self._regions.values():
                if region.kind == "zone" and region.name not in out:
                    out[region.name] = sum(1 for key in self._open if key[0] == region.name)
        return out

    def _publish_state(self, full: bool) -> None:
        """Discovery configs not yet sent, then counts and occupancy: all of them (``full``, after a
        connect) or those that changed. Only while connected: a disconnect leaves them due."""
        if not self.connected:
            return
        for topic, config in self._discovery():
            if self._publish(topic, json.dumps(config, separators=(",", ":")), retain=True, state=True):
                self._discovered.add(topic)
        with self._lock:
            self._dirty = False
            counts = dict(self._counts)
        for key, value in counts.items():
            if full or self._sent_counts.get(key) != value:
                name, cls, direction = key
                if self._publish(self._count_topic(self._regions[name], cls, direction), str(value), retain=True,
                                 state=True):
                    self._sent_counts[key] = value
                else:
                    self._dirty = True
        for name, value in self._occupancy().items():
            if full or self._sent_occupancy.get(name) != value:
                if self._publish(f"{self.prefix}/occupancy/{topic_level(name)}", str(value), retain=True, state=True):
                    self._sent_occupancy[name] = value

    def _publish_stats(self) -> None:
        if not self.connected:
            return
        if self._stats_info is not None and not self._stats_info.is_published():
            self._count("dropped")  # the last one is still in paho's buffer: the broker is slow
            return
        try:
            data = dict(self._stats())
        except Exception as exc:
            data = {"error": first_line(exc)}
        data["camera"] = self.camera
        data["mqtt"] = self.counters()
        try:
            info = self._client.publish(self.stats_topic, json.dumps(data, separators=(",", ":")), qos=0)
        except Exception:
            return
        if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
            self._stats_info = info
            self._count("published")

    def _run(self) -> None:
        """The helper thread: state after a connect or an event, occupancy changes, stats ticks."""
        next_stats = time.monotonic() + min(1.0, self.stats_every) if self.stats_every else float("inf")
        next_occupancy = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self._wake.wait(max(0.0, min(next_stats, next_occupancy) - now))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                now = time.monotonic()
                if self._resync and self.connected:
                    self._resync = False
                    self._discovered.clear()
                    self._publish_state(full=True)
                elif self._dirty or now >= next_occupancy:
                    self._publish_state(full=False)
                if now >= next_occupancy:
                    next_occupancy = now + OCCUPANCY_EVERY
                if now >= next_stats:
                    next_stats = now + self.stats_every
                    self._publish_stats()
            except Exception as exc:  # never let the helper die silently
                self._say(f"internal error ({first_line(exc, with_type=True)})")

    # ---- paho's callbacks (its network thread) ----------------------------------------------------

    def _say(self, message: str) -> None:
        try:
            self._log(f"mqtt: {message}")
        except Exception:
            pass

    def _problem_once(self, problem: str, message: str) -> None:
        if problem != self._problem:
            self._problem = problem
            self._say(message)

    def _on_pre_connect(self, client, userdata) -> None:
        self._count("attempts")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.connected = False
            words = str(reason_code)
            who = f"user {self.target.username!r}" if self.target.username else "an anonymous client"
            hint = ("check the user and password in --mqtt" if self.target.username
                    else "the broker wants a user and password: mqtt://user:pass@host")
            if "identifier" in words.lower():
                hint = "another client may be using the same client id"
            self._problem_once(f"refused:{words}",
                               f"the broker at {self.target.address} refused {who} ({words}): {hint}; the run goes "
                               f"on without MQTT and keeps retrying (at most {self.reconnect_max} s apart)")
            return
        self.connected = True
        self._count("connects")
        self._publish(self.availability_topic, "online", retain=True, state=True)
        self._resync = True
        self._wake.set()
        again = "re" if self.connects > 1 else ""
        down = f" after {time.monotonic() - self._down_since:.1f} s" if self._down_since is not None else ""
        self._say(f"{again}connected to {self.target.describe()}{down}, topics under {self.prefix}/"
                  + (f" ({self.dropped} messages dropped so far)" if self.dropped else ""))
        self._problem = None
        self._down_since = None

    def _on_disconnect(self, client, userdata, disconnect_flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was and not self._closed:
            self._down_since = time.monotonic()
            self._problem = "lost"
            why = str(reason_code)
            if why in ("Unspecified error", "Success", "Normal disconnection"):
                why = "the connection closed"
            self._say(f"lost the broker at {self.target.address} ({why}); events queue up (at most "
                      f"{self.queue_size}) and it keeps retrying (at most {self.reconnect_max} s apart)")

    def _on_connect_fail(self, client, userdata) -> None:
        exc = sys.exc_info()[1]  # paho calls this while handling the connection's OSError
        if self._down_since is None:
            self._down_since = time.monotonic()
        if self._problem == "lost":
            return  # this outage was said already
        if isinstance(exc, socket.gaierror):
            why = f"cannot resolve {self.target.host!r}"
        elif type(exc).__name__ == "SSLCertVerificationError":
            why = (f"its TLS certificate is not trusted: {getattr(exc, 'verify_message', None) or first_line(exc)}; "
                   "mqtts:// checks it against the system's CA store (SSL_CERT_FILE names another CA file)")
        elif exc is not None:
            why = first_line(exc, with_type=not (isinstance(exc, OSError) and exc.strerror))
        else:
            why = "connection failed"
        self._problem_once(f"fail:{type(exc).__name__}",
                           f"cannot reach the broker at {self.target.address} ({why}); the run goes on without "
                           f"MQTT and keeps retrying (at most {self.reconnect_max} s apart)")
