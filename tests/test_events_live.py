"""Tracking and zone/line events in the live loop and through ``edge run``, on scripted scenes."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from edge.detector.detector import Detector
from edge.events.config import parse_config
from edge.events.stage import EventStage
from edge.live.loop import LiveLoop
from edge.live.sinks import JsonLinesSink, Sink
from edge.live.sources import Source
from edge.live.synthetic import draw_shape
from edge.models import DEMO_MODEL

PROJECT = Path(__file__).resolve().parents[1]


class CrossingSquares(Source):
    """Two squares on a plain background: one moves left to right across x = 160, the other right to
    left, at 4 px a frame, over ``frames`` frames (the bundled demo model finds squares)."""

    def __init__(self, frames: int = 80) -> None:
        super().__init__("crossing-squares")
        self.frames = frames
        self.frame_shape = (240, 320, 3)
        self._image = np.zeros(self.frame_shape, np.uint8)

    def _read(self):
        n = self.counters.frames_read
        if n >= self.frames:
            return None
        self._image[:] = (90, 110, 100)
        draw_shape(self._image, "square", 40 + 3 * n, 70, 50, (40, 40, 230))
        draw_shape(self._image, "square", 280 - 3 * n, 170, 50, (40, 200, 40))
        return self._image


CONFIG = {"min_frames": 3, "lines": [{"name": "middle", "points": [[160, 0], [160, 240]], "classes": ["square"]}],
          "zones": [{"name": "right", "points": [[200, 0], [320, 0], [320, 240], [200, 240]]}]}


def test_each_square_crosses_the_line_once_in_its_own_direction(tmp_path):
    detector = Detector(DEMO_MODEL, score_threshold=0.1)
    stage = EventStage(detector.labels, high_score=0.5, low_score=0.1,
                       config=parse_config(CONFIG, labels=detector.labels), detection_capacity=detector.detections.capacity)
    out = tmp_path / "events.jsonl"
    loop = LiveLoop(detector, CrossingSquares(), [JsonLinesSink(out)], stats_every=0, log=lambda m: None, events=stage)
    loop.run()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    events = [r for r in records if "event" in r]
    crossings = [(e["line"], e["direction"]) for e in events if e["event"] == "cross"]
    assert sorted(crossings) == [("middle", "in"), ("middle", "out")], events
    assert {e["event"] for e in events if e.get("zone") == "right"} == {"enter", "leave"}
    tracked = [d["track"] for r in records for d in r.get("detections", []) if d.get("track") is not None]
    assert len(set(tracked)) == 2, "two objects, two ids, kept across the scene"
    assert stage.zones.count("middle", "in") == 1 and stage.zones.count("middle", "out") == 1


class _Traced(Sink):
    def __init__(self, start: int, end: int) -> None:
        self.first, self.end, self.seen = start, end, 0
        self.before = self.after = self.peak = 0

    def write(self, frame, detections, annotated) -> None:
        self.seen += 1
        if self.seen == self.first:
            tracemalloc.start()
            self.before = tracemalloc.get_traced_memory()[0]
        elif self.seen == self.end:
            self.after, self.peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()


def test_tracking_keeps_the_loop_free_of_frame_sized_allocations():
    detector = Detector(DEMO_MODEL, score_threshold=0.1)
    stage = EventStage(detector.labels, config=parse_config(CONFIG, labels=detector.labels),
                       detection_capacity=detector.detections.capacity)
    traced = _Traced(100, 400)
    LiveLoop(detector, CrossingSquares(frames=420), [traced], stats_every=0, log=lambda m: None, events=stage).run()
    assert traced.after - traced.before < 4096, f"net growth {traced.after - traced.before} B over 300 frames"
    assert traced.peak - traced.before < 64 * 1024, "no frame-sized (230 KB) allocation while tracking"


def test_edge_run_with_zones_writes_tracks_and_events(tmp_path):
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps(CONFIG))
    out = tmp_path / "out.jsonl"
    result = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--source", "synthetic:320x240",
                             "--max-frames", "60", "--zones", zones, "--json", out, "--stats-every", "0"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tracking: confirmed after 3 frames" in result.stderr and "2 zones/lines" in result.stderr
    frames = [json.loads(line) for line in out.read_text().splitlines() if '"detections"' in line]
    assert len(frames) == 60 and all("track" in d for r in frames for d in r["detections"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lines": [{"name": "x", "points": [[0, 0]]}]}))
    bad_run = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--zones", bad, "--max-frames", "1"],
                             cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert bad_run.returncode == 2 and "bad.json" in bad_run.stderr.strip().splitlines()[-1]
