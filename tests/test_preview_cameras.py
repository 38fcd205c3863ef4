"""``edge run --config FILE --preview``: one page and one port for every camera, each with its own
MJPEG stream, snapshot and numbers, over real HTTP on 127.0.0.1.

Through the real CLI (a subprocess with the bundled demo model): every camera's stream delivers
JPEGs of that camera's size, the page lists each one, a camera whose video ends shows as ended
while the others keep streaming, and the token guards the new routes. In process, with real capture
threads: a stalled camera shows as down and its viewers never hold up another camera's; the Host
rule and the per-camera viewer limit; nothing allocated per frame by N cameras' preview and
metrics sinks. The page in a real headless Chromium is in tests/test_preview_browser.py.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edge.detector.detector import Detector
from edge.detector.step import Frame
from edge.errors import EdgeError
from edge.live.cameras import Camera
from edge.live.multiloop import MultiLoop
from edge.live.preview_cameras import CameraPreview, CamerasPreviewServer, camera_path
from edge.live.synthetic import SyntheticSource
from edge.models import DEMO_MODEL

from edge_process import EdgeRun, MjpegReader, decode, get_json, mjpeg_parts, request, write_video
from test_cameras import StallingSource

pytestmark = pytest.mark.timeout(120)

SIZES = {"door": (320, 240), "yard": (160, 120), "gate": (200, 150)}


def cameras_file(folder: Path) -> Path:
    """door and yard: synthetic cameras at 15 fps; gate: a 2.5 s video read at its pace, then it ends."""
    write_video(folder / "gate.avi", 50, SIZES["gate"], fps=20)
    path = folder / "cameras.json"
    path.write_text(json.dumps({"cameras": [
        {"name": "door", "source": "synthetic:320x240@15", "realtime": True},
        {"name": "yard", "source": "synthetic:160x120@15", "realtime": True},
        {"name": "gate", "source": str(folder / "gate.avi"), "realtime": True}]}))
    return path


def wait_until(predicate, seconds: float, step: float = 0.1) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_every_camera_streams_on_one_port_and_an_ended_one_stops_no_other(tmp_path):
    run = EdgeRun("--config", cameras_file(tmp_path), "--preview", "127.0.0.1:0", "--token", "s3cret",
                  "--duration", "30", "--stats-every", "0")
    try:
        port = run.port("preview")
        auth = {"Authorization": "Bearer s3cret"}
        # gate's video lasts 2.5 s: its stream first, while it plays.
        for name in ("gate", "door", "yard"):
            parts = mjpeg_parts(port, f"/camera/{name}/stream.mjpg", 3, headers={**auth, "Host": "evil.example"})
            for jpeg in parts:
                height, width = decode(jpeg).shape[:2]
                assert (width, height) == SIZES[name], name
        status, headers, page = request(port, "/?token=s3cret")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        for name in SIZES:
            assert f'data-name="{name}"' in page.decode() and f'data-path="camera/{name}/"' in page.decode()
        # gate ends; door and yard go on streaming, and the page's numbers say so.
        assert wait_until(lambda: get_json(port, "/camera/gate/stats.json", headers=auth)["state"] == "ended", 15)
        gate = get_json(port, "/camera/gate/stats.json", headers=auth)
        assert gate["frames_read"] == 50 and gate["stream"] == "/camera/gate/stream.mjpg"
        with MjpegReader(port, "/camera/gate/stream.mjpg", headers=auth, timeout=30) as stalled_viewer:
            assert stalled_viewer.status == 200  # open and waiting for a frame that never comes
            for name in ("door", "yard"):
                t = time.monotonic()
                parts = mjpeg_parts(port, f"/camera/{name}/stream.mjpg", 5, headers=auth)
                assert time.monotonic() - t < 3.0, f"{name}: 5 frames at 15 fps took too long beside gate"
                assert all(decode(p).shape[1::-1] == SIZES[name] for p in parts)
            stats = get_json(port, "/stats.json?token=s3cret")
            assert stats["cameras"] == 3 and stats["cameras_up"] == 2 and stats["running"] is True
            assert [stats["per_camera"][n]["state"] for n in SIZES] == ["up", "up", "ended"]
            assert stats["per_camera"]["gate"]["viewers"] == 1
            for name in ("door", "yard"):
                row = stats["per_camera"][name]
                assert row["frames_processed"] > 0 and row["fps"] > 5 and row["preview_frames"] >= 5
                assert {"frames_read", "frames_dropped", "reconnects", "stalls", "read_errors"} <= set(row)
        status, _, body = request(port, "/camera/gate/snapshot.jpg?token=s3cret")  # its last frame stays
        assert status == 200 and decode(body).shape[1::-1] == SIZES["gate"]
        t = time.monotonic()  # a new viewer of the ended camera: its last frame, repeated once a second
        last = mjpeg_parts(port, "/camera/gate/stream.mjpg", 2, headers=auth)
        assert last[0] == last[1] and decode(last[0]).shape[1::-1] == SIZES["gate"]
        assert 0.8 <= time.monotonic() - t < 3.0
        # The token guards the new routes; unknown cameras and the single-camera routes are 404.
        for path in ("/camera/door/stream.mjpg", "/camera/door/snapshot.jpg", "/camera/door/stats.json", "/"):
            assert request(port, path)[0] == 403, path
            assert request(port, path + "?token=wrong")[0] == 403, path
        for path in ("/camera/nobody/snapshot.jpg", "/camera/door/other", "/camera/door", "/stream.mjpg",
                     "/snapshot.jpg"):
            assert request(port, path, headers=auth)[0] == 404, path
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    summary = run.summary()
    assert summary["gate"]["state"] == "ended" and summary["door"]["state"] == "up"
    assert "preview at http://127.0.0.1:" in run.stderr and "(3 cameras, a stream each)" in run.stderr


# ---- in process: a stalled camera, the Host rule, the viewer limit --------------------------------------


def test_a_stalled_camera_shows_down_and_never_holds_up_the_others():
    stalling = StallingSource(stall_timeout=0.5)
    cameras = [Camera("ok0", SyntheticSource("synthetic:160x120", 160, 120, fps=15, realtime=True, seed=0)),
               Camera("ok1", SyntheticSource("synthetic:240x180", 240, 180, fps=15, realtime=True, seed=1)),
               Camera("stalls", stalling, backoff=(0.05, 0.2))]
    server = CamerasPreviewServer("127.0.0.1", 0, [c.name for c in cameras])
    server.attach(cameras)
    loop = MultiLoop(Detector(DEMO_MODEL), cameras, duration=20, stats_every=0, log=lambda m: None)
    server.set_stats(loop.live_stats)
    server.start()
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        port = server.port
        assert wait_until(lambda: get_json(port, "/camera/stalls/stats.json")["state"] == "down", 10)
        stalled = get_json(port, "/camera/stalls/stats.json")
        assert stalled["stalls"] >= 1 and stalled["frames_processed"] == 0
        snapshots = []  # the stalled camera's snapshot waits (up to 2 s) on its own thread only
        waiting = threading.Thread(target=lambda: snapshots.append(request(port, "/camera/stalls/snapshot.jpg")))
        with MjpegReader(port, "/camera/stalls/stream.mjpg") as viewer:
            assert viewer.status == 200
            waiting.start()
            t = time.monotonic()
            for name, size in (("ok0", (160, 120)), ("ok1", (240, 180))):
                assert [decode(p).shape[1::-1] for p in mjpeg_parts(port, f"/camera/{name}/stream.mjpg", 4)] == \
                    [size] * 4
            assert time.monotonic() - t < 2.5, "the others' streams waited for the stalled camera"
            waiting.join(5)
        assert snapshots and snapshots[0][0] == 503 and snapshots[0][2] == b"no frame yet\n"
        stats = get_json(port, "/stats.json")
        assert stats["per_camera"]["stalls"]["state"] == "down" and stats["cameras_up"] == 2
        assert [stats["per_camera"][n]["state"] for n in ("ok0", "ok1")] == ["up", "up"]
    finally:
        loop.stop("test over")
        stalling.release.set()
        runner.join(10)
    assert not runner.is_alive()
    assert server.connections == 0 or wait_until(lambda: server.connections == 0, 3)


class Feeders:
    """Writes frames into cameras' preview handles from one thread, like the loop (about 50 fps)."""

    def __init__(self, sinks: list[CameraPreview], sizes) -> None:
        self.sinks, self.images = sinks, [np.full((h, w, 3), 60 + 40 * i, np.uint8) for i, (w, h) in enumerate(sizes)]
        self.frames = [Frame.of(image) for image in self.images]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for sink, frame, image in zip(self.sinks, self.frames, self.images):
                sink.write(frame, None, image if sink.wants_frame() else None)

    def __enter__(self) -> "Feeders":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class _Named:
    def __init__(self, name: str) -> None:
        self.name, self.sinks = name, []


def test_host_rule_token_and_viewer_limit_hold_per_camera_route():
    names = ["a", "cam.1_x-Y"]  # every character the cameras file allows
    server = CamerasPreviewServer("127.0.0.1", 0, names, max_viewers=1).start()
    try:
        feeders = Feeders(server.attach([_Named(n) for n in names]), [(64, 48), (80, 60)]).__enter__()
        port = server.port
        quoted = camera_path("cam.1_x-Y")
        assert quoted == "/camera/cam.1_x-Y/" and f'data-path="{quoted[1:]}"' in server.page.decode()
        for path in ("/camera/a/snapshot.jpg", "/camera/cam%2E1_x-Y/snapshot.jpg", f"{quoted}snapshot.jpg"):
            status, _, body = request(port, path, headers={"Host": f"localhost:{port}"})
            assert status == 200, path
        assert decode(request(port, "/camera/cam%2E1_x-Y/snapshot.jpg")[2]).shape == (60, 80, 3)
        for path in ("/camera/a/stream.mjpg", "/camera/a/snapshot.jpg", "/camera/a/stats.json", "/stats.json", "/"):
            status, headers, body = request(port, path, headers={"Host": "evil.example"})
            assert status == 403 and b"host not allowed" in body and headers.get("Connection") == "close", path
        with MjpegReader(port, "/camera/a/stream.mjpg") as first:  # one viewer per camera here
            assert first.status == 200 and decode(first.part()).shape == (48, 64, 3)
            status, _, body = request(port, "/camera/a/stream.mjpg")
            assert status == 503 and body == b"too many viewers\n"
            assert len(mjpeg_parts(port, f"{quoted}stream.mjpg", 2)) == 2  # another camera's limit is its own
            assert get_json(port, "/stats.json")["per_camera"]["a"]["viewers"] == 1
        feeders.__exit__()
    finally:
        server.close()
    server = CamerasPreviewServer("127.0.0.1", 0, names, token="t0k").start()
    try:
        assert request(server.port, "/camera/a/stats.json", headers={"Host": "evil.example"})[0] == 403
        status, _, body = request(server.port, "/camera/a/stats.json?token=t0k", headers={"Host": "evil.example"})
        assert status == 200 and json.loads(body)["state"] == "starting"
    finally:
        server.close()
    with pytest.raises(EdgeError, match="unique"):
        CamerasPreviewServer("127.0.0.1", 0, ["a", "a"])


# ---- memory: N cameras' preview and metrics sinks --------------------------------------------------------


def test_preview_and_metrics_sinks_of_three_cameras_allocate_nothing_per_frame():
    pytest.importorskip("prometheus_client")
    import edge.live.frame_exchange as exchange_module
    import edge.live.metrics as metrics_module
    import edge.live.preview_cameras as preview_module
    from edge.contract.detections import Detections
    from edge.live.metrics import MetricsServer, MetricsSink

    sizes = [(320, 240), (160, 120), (200, 150)]
    cameras = [_Named(f"c{i}") for i in range(3)]
    preview = CamerasPreviewServer("127.0.0.1", 0, [c.name for c in cameras], snapshot_interval=0.0)
    previews = preview.attach(cameras)
    metrics = MetricsSink(MetricsServer("127.0.0.1", 0), invoke_seconds=lambda: 0.01, cameras=cameras)
    per_camera = [camera.sinks[-1] for camera in cameras]
    for sink, (w, h) in zip(previews, sizes):
        sink.presize((h, w, 3))
    images = [np.zeros((h, w, 3), np.uint8) for w, h in sizes]
    frames = [Frame.of(image) for image in images]
    detections = Detections(10, ["circle", "square", "triangle"])
    detections.count = 3
    detections._class_ids[:3] = [0, 2, 9]
    buffers = [id(sink.exchange._frame) for sink in previews]

    def one_frame(i: int) -> None:
        k = i % 3
        images[k][0, 0, 0] = i % 256
        assert previews[k].wants_frame()
        previews[k].write(frames[k], detections, images[k])
        per_camera[k].write(frames[k], detections, images[k])
        metrics.write(frames[k], detections, images[k])

    try:
        for i in range(900):  # every counter past 256, so its value is an int object of its own from now on
            one_frame(i)
        ours = [tracemalloc.Filter(True, module.__file__) for module in (exchange_module, metrics_module, preview_module)]
        tracemalloc.start()
        for i in range(300):
            one_frame(i)
        first = tracemalloc.take_snapshot().filter_traces(ours)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3000):
            one_frame(i)
        after, peak = tracemalloc.get_traced_memory()
        grown = [d for d in tracemalloc.take_snapshot().filter_traces(ours).compare_to(first, "lineno")
                 if d.size_diff > 0 or d.count_diff > 0]
        tracemalloc.stop()
        print(f"3 cameras, 3000 frames: {after - before} B more traced, peak {peak - before} B above the start")
        # What stays is the counters' current int objects (a few per exchange), replaced, never added to.
        assert not grown, f"grew over 3000 frames: {grown[:3]}"
        assert after - before < 2048 and peak - before < min(image.nbytes for image in images) // 4
        assert [id(sink.exchange._frame) for sink in previews] == buffers, "a frame buffer was reallocated"
        assert all(sink.exchange.kept + sink.exchange.offered >= 1000 for sink in previews)
        assert [sink.ring_bytes for sink in previews] == [image.nbytes for image in images]
        from prometheus_client.parser import text_string_to_metric_families

        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}
    finally:
        metrics.close()
        preview.close()
    assert samples[("edgekit_invoke_seconds_count", ())] == 4200
    for camera in cameras:
        assert samples[("edgekit_detections_total", (("camera", camera.name), ("label", "triangle")))] == 1400
        assert samples[("edgekit_detections_total", (("camera", camera.name), ("label", "other")))] == 1400
