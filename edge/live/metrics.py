"""A Prometheus exporter for ``edge run``: ``GET /metrics`` in the Prometheus text format on its own port.

``--metrics [HOST:]PORT`` (127.0.0.1 unless HOST is given). Here: :class:`MetricsSink` (the
registry, what the loop feeds it, the rendering) and, for ``--config``, :class:`CameraMetrics`; the
HTTP server, its token and ``Host`` rules and deadlines are :mod:`edge.live.metrics_http`'s
(:class:`MetricsServer`, :func:`parse_metrics_bind` and :data:`TOKEN_ENV` are importable from here).

Metrics (one registry of the exporter's own, never prometheus_client's global one)
--------------------------------------------------------------------------------
Counters (``_total``) are fed at each scrape from the loop's running totals (``stats()``): the
difference since the last scrape, so they only ever grow: ``edgekit_frames_read``,
``edgekit_frames_processed``, ``edgekit_frames_dropped``, ``edgekit_frames_bad``,
``edgekit_source_read_errors``, ``edgekit_source_reconnects``, ``edgekit_source_stalls``; from the sink's
own tallies ``edgekit_detections{label}`` and ``edgekit_events{kind, region}`` (enter / leave /
cross per zone or line); with the MQTT sink given, ``edgekit_mqtt_messages_published`` and
``edgekit_mqtt_messages_dropped``. The histogram ``edgekit_invoke_seconds`` gets every frame's invoke
time (the interpreter call alone), observed in :meth:`MetricsSink.write`. Gauges: ``edgekit_fps``
(the loop's recent fps), ``edgekit_rss_bytes``, ``edgekit_source_up`` (1 while frames arrive: the
last one less than ``source_timeout`` seconds ago), ``edgekit_running``, ``edgekit_mqtt_connected``
and ``edgekit_mqtt_queued_messages``; plus prometheus_client's ``process_*`` metrics (CPU seconds,
memory, open files) from this process.

Several cameras (``MetricsSink(server, cameras=...)``, ``edge run --config``): every counter and
gauge above that belongs to a source carries a ``camera`` label (``edgekit_frames_read_total{camera=
"door"}``, ``edgekit_fps{camera}``, ``edgekit_source_up{camera}``, ``edgekit_detections_total{camera,
label}``, ``edgekit_events_total{camera, kind, region}``, the MQTT ones with each camera's own
connection), fed from that camera's own numbers (:meth:`Camera.stats <edge.live.cameras.Camera.stats>`)
by the :class:`CameraMetrics` sink the exporter adds to it; a camera is up while its frames arrive
and its state is ``up`` (a stalled, ended or failed camera is 0). What belongs to the loop stays
unlabelled: ``edgekit_invoke_seconds`` (one detector), ``edgekit_rss_bytes``, ``edgekit_running``.

What it costs the detector: per frame, one histogram observation and a count per detection
(nothing allocated that outlives the call); everything else happens on the server's thread when
Prometheus scrapes. ``prometheus-client`` is imported when a sink is made (``pip install
'edgekit[events]'``).
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Callable, Iterable

import numpy as np

from edge.errors import EdgeError, first_line
from edge.live.metrics_http import CONTENT_TYPE, LOG, TOKEN_ENV, MetricsServer, parse_metrics_bind
from edge.live.sinks import Sink
from edge.memory import rss_bytes

SOURCE_TIMEOUT = 10.0  # seconds without a processed frame after which edgekit_source_up is 0
INVOKE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

# (key in stats(), metric name without _total, help)
STATS_COUNTERS = (
    ("frames_read", "edgekit_frames_read", "Frames read from the source."),
    ("frames_processed", "edgekit_frames_processed", "Frames run through the detector."),
    ("frames_dropped", "edgekit_frames_dropped", "Frames dropped because the detector was busy (live sources)."),
    ("bad_frames", "edgekit_frames_bad", "Frames or inputs that could not be used."),
    ("read_errors", "edgekit_source_read_errors", "Failed reads from the source."),
    ("reconnects", "edgekit_source_reconnects", "Times the source was opened again."),
    ("stalls", "edgekit_source_stalls", "Times the source gave no frame for its stall timeout."),
)
MQTT_COUNTERS = (
    ("published", "edgekit_mqtt_messages_published", "Messages handed to the MQTT client."),
    ("dropped", "edgekit_mqtt_messages_dropped", "MQTT messages dropped (queue full)."),
)


def _import_prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise EdgeError("--metrics needs prometheus-client: pip install 'edgekit[events]' "
                        "(or pip install 'prometheus-client>=0.20')") from None
    return prometheus_client


def _read(stats: Callable[[], dict]) -> dict:
    try:
        return dict(stats())
    except Exception as exc:
        LOG.debug("edge metrics: stats failed: %s", first_line(exc, with_type=True))
        return {}


class _Scope:
    """One source's numbers: the single loop's (``labels`` ``()``) or one camera's of several
    (``(name,)``). Tallied on the detector thread (:meth:`write`, :meth:`count`), exported on the
    server's at each scrape (:meth:`export`). ``stats`` ``None``: the loop's own numbers."""

    def __init__(self, sink: "MetricsSink", labels: tuple[str, ...], mqtt=None) -> None:
        child = partial(_child, labels=labels)
        self.labels = labels
        self.stats: Callable[[], dict] | None = None
        self.counters = [(key, child(counter)) for key, counter in sink._counters]
        self.fps, self.up = child(sink._fps), child(sink._up)
        self.detections, self.events = sink._detections, sink._events
        self.mqtt = mqtt
        if mqtt is not None:
            self.mqtt_counters = [(key, child(counter)) for key, counter in sink._mqtt_counters]
            self.mqtt_connected, self.mqtt_queued = child(sink._mqtt_connected), child(sink._mqtt_queued)
        self.exported: dict = {}  # what each counter was fed up to
        self.by_class: np.ndarray | None = None  # detections per class id (last slot: ids past the labels)
        self.class_names: list[str] = []
        self.exported_classes: np.ndarray | None = None
        self.event_counts: dict[tuple[str, str], int] = {}
        self.last_frame = float("-inf")

    # ---- the detector thread ------------------------------------------------------------------

    def write(self, detections) -> None:
        self.last_frame = time.monotonic()
        if detections is None or not detections.count:
            return
        counts = self.by_class
        if counts is None:
            counts = self._classes(detections.labels)
        top = counts.shape[0] - 1
        for class_id in detections.class_ids:
            counts[class_id if 0 <= class_id < top else top] += 1

    def count(self, events) -> None:
        tally = self.event_counts
        for event in events:
            key = (event.kind, event.name)
            tally[key] = tally.get(key, 0) + 1

    def _classes(self, labels) -> np.ndarray:
        self.class_names = list(labels or []) + ["other"]
        self.exported_classes = np.zeros(len(self.class_names), np.int64)
        self.by_class = np.zeros(len(self.class_names), np.int64)
        return self.by_class

    # ---- the server's thread ----------------------------------------------------------------------

    def _feed(self, key, counter, value) -> None:
        """``counter`` grows by how much ``value`` (a running total) grew past what it was fed (a
        total that went back, which a run never does, feeds nothing until it is past it again)."""
        last = self.exported.get(key, 0)
        if value > last:
            counter.inc(value - last)
            self.exported[key] = value

    def export(self, stats: dict, running: bool, now: float, source_timeout: float) -> None:
        labels = self.labels
        for key, counter in self.counters:
            self._feed(key, counter, int(stats.get(key) or 0))
        counts = self.by_class
        if counts is not None:
            now_counts = counts.copy()
            exported = self.exported_classes
            for i in np.flatnonzero(now_counts != exported).tolist():
                if now_counts[i] > exported[i]:
                    self.detections.labels(*labels, self.class_names[i]).inc(int(now_counts[i] - exported[i]))
            np.copyto(self.exported_classes, now_counts)
        for key, value in list(self.event_counts.items()):
            self._feed(("event",) + key, self.events.labels(*labels, *key), value)
        self.fps.set(float(stats.get("fps") or 0.0))
        fresh = now - self.last_frame < source_timeout
        self.up.set(1 if running and fresh and stats.get("state", "up") == "up" else 0)
        if self.mqtt is not None:
            numbers = self.mqtt.counters()
            for key, counter in self.mqtt_counters:
                self._feed(("mqtt", key), counter, int(numbers.get(key) or 0))
            self.mqtt_connected.set(1 if numbers.get("connected") else 0)
            self.mqtt_queued.set(int(numbers.get("queued") or 0))


def _child(metric, *, labels: tuple[str, ...]):
    return metric.labels(*labels) if labels else metric


class MetricsSink(Sink):
    """Feeds the exporter from the live loop and renders ``/metrics`` for ``server``.

    ``invoke_seconds``: a callable giving this frame's invoke time in seconds; by default the loop
    that calls :meth:`start` is asked (its stage times, the number ``invoke_ms_last`` shows).
    ``mqtt``: an :class:`~edge.events.mqtt.MqttSink` whose numbers to export too.

    ``cameras``: the :class:`~edge.live.cameras.Camera` s of a
    :class:`~edge.live.multiloop.MultiLoop`, for metrics per camera (see the module): a
    :class:`CameraMetrics` joins each camera's sinks, and this sink goes among the loop's sinks
    (``MultiLoop(..., sinks=[it])``) for the loop-wide numbers. ``mqtt`` is then the
    :class:`~edge.events.mqtt_cameras.MqttCameras` (each camera's own connection is exported).
    """

    def __init__(self, server: MetricsServer, *, invoke_seconds: Callable[[], float] | None = None, mqtt=None,
                 source_timeout: float = SOURCE_TIMEOUT, cameras: Iterable | None = None) -> None:
        prom = _import_prometheus()
        cameras = list(cameras) if cameras is not None else None
        if cameras is not None and not cameras:
            raise EdgeError("metrics per camera need at least one camera")
        label = ("camera",) if cameras is not None else ()
        self.server = server
        self.mqtt = mqtt
        self.source_timeout = float(source_timeout)
        self._invoke = invoke_seconds
        self._stats: Callable[[], dict] = dict
        self._generate = prom.generate_latest
        self.registry = registry = prom.CollectorRegistry(auto_describe=True)
        self._counters = [(key, prom.Counter(name, text, label, registry=registry))
                          for key, name, text in STATS_COUNTERS]
        self._detections = prom.Counter("edgekit_detections", "Detections handed to the outputs, by label.",
                                        label + ("label",), registry=registry)
        self._events = prom.Counter("edgekit_events", "Zone and line events (enter, leave, cross), by zone or line.",
                                    label + ("kind", "region"), registry=registry)
        self._invoke_hist = prom.Histogram("edgekit_invoke_seconds", "Interpreter invoke time per frame.",
                                           buckets=INVOKE_BUCKETS, registry=registry)
        self._fps = prom.Gauge("edgekit_fps", "Frames processed per second, recently.", label, registry=registry)
        self._rss = prom.Gauge("edgekit_rss_bytes", "Resident memory of the process.", registry=registry)
        self._up = prom.Gauge("edgekit_source_up", "1 while frames arrive from the source.", label,
                              registry=registry)
        self._running = prom.Gauge("edgekit_running", "1 while the loop runs.", registry=registry)
        if mqtt is not None:
            self._mqtt_counters = [(key, prom.Counter(name, text, label, registry=registry))
                                   for key, name, text in MQTT_COUNTERS]
            self._mqtt_connected = prom.Gauge("edgekit_mqtt_connected", "1 while connected to the broker.", label,
                                              registry=registry)
            self._mqtt_queued = prom.Gauge("edgekit_mqtt_queued_messages", "MQTT messages not yet acknowledged.",
                                           label, registry=registry)
        try:
            prom.ProcessCollector(registry=registry)
        except Exception:  # not on Linux: no process_* metrics
            pass
        self._lock = threading.Lock()  # one scrape at a time
        if cameras is None:
            self._own: _Scope | None = _Scope(self, (), mqtt)  # this sink's own frames: the single source
            self.scopes = [self._own]
        else:
            self._own = None  # each camera's CameraMetrics tallies its frames
            per_camera = {sink.camera: sink for sink in getattr(mqtt, "sinks", ())} if mqtt is not None else {}
            self.scopes = [_Scope(self, (camera.name,), per_camera.get(camera.name)) for camera in cameras]
            for camera, scope in zip(cameras, self.scopes):
                scope.stats = dict  # zeros until the loop starts the camera's sink
                camera.sinks.append(CameraMetrics(scope))
        server.set_render(self.render)  # zeros until the loop starts

    # ---- the Sink interface (detector thread) ------------------------------------------------

    def start(self, stats: Callable[[], dict]) -> None:
        self._stats = stats
        if self._invoke is None:  # the loop whose live_stats this is: LiveLoop.times, MultiLoop.invoke_times
            owner = getattr(stats, "__self__", None)
            times = getattr(owner, "times", None) or getattr(owner, "invoke_times", None)
            if times is not None and callable(getattr(times, "last", None)):
                self._invoke = partial(times.last, "invoke")

    def write(self, frame, detections, annotated) -> None:
        invoke = self._invoke
        if invoke is not None:
            self._invoke_hist.observe(invoke())
        own = self._own
        if own is not None:
            own.write(detections)

    def events(self, frame, events) -> None:
        own = self._own
        if own is not None:
            own.count(events)

    def close(self) -> None:
        self.server.close()

    def report(self) -> str | None:
        n = self.server.scrapes
        return f"metrics: {n} scrape{'s' if n != 1 else ''} served at {self.server.url.split('?')[0]}"

    # ---- scraping (the server's thread) ------------------------------------------------------------

    def render(self) -> bytes:
        """Bring the metrics up to date and return them in the Prometheus text format."""
        with self._lock:
            stats = _read(self._stats)
            running = bool(stats.get("running"))
            now = time.monotonic()
            for scope in self.scopes:
                scope.export(stats if scope.stats is None else _read(scope.stats), running, now,
                             self.source_timeout)
            self._rss.set(rss_bytes())
            self._running.set(1 if running else 0)
            return self._generate(self.registry)


class CameraMetrics(Sink):
    """One camera's handle on a :class:`MetricsSink` of several cameras: the loop starts it with
    that camera's stats and hands it only that camera's frames and events, tallied under its
    ``camera`` label. The loop-wide :class:`MetricsSink` closes the server and reports."""

    def __init__(self, scope: _Scope) -> None:
        self.scope = scope
        self.camera = scope.labels[0]

    def start(self, stats: Callable[[], dict]) -> None:
        self.scope.stats = stats

    def write(self, frame, detections, annotated) -> None:
        self.scope.write(detections)

    def events(self, frame, events) -> None:
        self.scope.count(events)


__all__ = ["CONTENT_TYPE", "TOKEN_ENV", "CameraMetrics", "MetricsServer", "MetricsSink", "parse_metrics_bind"]
