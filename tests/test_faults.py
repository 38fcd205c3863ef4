"""The live loop survives faults: a stalled stream, a source that raises, a stream that disappears and
comes back, corrupt frames, a frame size change mid-stream, and SIGTERM/SIGINT mid-run.

Real OpenCV, real files, a real local HTTP MJPEG server on 127.0.0.1, and the real fixture model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import MjpegServer, PortHold

from edge.detector.detector import Detector
from edge.live.loop import LiveLoop
from edge.live.sinks import JsonLinesSink
from edge.live.video import VideoSink
from edge.live.sources import Source, open_source
from edge.live.synthetic import SyntheticSource

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector(ssd_model_path, coco_labels_path):
    return Detector(ssd_model_path, labels=coco_labels_path, num_threads=1)


def _loop(detector, source, sinks=(), **kwargs):
    messages = []
    kwargs.setdefault("duration", 40)  # a bound, never the expected way out
    loop = LiveLoop(detector, source, sinks, stats_every=0, log=messages.append, **kwargs)
    return loop, messages


@pytest.mark.slow
def test_stalled_stream_is_reopened(detector):
    server = MjpegServer(stall_after=5)
    try:
        source = open_source(server.url, stall_timeout=1.0)
        loop, messages = _loop(detector, source, max_frames=30)
        summary = loop.run()
    finally:
        server.close()
    assert summary.stop_reason == "max-frames" and summary.frames_processed == 30
    assert summary.stalls + summary.read_errors >= 1 and summary.reconnects >= 1
    assert server.connections >= 2
    assert any("stalled" in m or "Stream" in m or "ended" in m for m in messages)
    assert any("reconnected" in m for m in messages)


@pytest.mark.slow
def test_stream_that_disappears_and_comes_back(detector):
    server = MjpegServer()
    port = server.port
    source = open_source(server.url, stall_timeout=1.0)
    loop, messages = _loop(detector, source, max_frames=60)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", loop.run()))
    thread.start()
    deadline = time.monotonic() + 20
    while loop.processed < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.close()  # the camera goes away...
    hold = PortHold(port)  # (its port refuses connections meanwhile, and no other socket gets it)
    down_at = loop.processed
    time.sleep(2.5)
    assert loop.processed - down_at <= 3, "frames kept coming while the server was down"
    server = MjpegServer(port=port)  # ...and comes back on the same address
    hold.release()
    try:
        thread.join(40)
    finally:
        server.close()
    summary = result["summary"]
    assert summary.stop_reason == "max-frames" and summary.frames_processed == 60
    assert summary.reconnects >= 1
    assert any("reconnect failed" in m for m in messages), "the loop says it is retrying while the source is gone"


class FlakySource(Source):
    """A real source whose read raises every ``every``-th call (a driver error, a USB hiccup)."""

    def __init__(self, every: int = 7, frames: int = 60):
        super().__init__("flaky")
        self.inner = SyntheticSource("synthetic", 160, 120, max_frames=frames)
        self.every, self.calls, self.reopened = every, 0, 0

    def _read(self):
        self.calls += 1
        if self.calls % self.every == 0:
            raise RuntimeError("VIDIOC_DQBUF: No such device")
        return self.inner.read()

    def reopen(self):
        self.reopened += 1


@pytest.mark.slow
def test_source_that_raises_on_read(detector):
    source = FlakySource(every=7, frames=60)
    loop, messages = _loop(detector, source)
    loop.capture._backoff = (0.01, 0.05)
    summary = loop.run()
    assert summary.stop_reason == "end of source" and summary.frames_processed == 60
    assert summary.read_errors == source.calls // 7 >= 8 and source.reopened == summary.read_errors
    assert any("VIDIOC_DQBUF" in m for m in messages)


class BadFrameSource(Source):
    """Every 5th frame is unusable (float pixels, two channels, empty): the loop skips and counts them."""

    def __init__(self):
        super().__init__("bad")
        self.inner = SyntheticSource("synthetic", 160, 120, max_frames=30)
        self.bad = [np.zeros((120, 160, 3), np.float32), np.zeros((120, 160, 2), np.uint8),
                    np.zeros((0, 0, 3), np.uint8)]

    def _read(self):
        frame = self.inner.read()
        if frame is not None and self.inner.frames_read % 5 == 0:
            return self.bad[self.inner.frames_read // 5 % 3]
        return frame


def test_corrupt_frames_are_skipped(detector, tmp_path):
    loop, messages = _loop(detector, BadFrameSource(), [JsonLinesSink(tmp_path / "out.jsonl")])
    summary = loop.run()
    assert summary.bad_frames == 6 and summary.frames_processed == 24
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 24
    assert any("skipped" in m for m in messages)


def test_corrupt_video_file_and_unreadable_image(detector, tmp_path):
    # An MJPEG .avi with one frame's JPEG data overwritten by garbage: FFmpeg reports and moves on.
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    middle = starts[10]
    data[middle + 600:middle + 2600] = bytes(rng.integers(0, 256, 2000, dtype=np.uint8))
    path.write_bytes(bytes(data))
    loop, _ = _loop(detector, open_source(str(path)))
    summary = loop.run()
    assert summary.stop_reason == "end of source" and summary.frames_processed >= 18
    # An image folder with a truncated JPEG among good ones.
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((120, 160, 3), 60 * i, np.uint8))
    (folder / "2.jpg").write_bytes((folder / "2.jpg").read_bytes()[:40])
    loop, _ = _loop(detector, open_source(str(folder)))
    summary = loop.run()
    assert summary.frames_processed == 3 and summary.bad_frames == 1 and summary.stop_reason == "end of source"


def test_frame_size_change_mid_stream(detector, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = [(320, 240)] * 3 + [(640, 360)] * 3 + [(200, 300)] * 3
    for i, (w, h) in enumerate(sizes):
        image = np.full((h, w, 3), 90, np.uint8)
        cv2.rectangle(image, (w // 4, h // 4), (3 * w // 4, 3 * h // 4), (30, 30, 220), -1)
        cv2.imwrite(str(folder / f"{i:02d}.png"), image)
    video = tmp_path / "out.mp4"
    sinks = [JsonLinesSink(tmp_path / "out.jsonl"), VideoSink(video, 10)]
    loop, _ = _loop(detector, open_source(str(folder)), sinks)
    summary = loop.run()
    assert summary.frames_processed == 9 and summary.bad_frames == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["width"], r["height"]) for r in lines] == sizes
    for record in lines:  # boxes are in each frame's own pixels
        for det in record["detections"]:
            assert det["box"][2] <= record["width"] and det["box"][3] <= record["height"]
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 9 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 320


@pytest.mark.slow
def test_stuck_pipe_does_not_hang_the_run(detector, tmp_path):
    """A FIFO whose writer sends a few frames and then goes silent without closing: the read blocks
    in the kernel. The loop reports the stall, keeps running, and ends on time."""
    fifo = tmp_path / "camera.y4m"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer():  # raw I420 frames in a YUV4MPEG2 stream, as `ffmpeg -f yuv4mpegpipe` would send
        with open(fifo, "wb") as pipe:
            pipe.write(b"YUV4MPEG2 W160 H120 F10:1 Ip A1:1 C420jpeg\n")
            for i in range(8):
                pipe.write(b"FRAME\n" + bytes([i * 30 % 256]) * (160 * 120 * 3 // 2))
                pipe.flush()
            release.wait(30)  # silent, but open

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        source = open_source(str(fifo), stall_timeout=1.0)
        loop, messages = _loop(detector, source, duration=4)
        summary = loop.run()
    finally:
        release.set()
        _unblock_fifo_readers(fifo, loop.capture)
    assert summary.stop_reason == "duration" and summary.frames_processed == 8
    assert summary.stalls >= 1 and any("stalled" in m for m in messages)


def _unblock_fifo_readers(fifo: Path, capture) -> None:
    """Readers left blocked opening the FIFO hold OpenCV's FFmpeg open lock, which would block every
    later VideoCapture in this process: give each a writer that closes at once, so their open fails."""
    threads = [t for t in [capture._thread, *capture._abandoned] if t is not None]
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waiting right now
            pass
        time.sleep(0.05)
    assert not any(t.is_alive() for t in threads), "a capture thread is still stuck in the FIFO"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_closes_sinks_cleanly(ssd_model_path, coco_labels_path, tmp_path, sig):
    out_json, out_video = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "edge.cli", "run", "--model", str(ssd_model_path), "--labels",
           str(coco_labels_path), "--source", "synthetic:320x240", "--json", str(out_json), "--video",
           str(out_video), "--threads", "1", "--duration", "60"]
    proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out_json.exists() and len(out_json.read_text().splitlines()) >= 15:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the run did not produce 15 frames in 30 s")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert f"({signal.Signals(sig).name})" in stderr and "latency ms" in stderr and "RSS" in stderr
    records = [json.loads(line) for line in out_json.read_text().splitlines()]  # every line is whole JSON
    assert len(records) >= 15 and [r["frame"] for r in records] == list(range(len(records)))
    cap = cv2.VideoCapture(str(out_video))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == len(records), "the video holds exactly the processed frames and is playable"
    assert not list(tmp_path.glob(".*part*")), "no temporary file left behind"


def test_a_stream_that_comes_up_late_is_waited_for(tmp_path):
    """--wait-for-source: the stream's port answers nothing for ~2 s, then serves; the run waits with a
    line per try instead of exiting, then processes frames."""
    hold = PortHold()  # refuses connections until the server takes the port over
    port = hold.port
    # The server comes up 2 s after the run started *and* once the run has said it waits: a fixed
    # timer alone raced the child's start-up (over 2 s on a loaded machine, e.g. beside another xdist
    # worker), so the stream could be up before the run first looked.
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--source", f"http://127.0.0.1:{port}/s.mjpg",
                             "--wait-for-source", "30", "--max-frames", "5", "--stats-every", "0", "--threads", "1"],
                            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    err_lines: list[str] = []
    waiting = threading.Event()

    def read_stderr():
        for line in proc.stderr:
            err_lines.append(line)
            if "waiting for the source" in line:
                waiting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    server = None
    try:
        deadline = started + 60
        while not waiting.wait(0.05) and proc.poll() is None and time.monotonic() < deadline:
            pass
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
        server = MjpegServer(port=port)
        hold.release()
        stdout = proc.stdout.read()
        proc.wait(timeout=90)
        reader.join(10)
    finally:
        hold.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None:
            server.close()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(err_lines))
    assert result.returncode == 0, result.stderr
    assert "waiting for the source" in result.stderr and "5 processed" in result.stderr
    quick = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--source", f"http://127.0.0.1:{port}/s.mjpg",
                            "--max-frames", "1"], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert quick.returncode == 2 and "--wait-for-source" in quick.stderr.strip().splitlines()[-1]
