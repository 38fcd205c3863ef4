"""The measuring itself: known leaks and known transients must be read back with the right bytes."""

from __future__ import annotations

import mmap
import tracemalloc

import cv2
import numpy as np
import pytest

from edge.bench.memprofile import FrameMemoryProbe, measure_step
from edge.memory import RssSampler, rss_slope

KB = 1024
MB = 1024 * 1024


def test_empty_step_is_the_floor_and_reads_zero():
    profile = measure_step(lambda: None, 2000)
    assert profile.frames == 2000
    assert int(profile.growth.sum()) == 0
    assert int(profile.transient.max()) == 0
    # The probe's own cost per frame is a few small ints, not a buffer.
    assert 0 <= profile.floor_transient <= 256
    assert profile.floor_growth == 0


def test_leaking_step_is_reported_as_growth_of_its_size():
    kept = []
    profile = measure_step(lambda: kept.append(bytes(KB)), 1000)
    # A 1 KB bytes object is 1 KB + a 33 B header; the list adds a pointer (and a rare resize).
    assert 1024 <= profile.growth_per_frame <= 1024 + 64
    assert profile.growth_trend == pytest.approx(profile.growth_per_frame, rel=0.02)
    assert np.count_nonzero(profile.growth) == 1000
    # Nothing is allocated and freed within the frame, apart from list resizes.
    assert profile.transient_median < 64
    assert len(kept) == 1000 + 30  # measured frames + warm-up


def test_allocate_and_free_1mb_is_transient_not_growth():
    def step():
        buffer = np.ones(MB, np.uint8)
        del buffer

    profile = measure_step(step, 200)
    assert int(profile.growth.sum()) == 0
    assert MB <= profile.transient_median <= MB + 512
    assert MB <= int(profile.transient.min())


def test_begin_end_brackets_code_that_is_not_one_call():
    probe = FrameMemoryProbe(50)
    with probe:
        kept = []
        for i in range(50):
            probe.begin()
            if i % 2:
                kept.append(np.zeros(4 * KB, np.uint8))
            probe.end()
        profile = probe.profile()
    assert not tracemalloc.is_tracing()  # the probe stops what it started
    assert profile.frames == 50
    odd = profile.growth[1::2]
    assert np.all(odd >= 4 * KB) and np.all(odd <= 4 * KB + 256)
    assert np.all(profile.growth[0::2] == 0)


def test_probe_capacity_bounds_recording():
    profile = measure_step(lambda: None, 10)
    assert profile.frames == 10
    probe = FrameMemoryProbe(5, calibrate=False)
    with probe:
        probe.run(lambda: None, 20)
    assert probe.count == 5


def test_rss_slope_recovers_a_known_slope():
    frames = np.arange(0, 50_000, 10)
    rng = np.random.default_rng(0)
    rss = 150_000_000 + 7 * frames + rng.integers(-4096, 4096, frames.size)
    assert rss_slope(frames, rss) == pytest.approx(7.0, abs=0.1)
    assert rss_slope(frames[:1], rss[:1]) == 0.0


def test_rss_sampler_sees_a_real_leak():
    # Anonymous mmaps, written: always new resident pages (malloc could reuse pages freed earlier).
    kept = []
    sampler = RssSampler(200, every=5)
    for i in range(200):
        block = mmap.mmap(-1, 256 * KB)
        np.frombuffer(block, np.uint8).fill(1)
        kept.append(block)
        sampler.maybe_sample(i)
    assert sampler.count == 40
    assert sampler.slope() == pytest.approx(256 * KB, rel=0.15)
    summary = sampler.summary()
    assert summary["max_bytes"] >= summary["first_bytes"] + 150 * 256 * KB


@pytest.fixture(scope="module")
def traffic_frames(traffic_video):
    capture = cv2.VideoCapture(str(traffic_video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 20
    return frames


def _cycling(frames):
    state = {"i": 0}
    n = len(frames)

    def next_frame():
        state["i"] = (state["i"] + 1) % n  # small ints are cached: no allocation
        return frames[state["i"]]

    return next_frame


def test_detector_pipeline_reads_zero_growth_and_small_transient(ssd_model_path, coco_labels_path, traffic_frames):
    from edge.detector.detector import Detector

    detector = Detector(ssd_model_path, labels=coco_labels_path, score_threshold=0.5, num_threads=2)
    next_frame = _cycling(traffic_frames)
    profile = measure_step(lambda: detector.detect(next_frame()), 60, warmup=30)
    assert profile.growth_per_frame == 0.0
    assert profile.transient_median < 16 * KB
    assert detector.detections.count > 0  # it really detected cars


def test_baseline_pipeline_reads_frame_sized_transients(ssd_model_path, coco_labels_path, traffic_frames):
    from edge.bench.baseline import BaselinePipeline
    from edge.detector.detector import Detector

    detector = Detector(ssd_model_path, labels=coco_labels_path, num_threads=2)
    baseline = BaselinePipeline(ssd_model_path, output_indices={r: o.index for r, o in detector.outputs.items()},
                                num_threads=2)
    next_frame = _cycling(traffic_frames)
    results = []
    profile = measure_step(lambda: results.append(len(baseline.detect(next_frame()))), 30, warmup=5)
    # cvtColor of a 960x540 frame (1.5 MB) + the 300x300 resize (270 KB), allocated and freed.
    assert profile.transient_median > 500 * KB
    assert profile.transient_median > 960 * 540 * 3
    assert max(results) > 0


def test_rss_slope_per_segment_ignores_jumps_between_segments():
    # Two rounds with a 1 MB jump between them (another pipeline ran) and a true 3 B/frame leak.
    frames = np.concatenate([np.arange(0, 1000, 10), np.arange(1000, 2000, 10)])
    segments = (frames >= 1000).astype(np.int64)
    rss = 100_000_000 + 3 * frames + segments * MB
    assert rss_slope(frames, rss, segments) == pytest.approx(3.0, abs=1e-6)
    assert rss_slope(frames, rss) > 500  # one line through the jump blames the pipeline for it


def test_growth_trend_separates_a_leak_from_a_bounded_difference_at_the_end():
    from edge.bench.memprofile import MemoryProfile

    empty = np.zeros(0, np.int64)
    # A capture thread holding 450 B more at the last frame's end than at the first frame's start.
    bounded = np.zeros(300, np.int64)
    bounded[-1] = 450
    profile = MemoryProfile(bounded, np.zeros(300, np.int64), empty, empty)
    assert profile.growth_per_frame == 1.5
    assert abs(profile.growth_trend) < 0.05
    leak = np.full(300, 48, np.int64)
    assert MemoryProfile(leak, leak * 0, empty, empty).growth_trend == pytest.approx(48.0)
