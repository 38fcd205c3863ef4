"""Sources parsed by form, the capture ring (latest-frame-wins vs lossless) and the stage timers.
No model here: these are fast."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detector.buffer import BadFrameError
from edge.live.capture import Capture
from edge.live.synthetic import SyntheticSource
from edge.live.source_kinds import ImageFolderSource, VideoCaptureSource
from edge.live.sources import SkippedInput, SourceError, gstreamer_available, open_source
from edge.detector.stages import STAGES, StageTimes


def test_synthetic_forms_and_determinism():
    source = open_source("synthetic")
    frame = source.read()
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    assert source.read() is frame, "the synthetic source draws into one preallocated frame"
    small = open_source("synthetic:320x240@15")
    assert isinstance(small, SyntheticSource) and small.read().shape == (240, 320, 3) and small.fps == 15
    a, b, c = (open_source("synthetic:160x120", seed=s) for s in (7, 7, 8))
    for _ in range(5):
        fa, fb, fc = a.read(), b.read(), c.read()
    assert np.array_equal(fa, fb) and not np.array_equal(fa, fc)


def test_synthetic_shapes_match_the_training_look():
    source = SyntheticSource("synthetic", 320, 240, seed=3)
    sizes = []
    for _ in range(400):  # crosses several respawns
        source.read()
        assert 1 <= len(source.truth) <= 4
        for kind, x0, y0, x1, y1 in source.truth:
            assert 0 <= kind < 3 and 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
            sizes.append(max(x1 - x0, y1 - y0) / 240)
    assert min(sizes) >= 0.07 and max(sizes) <= 0.46


@pytest.mark.parametrize("spec, words", [
    ("synthetic:12x", "synthetic:WIDTHxHEIGHT"),
    ("/nonexistent/clip.mp4", "no such file"),
    ("", "empty"),
    ("picamera2:x", "picamera2:N"),
])
def test_bad_specs_are_one_clear_error(spec, words):
    with pytest.raises(SourceError, match=words):
        open_source(spec)


def test_gstreamer_pipeline_without_gstreamer_says_how_to_get_it():
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="GStreamer") as info:
        open_source("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv ! appsink")
    assert "apt install python3-opencv" in str(info.value)


def test_picamera2_missing_is_explained():
    pytest.importorskip("edge.live.sources")
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 is installed")
    except ImportError:
        pass
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source("picamera2")


def test_video_file_reads_in_place_and_loops(traffic_video):
    source = open_source(str(traffic_video))
    assert isinstance(source, VideoCaptureSource) and source.fps == 30 and not source.live
    first = source.read()
    frames = 1
    while source.read() is not None:
        frames += 1
    assert frames == 20
    looped = open_source(str(traffic_video), loop=True)
    buffers = {id(looped.read()) for _ in range(45)}
    assert looped.frames_read == 45 and len(buffers) == 1, "decoded into one reused array, rewound at the end"
    assert open_source(str(traffic_video), realtime=True).live
    assert first.shape == (540, 960, 3)


def _threads_added_by_reading(source) -> int:
    import os

    before = len(os.listdir("/proc/self/task"))
    assert source.read() is not None
    return len(os.listdir("/proc/self/task")) - before


@pytest.mark.skipif(not hasattr(cv2, "CAP_PROP_N_THREADS"), reason="this OpenCV has no CAP_PROP_N_THREADS")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc/self/task (Linux)")
def test_a_file_for_the_detector_is_decoded_on_the_capture_thread_alone(traffic_video):
    """No FFmpeg decoder threads beside the interpreter's for a file read at the detector's pace; a
    realtime (live) file keeps FFmpeg's own choice, since it must decode at the stream's rate."""
    spec = str(traffic_video)
    paced = open_source(spec)
    assert _threads_added_by_reading(paced) == 0
    paced.close()
    realtime = open_source(spec, realtime=True)
    assert realtime.live and realtime._decoder_threads() == 0
    realtime.close()
    ffmpeg_choice = VideoCaptureSource(spec, spec, cv2.CAP_FFMPEG, kind="file", live=False, decode_threads=0)
    assert _threads_added_by_reading(ffmpeg_choice) > 0  # the check above can fail
    ffmpeg_choice.close()


def test_image_folder_and_glob_skip_unreadable(tmp_path):
    for i, size in enumerate(((64, 48), (80, 60))):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((size[1], size[0], 3), 100 + i, np.uint8))
    (tmp_path / "2.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolderSource) and len(source.paths) == 3
    shapes = [source.read().shape, source.read().shape]
    assert shapes == [(48, 64, 3), (60, 80, 3)]
    with pytest.raises(SkippedInput, match="2.jpg"):
        source.read()
    assert source.read() is None and source.counters.bad_frames == 1
    assert len(open_source(str(tmp_path / "*.png")).paths) == 2
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "*.gif"))


def test_lossless_capture_hands_over_every_frame_in_order():
    source = SyntheticSource("synthetic", 64, 48, max_frames=50)
    capture = Capture(source).start()
    seqs = []
    while True:
        frame = capture.get(2.0)
        if frame is None:
            break
        seqs.append(frame.seq)
        capture.release(frame)
    capture.stop()
    assert capture.ended and seqs == list(range(50)) and capture.counters.frames_dropped == 0


def test_live_capture_keeps_the_newest_and_counts_drops():
    source = SyntheticSource("synthetic", 64, 48, fps=400, realtime=True, max_frames=120)
    capture = Capture(source).start()
    seqs = []
    while True:
        frame = capture.get(2.0)
        if frame is None:
            break
        seqs.append(frame.seq)
        time.sleep(0.02)  # a detector slower than the camera
        capture.release(frame)
    capture.stop()
    counters = capture.counters
    assert counters.frames_read == 120
    assert counters.frames_dropped > 0 and len(seqs) < 120
    assert counters.frames_dropped + len(seqs) == 120, "every frame is either processed or counted as dropped"
    assert seqs == sorted(seqs) and seqs[-1] == 119, "always the newest frame"


def test_stage_times_percentiles_ring_and_no_allocation():
    times = StageTimes(STAGES, capacity=100)
    for v in range(1, 101):
        times.record("invoke", v / 1000)
    p = times.percentiles("invoke")
    assert p["p50"] == pytest.approx(0.0505) and p["max"] == pytest.approx(0.1)
    assert p["p99"] == pytest.approx(0.09901)
    for _ in range(100):
        times.record("invoke", 1.0)  # the ring now holds only the recent window
    assert times.percentiles("invoke")["p50"] == 1.0 and times.count("invoke") == 200
    assert times.percentiles("sinks") == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            times.record("preprocess", i * 1e-6)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024


def test_capture_prepares_each_frame_on_its_thread_and_counts_the_ones_it_refuses():
    """``prepare`` runs on the capture thread into a per-slot buffer; a frame it refuses is counted
    bad (in the one counters object the stats and the summary read) and never published."""
    source = SyntheticSource("synthetic", 64, 48, max_frames=12)
    threads, previous = set(), {}

    def prepare(frame, dst):
        threads.add(threading.get_ident())
        return cv2.resize(frame, (16, 12), dst=dst)

    capture = Capture(source, prepare=prepare).start()
    seen = 0
    while (frame := capture.get(2.0)) is not None:
        resized = frame.resized
        np.testing.assert_array_equal(resized, cv2.resize(frame.image, (16, 12)))
        key = id(resized)
        previous.setdefault(frame.slot, key)
        assert previous[frame.slot] == key, "each slot keeps its one resized buffer"
        seen += 1
        capture.release(frame)
    capture.stop()
    assert seen == 12 and threading.get_ident() not in threads and len(threads) == 1

    def refuse(frame, dst):
        raise BadFrameError("frame must be a non-empty uint8 image array")

    messages = []
    refusing = Capture(SyntheticSource("synthetic", 64, 48, max_frames=3), prepare=refuse, log=messages.append).start()
    assert refusing.get(2.0) is None and refusing.ended
    refusing.stop()
    assert refusing.counters.bad_frames == 3 and refusing.counters.frames_read == 3
    assert any("skipped" in m for m in messages)
