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
``P/events``                        Frigate-style event JSON, QoS 1: ``{"type": "new" | "update" |
                                    "end", "before": {...}, "after": {...}}``, one event per object
                                    per zone (a line crossing: one per crossing)
``P/counts/REGION/DIR``             events so far for a zone or line, all classes (retained, QoS 1);
                                    ``DIR`` is ``in`` (entered / crossed in) or ``out`` (left /
                                    crossed out), as in the JSON lines
``P/counts/REGION/CLASS/DIR``       the same per class (retained, QoS 1)
``P/occupancy/ZONE``                objects inside the zone now (retained, QoS 1)
``P/stats``                         the loop's live numbers and this sink's, JSON, QoS 0, every
                                    ``stats_every`` seconds (the first after at most 1 s), and
                                    once more as the run ends
``homeassistant/.../config``        discovery (retained): a sensor per region x class x direction count
                                    (classes the config names, and each class once first counted; an
                                    all-classes sensor per region and direction), an fps sensor, an
                                    objects-inside sensor and an occupancy binary sensor per zone; every
                                    one with ``availability_topic``, ``unique_id`` and a ``device`` block

Topic levels are the names with ``/``, ``+``, ``#`` and white space replaced by ``_``.

Events
------
An ``enter`` starts an event (``type: "new"``); while the object stays inside, a material change
(it moved: IoU of its box with the box last published below 0.6; or its ``top_score`` rose by
0.05) sends ``type: "update"``, at most one per event every ``update_interval`` seconds of frame
time (default 1; the rule and why: :mod:`edge.events.mqtt_updates`); the same object's ``leave`` of
that zone ends it (``type: "end"``, ``after.reason: "leave"``). ``before`` is always the state last
published for the event (``new``'s, then each ``update``'s ``after``), ``after`` the state now; the
final one has ``end_time``, ``end_frame``, ``end_point``. Every state carries ``frame`` and ``time``
(of the frame it describes), ``box`` (pixels ``[x0, y0, x1, y1]``), ``score``, ``top_score`` and
``point`` (the zone's anchor of the box) besides the ids, zone, class and start fields. A
``cross`` of a line is an instant: a ``new`` and an ``end`` with the same id, back to back
(``after.reason: "cross"``), never an update, so a consumer sees one shape for everything: every
``new`` gets its ``end``. An object that was already inside when first tracked and then leaves (no
``enter`` was ever seen, so no updates either) also gets a ``new`` + ``end`` pair, with ``entered:
false``. When the tracker drops an object that is still inside (it was lost, not seen leaving), its
event ends with ``reason: "lost"`` (needs the :class:`~edge.events.stage.EventStage` as ``zones``;
checked at most every ``LOST_CHECK_SECONDS``); events still open when the run stops end with
``reason: "stopped"``. A run killed outright leaves them open; ``P/availability`` then says
``offline``. Updates, like ``lost``, need the EventStage (its tracker has the boxes and scores).

The detector never waits for the broker
---------------------------------------
Messages go into paho's outbound queue and paho's own network thread (``loop_start``) sends them,
reconnects (back-off ``reconnect_delay`` seconds, doubling) and resends what was queued while the
broker was away. Events queue up to ``queue_size`` messages (QoS 1, unacknowledged); past that they are
dropped and counted (``report()``, ``P/stats``). An update is queued only while the queue keeps room
for the ``end`` of every open event, so updates never crowd out an ``end``; else it is dropped and
counted (``updates_dropped``), and the event's next update is judged against what was published.
Counts and occupancy are state, not history: they are never queued while disconnected but published
again, current, after every connect (with the discovery configs), so a restarted broker without
persistence gets them back. paho's own limit (``max_queued_messages_set``) sits above ``queue_size``
by the number of those state topics, so an event backlog never crowds them out. A wrong password or
a broker that cannot be reached is one log line (through ``log``); the run goes on and paho keeps
retrying.

Per frame with nothing happening: no JSON, no lock, no paho call; :meth:`MqttSink.write` only checks
whether objects are inside a zone. With objects inside (open events), each one's box and score are
noted in place and compared with its last published state (a few float operations under the
ledger's lock, nothing kept past the frame; on a frame with events, after them, so an event that
ends gets no update on its last frame), and at most every ``LOST_CHECK_SECONDS`` the tracker is
asked whether it still has them. Stats are published by a small thread of this sink's own
(:mod:`edge.events.mqtt_state`), so they keep coming when frames stop (a stalled camera shows as such).

``paho-mqtt>=2`` is imported when a sink is made, not with this module (``pip install 'edgekit[events]'``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Callable

from edge.errors import EdgeError, first_line
from edge.events.ha_discovery import DISCOVERY_PREFIX
from edge.events.mqtt_connection import MqttConnection
from edge.events.mqtt_events import EventLedger, ended_state
from edge.events.mqtt_state import StatePublishing
from edge.events.mqtt_target import MqttTarget, parse_mqtt_url, safe_id, topic_level
from edge.events.mqtt_updates import UPDATE_INTERVAL, seen_now
from edge.live.sinks import Sink

QUEUE_SIZE = 1000  # unacknowledged QoS 1 event messages held while the broker is slow or away
STATE_HEADROOM = 64  # paho's limit is queue_size + this + the state topics (availability, discovery, counts)
STATS_EVERY = 5.0  # seconds between P/stats messages
LOST_CHECK_SECONDS = 0.5  # objects inside a zone: how often the tracker is asked whether they are still there
KEEPALIVE = 30  # seconds; the broker publishes the last will ~1.5 keepalives after a silent network cut
RECONNECT_DELAY = (1, 30)  # seconds: paho's first and longest wait between connection attempts
CLOSE_TIMEOUT = 2.0  # seconds close() waits for queued messages to reach a connected broker


class MqttSink(StatePublishing, Sink):
    """Publishes zone/line events, counts, occupancy, stats and availability to an MQTT broker.

    ``url``: an ``mqtt://`` / ``mqtts://`` URL or a :class:`MqttTarget`. ``camera`` names the camera
    (default prefix ``edgekit/<camera>``, Home Assistant device and ids). ``zones``: the
    :class:`~edge.events.stage.EventStage` (preferred: its tracker tells when an object inside a zone
    is gone) or a :class:`~edge.events.zones.Zones`; it gives the zones, lines and their classes for
    discovery before any event, and the zones' occupancy. Without it, regions are learnt from events.
    ``log`` gets a line per connection problem (``problems``: shared by several cameras' sinks) and per
    reconnect. ``discovery_prefix`` ``None``: no Home Assistant discovery. ``update_interval``: the least
    seconds (frame time) between two messages of one open event (None: no updates; they need the
    EventStage as ``zones``). The rest are the module constants.

    The connection (:class:`~edge.events.mqtt_connection.MqttConnection`) starts in :meth:`start`
    (the loop calls it before the first frame) and runs on paho's thread; nothing here raises into
    the loop once started (never :class:`SinkError`). The events add up in an :class:`EventLedger`.
    """

    def __init__(self, url: str | MqttTarget, *, camera: str = "camera", zones=None,
                 log: Callable[[str], None] | None = None, queue_size: int = QUEUE_SIZE,
                 stats_every: float = STATS_EVERY, keepalive: int = KEEPALIVE,
                 reconnect_delay: tuple[int, int] = RECONNECT_DELAY, close_timeout: float = CLOSE_TIMEOUT,
                 discovery_prefix: str | None = DISCOVERY_PREFIX, client_id: str | None = None,
                 model: str | None = None, problems=None, update_interval: float | None = UPDATE_INTERVAL) -> None:
        self.target = url if isinstance(url, MqttTarget) else parse_mqtt_url(url)
        if not str(camera).strip():
            raise EdgeError("--mqtt: the camera name is empty; give a name (it goes into the topics)")
        if queue_size < 1:
            raise ValueError(f"MqttSink queue_size={queue_size!r}: must be at least 1")
        if update_interval is not None and not update_interval >= 0:
            raise ValueError(f"MqttSink update_interval={update_interval!r}: must be >= 0 seconds (None: no updates)")
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
        try:
            from importlib.metadata import version

            self._version = version("edgekit")
        except Exception:
            self._version = None

        self.events_published = 0  # event messages accepted into the queue (updates included)
        self.updates_published = self.updates_dropped = 0  # update messages queued / dropped (no room)
        self.undelivered = 0  # queued messages the broker had not acknowledged when the sink closed
        self._numbers = threading.Lock()  # events_published, bumped from several threads
        self._ledger = EventLedger(self.camera, f"{int(time.time() * 1000):x}", update_interval)
        self._sent_counts: dict[tuple[str, str | None, str], int] = {}
        self._sent_occupancy: dict[str, int] = {}
        self._discovered: set[str] = set()  # discovery topics published since the last connect
        self._resync = False  # set on connect: republish discovery, counts, occupancy
        self._stats: Callable[[], dict] = dict
        self._stats_info = None
        self._next_lost_check = 0.0
        self._events_seen = 0  # the stage's events_total when this sink last had them
        self._follow_seq = None  # a frame whose boxes and scores are followed after its events
        self._started = self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-mqtt", daemon=True)

        cid = client_id or f"edgekit-{safe_id(self.camera)}-{os.getpid()}-{os.urandom(3).hex()}"
        self._connection = MqttConnection(self.target, client_id=cid, will_topic=self.availability_topic,
                                          prefix=self.prefix, queue_size=self.queue_size, keepalive=keepalive,
                                          reconnect_delay=reconnect_delay, say=self._say,
                                          on_connect=self._connected, problems=problems)
        self._ledger.load_regions(self._source)
        self._fit_queue()

    # the connection's numbers, read through the sink
    connected = property(lambda self: self._connection.connected)
    published = property(lambda self: self._connection.published)  # all messages accepted
    dropped = property(lambda self: self._connection.dropped)  # messages that found the queue full
    connects = property(lambda self: self._connection.connects)  # successful connections (1 + reconnects)
    attempts = property(lambda self: self._connection.attempts)  # connection attempts
    reconnect_max = property(lambda self: self._connection.reconnect_max)

    # ---- the Sink interface (detector thread) -------------------------------------------------

    def start(self, stats: Callable[[], dict]) -> None:
        if self._started:
            return
        self._started = True
        self._stats = stats
        self._connection.start()
        self._thread.start()

    def write(self, frame, detections, annotated) -> None:
        if not self._ledger.open:
            return
        tracker = self._stage_tracker()
        if tracker is None:
            return
        total = getattr(self._source, "events_total", 0)
        later = total != self._events_seen  # this frame has events: :meth:`events` comes next, updates after them
        self._events_seen, self._follow_seq = total, frame.seq if later else None
        try:
            self._send_updates(self._ledger.follow(tracker.tracks, frame.seq, frame.stamp, judge=not later))
        except Exception as exc:  # never into the loop
            self._say(f"internal error publishing an update ({first_line(exc, with_type=True)})")
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
            self._events_seen = getattr(self._source, "events_total", 0)
            if self._follow_seq == frame.seq:  # after the ends: an event that just ended gets no update
                self._follow_seq = None
                self._send_updates(self._ledger.judge(frame.seq, frame.stamp))
        except Exception as exc:  # never into the loop
            self._say(f"internal error publishing an event ({first_line(exc, with_type=True)})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connection.closing = True
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(2.0)
        now = time.time()
        still_open = self._ledger.take_open()
        if self.connected:  # else nothing more can arrive: the will said offline, or it never connected
            for step in (lambda: [self._end(*ending, "stopped", None, now, None) for ending in still_open],
                         lambda: self._publish_state(full=False),
                         lambda: self.stats_every and self._publish_stats(final=True),
                         lambda: self._connection.publish(self.availability_topic, "offline", retain=True, state=True)):
                try:
                    step()
                except Exception as exc:
                    self._say(f"internal error while closing ({first_line(exc, with_type=True)})")
            self._connection.drain(self.close_timeout)
        self.undelivered = self._connection.pending_count()
        self._connection.stop(self.close_timeout)

    def report(self) -> str | None:
        dropped = f", {self.dropped} dropped (queue full)" if self.dropped else ""
        updates = f" ({self.updates_published} updates)" if self.updates_published else ""
        lost = f", {self.undelivered} not delivered (the broker was away at the end)" if self.undelivered else ""
        state = "" if self.connects else " (never connected)"
        again = self.connects - 1
        return (f"mqtt: {self.events_published} event messages{updates}, {self.published} messages in all to "
                f"{self.target.describe()}/{self.prefix}{dropped}{lost}{state}"
                + (f", {again} reconnect{'s' if again != 1 else ''}" if again > 0 else ""))

    def counters(self) -> dict:
        """This sink's numbers (also in ``P/stats`` under ``"mqtt"``)."""
        return {"connected": self.connected, "published": self.published, "events": self.events_published,
                "dropped": self.dropped, "queued": self._connection.pending_count(), "connects": self.connects,
                "attempts": self.attempts, "updates": self.updates_published, "updates_dropped": self.updates_dropped}

    # ---- regions --------------------------------------------------------------------------------

    def _stage_tracker(self):
        return getattr(self._source, "tracker", None)

    def _fit_queue(self) -> None:
        """paho's hard limit (set once: paho refuses changes on a connection): the event queue plus
        room for every state message of a connect, for every class the labels name."""
        classes = len(getattr(self._source, "labels", None) or ()) + 1
        regions = self._ledger.regions
        if regions:
            topics = sum(2 * (1 + (classes if r.classes is None else len(r.classes) + classes)) + 3
                         for r in regions.values())
        else:
            topics = 2 * STATE_HEADROOM  # regions will be learnt from events
        self.state_room = 2 * topics + 8 + STATE_HEADROOM  # discovery + value for each, availability, fps
        self._connection.limit_queue(self.queue_size + self.state_room)

    # ---- events (detector thread) --------------------------------------------------------------

    def _event(self, event) -> None:
        point = (event.x, event.y)
        tracker = self._stage_tracker()
        seen = seen_now(tracker.tracks if tracker is not None else None, event.track_id)
        started, ended = self._ledger.record(event, seen)
        if started is not None:
            self._send_event("new", started, started)
        if ended is not None:
            self._end(*ended, "cross" if event.region != "zone" else "leave", event.seq, event.time, point)

    def _end(self, before: dict, last: dict, reason: str, seq, stamp, point) -> None:
        self._send_event("end", before, ended_state(last, reason, seq, stamp, point))

    def _send_updates(self, due) -> None:
        """The updates due (None: none), each only while the queue keeps room for every open event's end."""
        for opened in due or ():
            self._send_update(opened)

    def _send_update(self, opened) -> None:
        if self._connection.pending_count() + len(self._ledger.open) >= self.queue_size:
            self._connection.count("dropped")
            self.updates_dropped += 1
            return
        after = opened.current()
        if self._send_event("update", opened.state, after):
            opened.state = after
            self.updates_published += 1
        else:
            self.updates_dropped += 1

    def _send_event(self, kind: str, before: dict, after: dict) -> bool:
        payload = json.dumps({"type": kind, "before": before, "after": after}, separators=(",", ":"))
        if self._connection.publish(self.events_topic, payload):
            with self._numbers:
                self.events_published += 1
            return True
        return False

    def _end_lost(self, frame) -> None:
        """End the events of objects the tracker no longer has (lost inside the zone)."""
        tracks = self._stage_tracker().tracks
        ending = self._ledger.take_lost(set(tracks.ids.tolist()))
        for before, last in ending:
            self._end(before, last, "lost", frame.seq, frame.stamp, None)
        if ending:
            self._wake.set()

    # ---- called from paho's thread and every other ---------------------------------------------

    def _connected(self) -> None:
        """After every connect: online, then discovery, counts and occupancy again (the helper sends them)."""
        self._connection.publish(self.availability_topic, "online", retain=True, state=True)
        self._resync = True
        self._wake.set()

    def _say(self, message: str) -> None:
        try:
            self._log(f"mqtt: {message}")
        except Exception:
            pass
