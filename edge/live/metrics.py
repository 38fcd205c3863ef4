"""A Prometheus exporter for ``edge run``: ``GET /metrics`` in the Prometheus text format on its own port.

``--metrics [HOST:]PORT`` (127.0.0.1 unless HOST is given). The same rules as the preview page
(:mod:`edge.live.preview`): with a token every request needs ``?token=...`` or ``Authorization:
Bearer ...`` (Prometheus: ``authorization: {credentials_file: ...}``); without one, the ``Host`` header
must name this machine (:meth:`PreviewServer.host_allowed <edge.live.preview.PreviewServer.host_allowed>`,
used as is), so a page elsewhere that rebinds its DNS name to 127.0.0.1 gets 403.

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

What it costs the detector: per frame, one histogram observation and a count per detection
(nothing allocated that outlives the call); everything else happens on the server's thread when
Prometheus scrapes. The server is one thread serving one connection at a time, each with a hard
deadline (``timeout`` seconds for the whole request and response) and a bounded request head, so
a slow or hostile client holds it for at most that long and memory stays fixed.

``prometheus-client`` is imported when a sink is made (``pip install 'edgekit[events]'``).
"""

from __future__ import annotations

import errno
import hmac
import http.client
import io
import logging
import socket
import threading
import time
from functools import partial
from http import HTTPStatus
from typing import Callable, Iterable
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

from edge.errors import EdgeError, first_line
from edge.live.preview import PreviewServer, _check_token, _reachable_address, parse_bind
from edge.live.sinks import Sink
from edge.memory import rss_bytes

LOG = logging.getLogger("edge.live.metrics")
TOKEN_ENV = "EDGE_METRICS_TOKEN"
REQUEST_TIMEOUT = 5.0  # seconds for a whole request: headers in, response out
MAX_HEAD = 16 * 1024  # bytes of request line and headers
BACKLOG = 16
SOURCE_TIMEOUT = 10.0  # seconds without a processed frame after which edgekit_source_up is 0
_ACCEPT_POLL = 0.25  # seconds between checks for close() while nobody connects
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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


def parse_metrics_bind(spec: str) -> tuple[str, int]:
    """``"9108"`` -> ``("127.0.0.1", 9108)``; ``"0.0.0.0:9108"`` -> ``("0.0.0.0", 9108)``."""
    try:
        return parse_bind(spec)
    except EdgeError:
        raise EdgeError(f"--metrics {spec}: write PORT or HOST:PORT (e.g. 9108 or 0.0.0.0:9108)") from None


def _import_prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise EdgeError("--metrics needs prometheus-client: pip install 'edgekit[events]' "
                        "(or pip install 'prometheus-client>=0.20')") from None
    return prometheus_client


class MetricsServer:
    """``/metrics`` over HTTP on its own thread; what it serves comes from :meth:`set_render`.

    ``token`` (``None``: no authentication, then the ``Host`` rule applies; never empty, see
    :func:`edge.live.preview.resolve_token`). ``allowed_hosts`` adds names accepted in ``Host``
    without a token (a reverse proxy's). ``timeout`` bounds each request from accept to the last
    byte sent.
    """

    host_allowed = PreviewServer.host_allowed  # the preview's Host rule, on this server's names

    def __init__(self, host: str = "127.0.0.1", port: int = 9108, *, token: str | None = None,
                 allowed_hosts: Iterable[str] = (), timeout: float = REQUEST_TIMEOUT) -> None:
        self.token = _check_token(token)
        if not timeout > 0:
            raise ValueError(f"MetricsServer timeout={timeout!r}: must be more than 0")
        self.timeout = float(timeout)
        bind = host.strip("[]") if host else "0.0.0.0"
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and bind == "::":
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:
                    pass
            sock.bind((bind, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise EdgeError(f"--metrics {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        sock.settimeout(_ACCEPT_POLL)
        self._sock = sock
        self.host, self.port = bind, sock.getsockname()[1]
        if bind in ("0.0.0.0", "::"):
            self.public_host = _reachable_address(True, bind == "::") or socket.gethostname() or "127.0.0.1"
        else:
            self.public_host = bind
        own = socket.gethostname().lower()
        self._names = {"localhost", bind.lower(), self.public_host.lower(), own, f"{own}.local"}
        self._names.update(name.lower().strip("[]").rstrip(".") for name in allowed_hosts)
        self._render: Callable[[], bytes] = lambda: b""
        self._closing = threading.Event()
        self._current: socket.socket | None = None
        self.requests = self.scrapes = self.refused = self.timed_out = 0
        self._thread = threading.Thread(target=self._serve, name="edge-metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        return f"http://{host}:{self.port}/metrics{query}"

    def set_render(self, render: Callable[[], bytes]) -> None:
        """What ``/metrics`` serves: called on the server's thread, once per scrape."""
        self._render = render

    def start(self) -> "MetricsServer":
        if not self._thread.is_alive() and not self._closing.is_set():
            self._thread.start()
        return self

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        current = self._current
        if current is not None:
            try:
                current.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread.ident is not None:
            self._thread.join(self.timeout + 2 * _ACCEPT_POLL)
        self._sock.close()

    stop = close

    # ---- serving (its own thread) ----------------------------------------------------------------

    def _serve(self) -> None:
        backoff = 0.0
        while not self._closing.is_set():
            try:
                conn, address = self._sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._closing.is_set():
                    break
                if exc.errno in _OUT_OF_FILES:  # the listen socket stays readable: do not spin
                    backoff = min(1.0, max(0.05, backoff * 2))
                    self._closing.wait(backoff)
                continue
            backoff = 0.0
            self._current = conn
            try:
                self._handle(conn, address)
            except Exception as exc:  # one line, never a traceback, and the server goes on
                LOG.debug("edge metrics: request from %s failed: %s", address[0], first_line(exc, with_type=True))
            finally:
                self._current = None
                try:
                    conn.close()
                except OSError:
                    pass

    def _handle(self, conn: socket.socket, address) -> None:
        deadline = time.monotonic() + self.timeout
        head = bytearray()
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out += 1
                return  # too slow: closed without a word
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                self.timed_out += 1
                return
            if not chunk:
                return
            head += chunk
            if len(head) > MAX_HEAD:
                self._respond(conn, deadline, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n")
                return
        self.requests += 1
        line, _, rest = bytes(head).partition(b"\n")
        parts = line.decode("latin-1").strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(conn, deadline, HTTPStatus.BAD_REQUEST, b"bad request\n")
            return
        method, target, _version = parts
        try:
            headers = http.client.parse_headers(io.BytesIO(rest))
        except http.client.HTTPException:
            self._respond(conn, deadline, HTTPStatus.BAD_REQUEST, b"bad headers\n")
            return
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._respond(conn, deadline, HTTPStatus.METHOD_NOT_ALLOWED, b"GET /metrics\n", extra=("Allow: GET, HEAD",))
            return
        url = urlsplit(target)
        if self.token is None:
            if not self.host_allowed(headers.get("Host")):
                self.refused += 1
                self._respond(conn, deadline, HTTPStatus.FORBIDDEN,
                              b"host not allowed: scrape http://127.0.0.1, localhost or this machine's address, "
                              b"or start the exporter with a token\n", head_only=head_only)
                return
        elif not self._authorized(parse_qs(url.query), headers):
            self.refused += 1
            self._respond(conn, deadline, HTTPStatus.FORBIDDEN, b"token required\n", head_only=head_only,
                          extra=('WWW-Authenticate: Bearer realm="edgekit"',))
            return
        if url.path == "/metrics":
            body = self._render()
            self.scrapes += 1
            self._respond(conn, deadline, HTTPStatus.OK, body, CONTENT_TYPE, head_only=head_only)
        elif url.path == "/":
            self._respond(conn, deadline, HTTPStatus.OK, b"edgekit exporter: see /metrics\n", head_only=head_only)
        else:
            self._respond(conn, deadline, HTTPStatus.NOT_FOUND, b"not found\n", head_only=head_only)

    def _authorized(self, query: dict, headers) -> bool:
        given = query.get("token", [""])[0]
        header = headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def _respond(conn: socket.socket, deadline: float, status: HTTPStatus, body: bytes,
                 content_type: str = "text/plain; charset=utf-8", *, head_only: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                 "Connection: close", *extra]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        conn.sendall(data)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class MetricsSink(Sink):
    """Feeds the exporter from the live loop and renders ``/metrics`` for ``server``.

    ``invoke_seconds``: a callable giving this frame's invoke time in seconds; by default the loop
    that calls :meth:`start` is asked (its stage times, the number ``invoke_ms_last`` shows).
    ``mqtt``: an :class:`~edge.events.mqtt.MqttSink` whose numbers to export too.
    """

    def __init__(self, server: MetricsServer, *, invoke_seconds: Callable[[], float] | None = None, mqtt=None,
                 source_timeout: float = SOURCE_TIMEOUT) -> None:
        prom = _import_prometheus()
        self.server = server
        self.mqtt = mqtt
        self.source_timeout = float(source_timeout)
        self._invoke = invoke_seconds
        self._stats: Callable[[], dict] = dict
        self._generate = prom.generate_latest
        self.registry = registry = prom.CollectorRegistry(auto_describe=True)
        self._counters = [(key, prom.Counter(name, text, registry=registry)) for key, name, text in STATS_COUNTERS]
        self._detections = prom.Counter("edgekit_detections", "Detections handed to the outputs, by label.",
                                        ["label"], registry=registry)
        self._events = prom.Counter("edgekit_events", "Zone and line events (enter, leave, cross), by zone or line.",
                                    ["kind", "region"], registry=registry)
        self._invoke_hist = prom.Histogram("edgekit_invoke_seconds", "Interpreter invoke time per frame.",
                                           buckets=INVOKE_BUCKETS, registry=registry)
        self._fps = prom.Gauge("edgekit_fps", "Frames processed per second, recently.", registry=registry)
        self._rss = prom.Gauge("edgekit_rss_bytes", "Resident memory of the process.", registry=registry)
        self._up = prom.Gauge("edgekit_source_up", "1 while frames arrive from the source.", registry=registry)
        self._running = prom.Gauge("edgekit_running", "1 while the loop runs.", registry=registry)
        if mqtt is not None:
            self._mqtt_counters = [
                ("published", prom.Counter("edgekit_mqtt_messages_published", "Messages handed to the MQTT client.",
                                           registry=registry)),
                ("dropped", prom.Counter("edgekit_mqtt_messages_dropped", "MQTT messages dropped (queue full).",
                                         registry=registry))]
            self._mqtt_connected = prom.Gauge("edgekit_mqtt_connected", "1 while connected to the broker.",
                                              registry=registry)
            self._mqtt_queued = prom.Gauge("edgekit_mqtt_queued_messages", "MQTT messages not yet acknowledged.",
                                           registry=registry)
        try:
            prom.ProcessCollector(registry=registry)
        except Exception:  # not on Linux: no process_* metrics
            pass
        self._exported: dict = {}  # what each counter was fed up to
        self._by_class: np.ndarray | None = None  # detections per class id (last slot: ids past the labels)
        self._class_names: list[str] = []
        self._exported_classes: np.ndarray | None = None
        self._event_counts: dict[tuple[str, str], int] = {}
        self._last_frame = float("-inf")
        self._lock = threading.Lock()  # one scrape at a time
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
        self._last_frame = time.monotonic()
        invoke = self._invoke
        if invoke is not None:
            self._invoke_hist.observe(invoke())
        if detections is None or not detections.count:
            return
        counts = self._by_class
        if counts is None:
            counts = self._classes(detections.labels)
        top = counts.shape[0] - 1
        for class_id in detections.class_ids:
            counts[class_id if 0 <= class_id < top else top] += 1

    def events(self, frame, events) -> None:
        tally = self._event_counts
        for event in events:
            key = (event.kind, event.name)
            tally[key] = tally.get(key, 0) + 1

    def close(self) -> None:
        self.server.close()

    def report(self) -> str | None:
        n = self.server.scrapes
        return f"metrics: {n} scrape{'s' if n != 1 else ''} served at {self.server.url.split('?')[0]}"

    # ---- scraping (the server's thread) ------------------------------------------------------------

    def _classes(self, labels) -> np.ndarray:
        self._class_names = list(labels or []) + ["other"]
        self._exported_classes = np.zeros(len(self._class_names), np.int64)
        self._by_class = np.zeros(len(self._class_names), np.int64)
        return self._by_class

    def _feed(self, key, counter, value) -> None:
        """``counter`` grows by how much ``value`` (a running total) grew past what it was fed (a
        total that went back, which a run never does, feeds nothing until it is past it again)."""
        last = self._exported.get(key, 0)
        if value > last:
            counter.inc(value - last)
            self._exported[key] = value

    def render(self) -> bytes:
        """Bring the metrics up to date and return them in the Prometheus text format."""
        with self._lock:
            try:
                stats = dict(self._stats())
            except Exception as exc:
                LOG.debug("edge metrics: stats failed: %s", first_line(exc, with_type=True))
                stats = {}
            for key, counter in self._counters:
                self._feed(key, counter, int(stats.get(key) or 0))
            counts = self._by_class
            if counts is not None:
                now_counts = counts.copy()
                exported = self._exported_classes
                for i in np.flatnonzero(now_counts != exported).tolist():
                    if now_counts[i] > exported[i]:
                        self._detections.labels(self._class_names[i]).inc(int(now_counts[i] - exported[i]))
                np.copyto(self._exported_classes, now_counts)
            for key, value in list(self._event_counts.items()):
                self._feed(("event",) + key, self._events.labels(*key), value)
            self._fps.set(float(stats.get("fps") or 0.0))
            self._rss.set(rss_bytes())
            running = bool(stats.get("running"))
            self._running.set(1 if running else 0)
            fresh = time.monotonic() - self._last_frame < self.source_timeout
            self._up.set(1 if running and fresh else 0)
            if self.mqtt is not None:
                numbers = self.mqtt.counters()
                for key, counter in self._mqtt_counters:
                    self._feed(("mqtt", key), counter, int(numbers.get(key) or 0))
                self._mqtt_connected.set(1 if numbers.get("connected") else 0)
                self._mqtt_queued.set(int(numbers.get("queued") or 0))
            return self._generate(self.registry)
