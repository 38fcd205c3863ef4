"""``edge.stream``: the Python iterator over a live source, with edge run's capture thread and memory."""

from __future__ import annotations

import threading
import tracemalloc

import edge
from edge.detector.detector import Detector
from edge.live.synthetic import SyntheticSource
from edge.models import DEMO_MODEL


def test_stream_yields_reused_frames_and_detections_and_stops_its_thread():
    before = threading.active_count()
    seen, boxes, ids = [], 0, set()
    for frame, detections in edge.stream("synthetic", DEMO_MODEL, max_frames=40):
        seen.append(frame.seq)
        boxes += detections.count
        ids.add(id(detections))
    assert seen == list(range(40)) and boxes > 0
    assert len(ids) == 1, "one preallocated Detections, refilled every step (copy() to keep one)"
    assert threading.active_count() == before, "the capture thread ends with the loop"


def test_breaking_out_closes_the_source_and_steps_allocate_nothing_frame_sized():
    detector = Detector(DEMO_MODEL)
    source = SyntheticSource("synthetic", 640, 480)
    steps = edge.stream(source, detector)
    for _ in range(60):  # warm-up: caches, the ring, the resize buffers
        next(steps)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peak = 0
    for _ in range(200):
        next(steps)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
    growth = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    steps.close()
    assert growth < 4096, f"net growth {growth} B over 200 steps"
    assert peak - base < 64 * 1024, "no frame-sized (900 KB) allocation in a step"


def test_a_finite_source_ends_the_iteration(tmp_path):
    frames = list(edge.stream(SyntheticSource("synthetic", 160, 120, max_frames=7), DEMO_MODEL))
    assert len(frames) == 7
