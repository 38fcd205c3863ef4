"""Several detectors over several cameras (``edge run --config --detectors K``): every detector takes
turns, each camera still gets its share, a camera's frames stay in order and under its own name on a
shared JSON lines file, a detector that fails stops the run with its error (no hang), and the CLI
checks the option. Real interpreters (the bundled demo model), real capture threads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.detector.detector import Detector
from edge.errors import EdgeError
from edge.live.cameras import Camera, CameraSink, SerializedSink
from edge.live.multiloop import MultiLoop
from edge.live.sinks import JsonLinesSink
from edge.live.synthetic import SyntheticSource
from edge.models import DEMO_MODEL
from edge.provenance import usable_cores

PROJECT = Path(__file__).resolve().parents[1]


def _camera(name: str, seed: int, size=(320, 240)) -> Camera:
    return Camera(name, SyntheticSource(f"synthetic:{size[0]}x{size[1]}", *size, fps=30.0, seed=seed))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_detectors_share_four_cameras_fairly_in_order_and_under_their_names(tmp_path):
    """Four file-like synthetic cameras (none loses a frame) keep two detectors saturated: both
    detectors take turns, each camera gets 1/4 of the frames within 10%, and on the one shared JSON
    lines file every camera's frames are 0, 1, 2, ... under its own name (a line tagged by the other
    detector's camera would break a sequence)."""
    detectors = [Detector(DEMO_MODEL, num_threads=1) for _ in range(2)]
    shared = JsonLinesSink(tmp_path / "all.jsonl")
    cameras = [_camera(f"cam{i}", i, size) for i, size in enumerate([(320, 240), (160, 120), (640, 360), (320, 240)])]
    for camera in cameras:
        camera.sinks.append(CameraSink(shared, camera.name))
    loop = MultiLoop(detectors, cameras, max_frames=400, stats_every=0)
    assert all(isinstance(s, SerializedSink) for c in cameras for s in c._all_sinks), "the shared sink is locked"
    summary = loop.run()
    shared.close()

    assert summary.frames_processed == 400 and sum(summary.detector_frames) == 400
    assert min(summary.detector_frames) >= 0.25 * 400, summary.detector_frames
    for cam in summary.cameras:
        assert abs(cam.share - 0.25) <= 0.1 * 0.25, [(c.name, c.share) for c in summary.cameras]
    by_camera: dict[str, list[int]] = {}
    for record in _records(tmp_path / "all.jsonl"):
        by_camera.setdefault(record["camera"], []).append(record["frame"])
    for cam in summary.cameras:
        assert by_camera[cam.name] == list(range(cam.frames_processed)), cam.name
    assert "2 detectors: " in summary.format()


def test_with_one_detector_nothing_is_wrapped(tmp_path):
    shared = JsonLinesSink(tmp_path / "all.jsonl")
    cameras = [_camera("a", 0), _camera("b", 1)]
    for camera in cameras:
        camera.sinks.append(CameraSink(shared, camera.name))
    loop = MultiLoop(Detector(DEMO_MODEL), cameras, max_frames=20, stats_every=0)
    assert not any(isinstance(s, SerializedSink) for c in cameras for s in c._all_sinks)
    summary = loop.run()
    shared.close()
    assert summary.frames_processed == 20 and summary.detector_frames == [20]
    assert "detectors" not in summary.format()


class FailingDetector(Detector):
    """A real detector whose postprocess raises on its 30th frame (an engine error mid-run)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def postprocess(self):
        self.calls += 1
        if self.calls == 30:
            raise RuntimeError("engine went away")
        return super().postprocess()


def test_a_detector_that_raises_on_its_thread_stops_the_run_with_its_error():
    cameras = [_camera("a", 0), _camera("b", 1), _camera("c", 2)]
    loop = MultiLoop([Detector(DEMO_MODEL, num_threads=1), FailingDetector(DEMO_MODEL, num_threads=1)], cameras,
                     duration=60, stats_every=0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="engine went away"):
        loop.run()
    assert time.monotonic() - started < 30, "the other detector and the captures stopped"
    assert all(not c.capture._thread.is_alive() for c in cameras if c.capture._thread is not None)


def test_more_detectors_than_cameras_or_different_models_are_refused():
    with pytest.raises(EdgeError, match="3 detectors for 2 cameras"):
        MultiLoop([Detector(DEMO_MODEL, num_threads=1) for _ in range(3)], [_camera("a", 0), _camera("b", 1)])


def _edge(*args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_detectors_option(tmp_path):
    config = tmp_path / "cameras.json"
    config.write_text(json.dumps({"cameras": [{"name": "door", "source": "synthetic:320x240"},
                                              {"name": "road", "source": "synthetic:640x480"}]}))
    out = tmp_path / "out.jsonl"
    result = _edge("run", "--config", config, "--detectors", "2", "--threads", "auto", "--max-frames", "120",
                   "--json", out, "--stats-every", "0")
    assert result.returncode == 0, result.stderr
    threads = max(1, usable_cores() // 2)  # --threads auto shares the cores out
    assert f"edge run: detectors: 2, {threads} interpreter thread{'s' if threads != 1 else ''} each" in \
        result.stderr, result.stderr
    frames = [int(n) for n in result.stderr.split("2 detectors: ")[1].splitlines()[0].replace(" frames", "").split(",")]
    assert sum(frames) == 120 and min(frames) > 0, result.stderr
    records = _records(out)
    for name in ("door", "road"):
        assert [r["frame"] for r in records if r["camera"] == name] == list(range(sum(r["camera"] == name
                                                                                      for r in records)))
    for args, words in [(["--config", config, "--detectors", "3"], "--detectors 3: more than the 2 cameras"),
                        (["--detectors", "2", "--capture", "inline"], "drop --capture inline"),
                        (["--config", config, "--detectors", "0"], "--detectors")]:
        result = _edge("run", *args, "--max-frames", "1")
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and words in last and "Traceback" not in result.stderr, result.stderr
