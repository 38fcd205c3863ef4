"""The Prometheus exporter (edge.live.metrics): scraped over real HTTP from a real live loop and parsed
with prometheus_client's own parser; counters that only grow; the preview's token and Host rules;
hard request deadlines; an allocation-free per-frame path; a registry of its own.

(``tests/test_metrics.py`` is the mAP evaluation's.)
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="pip install 'edgekit[events]'")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import edge.live.metrics as metrics_module  # noqa: E402
from edge.contract.detections import Detections  # noqa: E402
from edge.detector.detector import Detector  # noqa: E402
from edge.detector.step import Frame  # noqa: E402
from edge.errors import EdgeError  # noqa: E402
from edge.events.config import parse_config  # noqa: E402
from edge.events.stage import EventStage  # noqa: E402
from edge.events.zones import Event  # noqa: E402
from edge.live.loop import LiveLoop  # noqa: E402
from edge.live.metrics import MetricsServer, MetricsSink, parse_metrics_bind  # noqa: E402
from edge.models import DEMO_MODEL  # noqa: E402

from test_events_live import CONFIG, CrossingSquares  # noqa: E402

pytestmark = pytest.mark.timeout(120)

COUNTERS = ("edgekit_frames_read", "edgekit_frames_processed", "edgekit_frames_dropped", "edgekit_frames_bad",
            "edgekit_source_read_errors", "edgekit_source_reconnects", "edgekit_source_stalls")


def get(port: int, path: str = "/metrics", *, host: str | None = None, headers: dict | None = None,
        method: str = "GET", timeout: float = 10.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if host is not None:
            sent["Host"] = host
        conn.request(method, path, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def parse(text: str) -> dict:
    """``{(sample name, sorted labels): value}`` from the Prometheus text format."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(port: int, **kwargs) -> dict:
    status, headers, body = get(port, **kwargs)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(body.decode())


class PacedCrossings(CrossingSquares):
    """The crossing scene at ``fps``, so a run lasts long enough to be scraped during it."""

    def __init__(self, frames: int = 80, fps: float = 40.0) -> None:
        super().__init__(frames)
        self.interval, self._next = 1.0 / fps, None

    def _read(self):
        now = time.monotonic()
        self._next = now if self._next is None else self._next
        if self._next > now:
            time.sleep(self._next - now)
        self._next += self.interval
        return super()._read()


def test_a_live_run_scraped_over_http_has_growing_counters_and_the_loops_numbers():
    detector = Detector(DEMO_MODEL, score_threshold=0.1)
    stage = EventStage(detector.labels, high_score=0.5, low_score=0.1,
                       config=parse_config(CONFIG, labels=detector.labels),
                       detection_capacity=detector.detections.capacity)
    server = MetricsServer("127.0.0.1", 0).start()
    sink = MetricsSink(server)
    loop = LiveLoop(detector, PacedCrossings(frames=100), [sink], stats_every=0, log=lambda m: None, events=stage)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", loop.run()), daemon=True)
    runner.start()
    scrapes = []
    try:
        deadline = time.monotonic() + 30
        while len(scrapes) < 3 and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.6)
            if runner.is_alive():
                scrapes.append(scrape(server.port))
        assert len(scrapes) >= 2, "two scrapes during the run"
        first, second = scrapes[0], scrapes[-1]
        for name in COUNTERS:
            key = (name + "_total", ())
            assert key in first, name
            assert all(later[key] >= earlier[key] for earlier, later in zip(scrapes, scrapes[1:])), name
        assert second[("edgekit_frames_processed_total", ())] > first[("edgekit_frames_processed_total", ())] > 0
        assert second[("edgekit_invoke_seconds_count", ())] > first[("edgekit_invoke_seconds_count", ())]
        assert first[("edgekit_source_up", ())] == 1 and first[("edgekit_running", ())] == 1
        assert second[("edgekit_fps", ())] > 0 and first[("edgekit_rss_bytes", ())] > 10 * 2**20
        assert ("process_cpu_seconds_total", ()) in first
    finally:
        runner.join(60)
    summary = result["summary"]
    with pytest.raises(OSError):  # the loop closed the sink, and with it the server
        get(server.port, timeout=2)
    final = parse(sink.render().decode())  # after the run: the same numbers as the summary
    assert final[("edgekit_frames_processed_total", ())] == summary.frames_processed == 100
    assert final[("edgekit_frames_read_total", ())] == summary.frames_read
    assert final[("edgekit_invoke_seconds_count", ())] == summary.frames_processed
    assert final[("edgekit_invoke_seconds_sum", ())] == pytest.approx(loop.times.total("invoke"), rel=1e-6)
    by_label = {dict(labels)["label"]: v for (name, labels), v in final.items() if name == "edgekit_detections_total"}
    assert sum(by_label.values()) == summary.detections and by_label == summary.detections_by_label
    events = {tuple(sorted(dict(labels).values())): v for (name, labels), v in final.items()
              if name == "edgekit_events_total"}
    assert events[("cross", "middle")] == 2 == stage.zones.count("middle")
    assert events[("leave", "right")] == stage.zones.count("right", "out")
    assert final[("edgekit_running", ())] == 0 and final[("edgekit_source_up", ())] == 0
    for name in COUNTERS:  # and still never less than during the run
        assert final[(name + "_total", ())] >= second[(name + "_total", ())]


def test_counters_follow_running_totals_and_never_go_down():
    numbers = {"frames_read": 10, "frames_processed": 8, "running": True, "fps": 12.5}
    server = MetricsServer("127.0.0.1", 0)
    sink = MetricsSink(server)
    sink.start(lambda: dict(numbers))
    try:
        one = parse(sink.render().decode())
        numbers.update(frames_read=25, frames_processed=20)
        two = parse(sink.render().decode())
        numbers.update(frames_read=3)  # a total that went back (never happens in a run): no decrease
        three = parse(sink.render().decode())
        numbers.update(frames_read=30)
        four = parse(sink.render().decode())
    finally:
        sink.close()
    read = [s[("edgekit_frames_read_total", ())] for s in (one, two, three, four)]
    assert read == [10, 25, 25, 30]
    assert two[("edgekit_frames_processed_total", ())] == 20 and one[("edgekit_fps", ())] == 12.5
    assert one[("edgekit_source_up", ())] == 0, "running, but no frame yet"


def test_a_token_is_required_by_query_or_bearer_header_and_then_any_host_is_fine():
    server = MetricsServer("127.0.0.1", 0, token="s3cret").start()
    sink = MetricsSink(server)
    sink.start(lambda: {"frames_read": 1})
    try:
        port = server.port
        assert get(port)[0] == 403
        assert get(port, "/metrics?token=wrong")[0] == 403
        assert get(port, headers={"Authorization": "Bearer wrong"})[0] == 403
        status, headers, body = get(port, "/metrics?token=nope")
        assert body == b"token required\n" and headers["WWW-Authenticate"].startswith("Bearer")
        assert scrape(port, path="/metrics?token=s3cret")[("edgekit_frames_read_total", ())] == 1
        assert scrape(port, headers={"Authorization": "Bearer s3cret"}, host="evil.example")
        assert get(port, "/metrics?token=s3cret", host="evil.example")[0] == 200
        assert server.url.endswith("/metrics?token=s3cret")
        with pytest.raises(EdgeError, match="empty token"):
            MetricsServer("127.0.0.1", 0, token="")
    finally:
        sink.close()


def test_without_a_token_the_host_must_name_this_machine():
    server = MetricsServer("127.0.0.1", 0).start()
    sink = MetricsSink(server)
    sink.start(dict)
    try:
        port = server.port
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", "raspberrypi",
                     "10.1.2.3:9108", "cam.localhost"):
            assert get(port, host=host)[0] == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil.example"):
            status, _, body = get(port, host=host)
            assert status == 403 and b"host not allowed" in body, host
        with socket.create_connection(("127.0.0.1", port), 5) as raw:  # HTTP/1.0 without Host: a tool
            raw.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := raw.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"edgekit_frames_read_total" in reply
        assert get(port, "/other")[0] == 404 and get(port, method="POST")[0] == 405
        status, headers, body = get(port, method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    finally:
        sink.close()


def test_a_silent_or_slow_client_is_cut_at_the_deadline_and_scrapes_go_on():
    server = MetricsServer("127.0.0.1", 0, timeout=0.5).start()
    sink = MetricsSink(server)
    sink.start(dict)
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), 5)
        slow = socket.create_connection(("127.0.0.1", server.port), 5)
        t = time.monotonic()
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":  # a byte every 0.1 s never beats the deadline
            try:
                slow.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - t > 2.5:
                break
        status, _, _ = get(server.port, timeout=5)
        assert status == 200
        assert time.monotonic() - t < 4.5, "each bad client held the server at most its deadline"
        assert server.timed_out >= 2
        silent.close()
        slow.close()
        with socket.create_connection(("127.0.0.1", server.port), 5) as big:
            big.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n")
            assert big.recv(100).startswith(b"HTTP/1.1 431")
    finally:
        sink.close()


def test_the_per_frame_path_allocates_nothing_that_stays():
    server = MetricsServer("127.0.0.1", 0)
    sink = MetricsSink(server, invoke_seconds=lambda: 0.012)
    sink.start(dict)
    detections = Detections(10, ["circle", "square", "triangle"])
    detections.count = 4
    detections._class_ids[:4] = [0, 1, 1, 7]
    frame = Frame.of(np.zeros((8, 8, 3), np.uint8))
    event = Event("cross", "in", "line", "door", 1, 1, "square", 1, 1.0, 2.0, 3.0)
    try:
        for _ in range(200):
            sink.write(frame, detections, None)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            sink.write(frame, detections, None)
        after, peak = tracemalloc.get_traced_memory()
        ours = [tracemalloc.Filter(True, metrics_module.__file__),
                tracemalloc.Filter(True, str(Path(prometheus_client.__file__).parent / "*"))]
        kept = tracemalloc.take_snapshot().filter_traces(ours).statistics("lineno")
        tracemalloc.stop()
        assert not kept, f"kept over 5000 frames: {kept[:3]}"
        assert after - before < 1024 and peak - before < 4096
        sink.events(frame, [event])
        final = parse(sink.render().decode())
    finally:
        sink.close()
    assert final[("edgekit_invoke_seconds_count", ())] == 5200
    assert final[("edgekit_invoke_seconds_bucket", (("le", "0.02"),))] == 5200
    assert final[("edgekit_invoke_seconds_bucket", (("le", "0.01"),))] == 0
    assert final[("edgekit_detections_total", (("label", "square"),))] == 2 * 5200
    assert final[("edgekit_detections_total", (("label", "other"),))] == 5200
    assert final[("edgekit_events_total", (("kind", "cross"), ("region", "door")))] == 1


class _FakeMqtt:
    def __init__(self) -> None:
        self.numbers = {"connected": True, "published": 5, "dropped": 2, "queued": 3}

    def counters(self) -> dict:
        return dict(self.numbers)


def test_each_exporter_has_its_own_registry_and_can_export_the_mqtt_numbers():
    mqtt = _FakeMqtt()
    one, two = MetricsSink(MetricsServer("127.0.0.1", 0)), MetricsSink(MetricsServer("127.0.0.1", 0), mqtt=mqtt)
    try:  # two in one process: on the global registry the second would raise "Duplicated timeseries"
        assert one.registry is not two.registry is not prometheus_client.REGISTRY
        assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("edgekit_")]
        two.start(dict)
        first = parse(two.render().decode())
        mqtt.numbers.update(published=9, dropped=2, connected=False)
        second = parse(two.render().decode())
    finally:
        one.close()
        two.close()
    dropped, published = ("edgekit_mqtt_messages_dropped_total", ()), ("edgekit_mqtt_messages_published_total", ())
    assert first[dropped] == 2 == second[dropped]
    assert (first[published], second[published]) == (5, 9)
    assert (first[("edgekit_mqtt_connected", ())], second[("edgekit_mqtt_connected", ())]) == (1, 0)
    assert first[("edgekit_mqtt_queued_messages", ())] == 3


def test_bind_specs_and_a_taken_port_are_one_line_errors():
    assert parse_metrics_bind("9108") == ("127.0.0.1", 9108)
    assert parse_metrics_bind("0.0.0.0:9108") == ("0.0.0.0", 9108)
    with pytest.raises(EdgeError, match="^--metrics abc: write PORT"):
        parse_metrics_bind("abc")
    taken = MetricsServer("127.0.0.1", 0)
    try:
        with pytest.raises(EdgeError, match=f"--metrics 127.0.0.1:{taken.port}: cannot listen"):
            MetricsServer("127.0.0.1", taken.port)
    finally:
        taken.close()
    assert metrics_module.CONTENT_TYPE == prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4
