"""``--metrics`` with several cameras: each camera's counters and gauges under its ``camera`` label,
the loop's own numbers unlabelled, scraped over real HTTP and parsed with prometheus_client's parser.

Through the real CLI (a subprocess, the bundled demo model, a real mosquitto for the MQTT numbers):
labels per camera, counters that only grow between scrapes, a camera whose video ended equal to
the summary's line for it. In process (real capture threads, faulty cameras from test_cameras):
after the run every camera's exported numbers equal its summary's, errors, reconnects, stalls,
detections by label and zone events included. The single-camera exporter is tests/test_live_metrics.py's.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("prometheus_client", reason="pip install 'edgekit[events]'")

from edge.detector.detector import Detector  # noqa: E402
from edge.events.config import parse_config  # noqa: E402
from edge.events.stage import EventStage  # noqa: E402
from edge.live.cameras import Camera  # noqa: E402
from edge.live.metrics import CameraMetrics, MetricsServer, MetricsSink  # noqa: E402
from edge.live.multiloop import MultiLoop  # noqa: E402
from edge.live.synthetic import SyntheticSource  # noqa: E402
from edge.models import DEMO_MODEL  # noqa: E402

from edge_process import EdgeRun, write_video  # noqa: E402
from test_cameras import RaisingSource, StallingSource  # noqa: E402
from test_events_live import CONFIG, CrossingSquares  # noqa: E402
from test_live_metrics import COUNTERS, parse, scrape  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PER_CAMERA = COUNTERS + ("edgekit_fps", "edgekit_source_up")
LOOP_WIDE = ("edgekit_invoke_seconds_count", "edgekit_rss_bytes", "edgekit_running")


def by_camera(samples: dict, name: str) -> dict[str, float]:
    """``{camera: value}`` of one sample name (the camera label alone)."""
    out = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            labels = dict(labels)
            assert set(labels) == {"camera"}, (name, labels)
            out[labels["camera"]] = value
    return out


def _broker(tmp_path):
    from test_mqtt import MOSQUITTO, Broker

    if MOSQUITTO is None:
        return None
    pytest.importorskip("paho.mqtt")
    return Broker(tmp_path).start()


def test_cli_exports_every_camera_under_its_label_and_counters_only_grow(tmp_path):
    write_video(tmp_path / "gate.avi", 40, (200, 150), fps=20)
    config = tmp_path / "cameras.json"
    config.write_text(json.dumps({"cameras": [
        {"name": "door", "source": "synthetic:320x240@15", "realtime": True},
        {"name": "yard", "source": "synthetic:160x120@15", "realtime": True},
        {"name": "gate", "source": str(tmp_path / "gate.avi"), "realtime": True}]}))
    names = {"door", "yard", "gate"}
    broker = _broker(tmp_path)
    mqtt = ["--mqtt", broker.url] if broker is not None else []
    run = EdgeRun("--config", config, "--metrics", "127.0.0.1:0", *mqtt, "--duration", "30", "--stats-every", "0")
    try:
        port = run.port("metrics")

        def gate_ended() -> bool:  # 40 frames at 20 fps: 2 s
            now = scrape(port)
            return by_camera(now, "edgekit_frames_processed_total").get("gate", 0) > 0 and \
                by_camera(now, "edgekit_source_up")["gate"] == 0
        end = time.monotonic() + 20
        while not gate_ended():
            assert time.monotonic() < end, "the gate camera's video did not end"
            time.sleep(0.3)
        first = scrape(port)
        time.sleep(1.2)
        second = scrape(port)
    finally:
        code = run.stop()
        if broker is not None:
            broker.stop()
    assert code == 0, run.stderr
    for name in PER_CAMERA:
        key = name if name.startswith("edgekit_fps") or name.endswith("_up") else name + "_total"
        assert set(by_camera(first, key)) == names, key
        assert (key, ()) not in first, f"{key}: per camera only, no unlabelled total beside the labels"
    for name in COUNTERS:
        earlier, later = by_camera(first, name + "_total"), by_camera(second, name + "_total")
        assert all(later[c] >= earlier[c] for c in names), name
    processed = (by_camera(first, "edgekit_frames_processed_total"), by_camera(second, "edgekit_frames_processed_total"))
    assert all(processed[1][c] > processed[0][c] for c in ("door", "yard")), processed
    assert processed[1]["gate"] == processed[0]["gate"] > 0, "an ended camera's counters stand still"
    read, dropped = by_camera(second, "edgekit_frames_read_total"), by_camera(second, "edgekit_frames_dropped_total")
    assert read["gate"] == 40 == processed[1]["gate"] + dropped["gate"]  # read at its pace: late frames dropped
    up = by_camera(second, "edgekit_source_up")
    assert (up["door"], up["yard"], up["gate"]) == (1, 1, 0)
    assert by_camera(second, "edgekit_fps")["door"] > 5
    for name in LOOP_WIDE:
        assert (name, ()) in second, name
    assert second[("edgekit_running", ())] == 1
    assert second[("edgekit_invoke_seconds_count", ())] > first[("edgekit_invoke_seconds_count", ())]
    summary = run.summary()
    assert summary["gate"]["frames_processed"] == processed[1]["gate"] and summary["gate"]["state"] == "ended"
    assert summary["gate"]["frames_dropped"] == dropped["gate"]
    for camera in ("door", "yard"):
        assert summary[camera]["frames_processed"] >= processed[1][camera]
    if broker is not None:  # each camera's own connection, under its label
        assert set(by_camera(second, "edgekit_mqtt_connected")) == names
        assert all(v == 1 for v in by_camera(second, "edgekit_mqtt_connected").values())
        assert all(v > 0 for v in by_camera(second, "edgekit_mqtt_messages_published_total").values())


def test_after_a_run_each_cameras_numbers_equal_its_summary():
    """A zoned camera with crossings, a synthetic camera that ends, one whose reads raise (it
    reconnects) and one that stalls: what /metrics says per camera is what the summary says."""
    detector = Detector(DEMO_MODEL, score_threshold=0.1)
    stage = EventStage(detector.labels, high_score=0.5, low_score=0.1,
                       config=parse_config(CONFIG, labels=detector.labels),
                       detection_capacity=detector.detections.capacity)
    stalling = StallingSource(stall_timeout=0.4)
    cameras = [Camera("road", CrossingSquares(80), events=stage),
               Camera("yard", SyntheticSource("synthetic:160x120", 160, 120, max_frames=60)),
               Camera("broken", RaisingSource(), stall_timeout=1.0, backoff=(0.05, 0.2)),
               Camera("stuck", stalling, backoff=(0.05, 0.2))]
    server = MetricsServer("127.0.0.1", 0).start()
    sink = MetricsSink(server, cameras=cameras)
    assert [type(c.sinks[-1]) for c in cameras] == [CameraMetrics] * 4
    loop = MultiLoop(detector, cameras, sinks=[sink], duration=30, stats_every=0, log=lambda m: None)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", loop.run()), daemon=True)
    runner.start()
    road, yard, broken, stuck = cameras
    scrapes = []
    try:  # scraped while it runs; stopped once the two finite cameras ended and the faulty ones failed
        while runner.is_alive() and not (len(scrapes) >= 2 and road.state == yard.state == "ended" and
                                         broken.counters.reconnects >= 1 and stuck.counters.stalls >= 1):
            time.sleep(0.4)
            if runner.is_alive():
                scrapes.append(scrape(server.port))
        loop.stop("test over")
    finally:
        stalling.release.set()
        runner.join(20)
    assert not runner.is_alive() and len(scrapes) >= 2
    for name in COUNTERS:
        for earlier, later in zip(scrapes, scrapes[1:]):
            a, b = by_camera(earlier, name + "_total"), by_camera(later, name + "_total")
            assert all(b[c] >= a[c] for c in a), name
    summary = result["summary"]
    final = parse(sink.render().decode())
    for camera in summary.cameras:
        for key, metric in (("frames_read", "edgekit_frames_read"), ("frames_processed", "edgekit_frames_processed"),
                            ("frames_dropped", "edgekit_frames_dropped"), ("bad_frames", "edgekit_frames_bad"),
                            ("read_errors", "edgekit_source_read_errors"), ("reconnects", "edgekit_source_reconnects"),
                            ("stalls", "edgekit_source_stalls")):
            assert by_camera(final, metric + "_total")[camera.name] == getattr(camera, key), (camera.name, key)
        labels = {dict(l)["label"]: v for (n, l), v in final.items()
                  if n == "edgekit_detections_total" and dict(l)["camera"] == camera.name}
        assert labels == camera.detections_by_label, camera.name
    road, yard = summary.camera("road"), summary.camera("yard")
    assert summary.stop_reason == "test over"
    assert (road.frames_processed, yard.frames_processed) == (80, 60) and yard.detections > 0
    assert summary.camera("broken").read_errors >= 2 and summary.camera("broken").reconnects >= 1
    assert summary.camera("stuck").stalls >= 1
    events = {(dict(l)["camera"], dict(l)["kind"], dict(l)["region"]): v for (n, l), v in final.items()
              if n == "edgekit_events_total"}
    assert events[("road", "cross", "middle")] == 2 == stage.zones.count("middle")
    assert {camera for camera, _, _ in events} == {"road"}
    assert final[("edgekit_invoke_seconds_count", ())] == summary.frames_processed
    assert final[("edgekit_running", ())] == 0
    assert set(by_camera(final, "edgekit_source_up").values()) == {0}
    assert ("edgekit_frames_read_total", ()) not in final
