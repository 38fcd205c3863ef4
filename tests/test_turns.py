"""Several detectors on one source (`edge run --detectors K`): every frame once, results in frame order and
equal to one detector's, skipped inputs in their place, a clean end and stop, no hang on a failing sink,
flat memory, and the CLI and `edge bench` paths."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detector.detector import Detector
from edge.live.capture import RING_SLOTS
from edge.live.loop import LiveLoop
from edge.live.sinks import Sink, SinkError
from edge.live.sources import open_source
from edge.live.turns import FrameTurns, ring_slots

PROJECT = Path(__file__).resolve().parents[1]


class Recorder(Sink):
    """Every frame's sequence number and detections, and the skipped inputs, in the order they came."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, list]] = []
        self.order: list[str] = []

    def write(self, frame, detections, annotated) -> None:
        self.rows.append((frame.seq, detections.to_list()))
        self.order.append(f"frame {frame.seq}")

    def skipped(self, frame) -> None:
        self.order.append(f"skipped {Path(frame.name).name}")


@pytest.fixture(scope="module")
def detectors():
    first = Detector(num_threads=1)  # the bundled demo detector
    return [first, first.twin(1), first.twin(1)]


def run_loop(dets, spec: str, frames: int | None, sinks=(), **options):
    source = open_source(spec, loop=options.pop("loop", False), seed=3)
    loop = LiveLoop(dets, source, sinks, max_frames=frames, stats_every=0, **options)
    return loop, loop.run()


@pytest.mark.parametrize("count", [2, 3])
def test_frames_in_turn_come_out_in_order_and_equal_one_detectors(detectors, count):
    one, many = Recorder(), Recorder()
    run_loop(detectors[0], "synthetic", 240, [one])
    loop, summary = run_loop(detectors[:count], "synthetic", 240, [many])
    assert summary.frames_processed == 240 and summary.stop_reason == "max-frames"
    assert [seq for seq, _ in many.rows] == list(range(240)), "every frame once, in the order it was read"
    assert many.rows == one.rows, "the same detections as one detector, frame by frame"
    assert sum(r[1] != [] for r in many.rows) > 100, "the synthetic scene has objects the demo model finds"
    handed_by = loop.turns.handed_by
    assert sum(handed_by) == 240 and min(handed_by) >= 240 // count // 3, f"every detector took turns: {handed_by}"
    assert summary.frames_dropped == 0


def test_the_ring_has_room_for_two_frames_per_further_detector(detectors):
    assert ring_slots(1) == RING_SLOTS and ring_slots(3) == RING_SLOTS + 4
    loop, _ = run_loop(detectors[:3], "synthetic", 5)
    assert len(loop.capture._ring.frames) == RING_SLOTS + 4


def test_a_finite_folder_with_a_bad_image_ends_with_every_input_in_its_place(detectors, tmp_path):
    rng = np.random.default_rng(0)
    names = []
    for i in range(14):
        path = tmp_path / f"{i:02d}.png"
        if i == 6:
            path.write_bytes(b"not an image at all")
        else:
            cv2.imwrite(str(path), rng.integers(0, 255, (120 + i, 160, 3), np.uint8))
        names.append(path.name)
    sink = Recorder()
    _, summary = run_loop(detectors[:2], str(tmp_path), None, [sink])
    assert summary.stop_reason == "end of source"
    assert summary.frames_processed == 13
    assert sink.order.index("skipped 06.png") == 6, sink.order
    assert [s for s in sink.order if s.startswith("frame")] == sorted(
        (s for s in sink.order if s.startswith("frame")), key=lambda s: int(s.split()[1]))


def test_stop_from_another_thread_returns_with_everything_handed_on(detectors):
    sink = Recorder()
    source = open_source("synthetic", seed=3)
    loop = LiveLoop(detectors[:2], source, [sink], stats_every=0)
    threading.Timer(1.0, loop.stop).start()
    started = time.monotonic()
    summary = loop.run()
    assert time.monotonic() - started < 10
    assert summary.stop_reason == "stopped" and summary.frames_processed == len(sink.rows) > 20
    assert [seq for seq, _ in sink.rows] == sorted(seq for seq, _ in sink.rows)
    from edge.live.capture import HELD

    assert HELD not in loop.capture._ring.state, "every frame the detectors held went back to the ring"


class FailingSink(Sink):
    def __init__(self, after: int, error: BaseException) -> None:
        self.after, self.error, self.frames = after, error, 0

    def write(self, frame, detections, annotated) -> None:
        self.frames += 1
        if self.frames == self.after:
            raise self.error


def test_a_sink_that_can_no_longer_write_stops_the_run(detectors):
    loop, summary = run_loop(detectors[:2], "synthetic", None, [FailingSink(30, SinkError("disk full"))], loop=True)
    assert summary.stop_reason == "sink error" and str(loop.sink_error) == "disk full"
    assert summary.frames_processed == 30, "no frame goes to the sinks after one failed"


def test_a_bug_in_a_sink_ends_the_run_with_it_and_no_hang(detectors):
    source = open_source("synthetic", seed=3)
    loop = LiveLoop(detectors[:2], source, [FailingSink(10, ZeroDivisionError("sink bug"))], stats_every=0)
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError, match="sink bug"):
        loop.run()
    assert time.monotonic() - started < 15
    assert not loop.turns.running and loop.capture.ended is False


def test_turns_need_two_detectors_of_one_model(detectors, ssd_model_path):
    from edge.errors import EdgeError

    with pytest.raises(EdgeError, match="two or more"):
        FrameTurns(detectors[:1], None, lambda *a: None)
    with pytest.raises(EdgeError, match="different inputs"):
        FrameTurns([detectors[0], Detector(ssd_model_path, num_threads=1)], None, lambda *a: None)


def test_no_growth_over_hundreds_of_frames_in_turn(detectors):
    """tracemalloc over the steady state: the workers, the parking and the hand-on allocate nothing
    that outlives a frame."""
    from edge.bench.pipelines import OursTurnsLoop
    from edge.detector.stages import StageTimes

    loop = OursTurnsLoop(detectors[:2], open_source("synthetic", seed=3, loop=True))
    times = StageTimes(capacity=1024)
    try:
        assert loop.frames(150, times) == 150  # warm-up, untraced
        tracemalloc.start()
        try:
            assert loop.frames(100, times) == 100  # warm-up, traced: numpy's small-block caches fill
            before = tracemalloc.get_traced_memory()[0]
            assert loop.frames(600, times) == 600
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    finally:
        loop.close()
    assert grown < 2048, f"{grown} B more traced after 600 frames in turn"
    assert sum(loop.turns.handed_by) == 850


def test_edge_run_detectors_on_the_traffic_video(ssd_model_path, coco_labels_path, traffic_video, tmp_path):
    out = tmp_path / "traffic.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--model", str(ssd_model_path), "--labels", str(coco_labels_path),
         "--source", str(traffic_video), "--json", str(out), "--detectors", "2"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(20))
    assert sum(any(d["label"] == "car" for d in r["detections"]) for r in records) >= 15
    assert "detectors: 2 copies of the model, 1 interpreter thread each" in result.stderr
    assert "20 read, 20 processed, 0 dropped" in result.stderr


def test_edge_run_detectors_refuses_inline_capture_in_one_line():
    result = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--source", "synthetic", "--detectors", "2",
                             "--capture", "inline", "--max-frames", "5"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--detectors 2" in lines[0] and "--capture inline" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_edge_bench_with_detectors_reports_the_pair(detectors):
    from edge.bench.run import run_bench
    from edge.bench.settings import BenchSettings
    from edge.detector.detector import default_model_path

    settings = BenchSettings(models=[default_model_path()], source="synthetic", frames=120, warmup=20, mem_frames=400,
                             rounds=2, detectors=2, threads=1)
    report = run_bench(settings, progress=False)
    model = report["models"][0]
    assert model["runtime"]["detectors"] == 2 and model["runtime"]["threads"] == 1
    assert model["runtime"]["threads_auto"] is None
    ours = model["ours"]
    assert ours["frames"] == 120 and ours["fps"] > 0
    assert ours["memory"]["frames"] == 400
    # A traced "frame" is the span between two hand-ons, with the other worker anywhere in its own frame:
    # single spans read a few hundred bytes up or down; what counts is that they add up to nothing.
    assert ours["memory"]["growth_total_bytes"] < 4096
    assert ours["memory"]["transient_median_bytes"] < 4096
    assert model["rss"]["further_detectors_load_delta_bytes"] > 0


def test_the_tuner_tries_two_detectors_and_switches_layouts_without_losing_a_frame(detectors):
    from edge.detector.threads import Layout

    one = Recorder()
    run_loop(detectors[0], "synthetic", 400, [one])
    logs, sink = [], Recorder()
    first = Detector(num_threads=2)
    layouts = [Layout(1, 2), Layout(1, 1), Layout(2, 1)]
    loop = LiveLoop(first, open_source("synthetic", seed=3), [sink], max_frames=400, stats_every=0, log=logs.append,
                    thread_candidates=layouts, capture="thread")
    summary = loop.run()
    assert summary.frames_processed == 400 and summary.stop_reason == "max-frames"
    assert sink.rows == one.rows, "every frame once, in order, with one detector's detections, across the switches"
    chosen = [line for line in logs if line.startswith("threads auto:")]
    assert len(chosen) == 1 and "2 detectors x 1 thread" in chosen[0] and "measured end to end" in chosen[0], logs
    assert set(loop.tuner.medians) == set(layouts)
    assert loop.layout == loop.tuner.chosen and len(loop.detectors) == loop.tuner.chosen.detectors
    assert (loop.turns is not None) == (loop.tuner.chosen.detectors > 1)


@pytest.mark.parametrize("periods_ms, chosen", [
    ({"2": 10.0, "1": 14.0, "2x1": 9.7}, "2"),  # two detectors only 3% faster: not worth a second copy
    ({"2": 10.0, "1": 14.0, "2x1": 9.0}, "2x1"),  # 10% faster: taken
    ({"2": 10.0, "1": 10.2, "2x1": 12.0}, "1"),  # a tie between thread counts: the fewer threads
])
def test_the_tuner_takes_a_second_detector_only_for_a_clear_gain(monkeypatch, periods_ms, chosen):
    """The choice rule on given frame periods (a clock that advances by the period of the layout being tried)."""
    from edge.detector import threads
    from edge.detector.threads import Layout, ThreadTuner

    applied = []
    tuner = ThreadTuner(applied.append, [Layout(1, 2), Layout(1, 1), Layout(2, 1)])
    clock = [0.0]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    while not tuner.done:
        clock[0] += periods_ms[tuner.current.key] / 1e3
        tuner.frame_done()
    assert tuner.chosen.key == chosen and applied[-1] == tuner.chosen
    assert applied[:3] == [Layout(1, 2), Layout(1, 1), Layout(2, 1)]


def test_tracked_output_in_turn_is_one_detectors_frame_by_frame(ssd_model_path, coco_labels_path, traffic_video,
                                                                 tmp_path):
    """The tracker sees the frames in order, so track ids, zones and every row are those of one copy."""
    runs = {}
    for name, options in (("one", ["--detectors", "1", "--threads", "1"]), ("two", ["--detectors", "2"])):
        out = tmp_path / f"{name}.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "edge.cli", "run", "--model", str(ssd_model_path), "--labels", str(coco_labels_path),
             "--source", str(traffic_video), "--loop", "--max-frames", "120", "--track", "--json", str(out),
             "--stats-every", "0", *options], cwd=PROJECT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        runs[name] = [(r["frame"], r["detections"]) for r in map(json.loads, out.read_text().splitlines())]
    assert [frame for frame, _ in runs["two"]] == list(range(120))
    assert any(d.get("track") is not None for _, rows in runs["two"] for d in rows)
    assert runs["two"] == runs["one"]
