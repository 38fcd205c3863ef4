"""The seams the package is built on: one head classifier, one set of counters, one way to write files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.commands.inspect import inspect_model
from edge.contract.modelinfo import HEAD_POSTPROCESS
from edge.detector.detector import Detector
from edge.errors import EdgeError
from edge.files import atomic_write, atomic_write_json, check_paths, FILE, FOLDER, STREAM
from edge.live.loop import LiveLoop
from edge.live.sources import Source
from edge.models import DEMO_MODEL

PROJECT = Path(__file__).resolve().parents[1]


def test_inspect_and_run_classify_the_fixture_and_demo_models_alike(ssd_model_path):
    for model in (ssd_model_path, DEMO_MODEL):
        report = inspect_model(model)
        detector = Detector(model)
        assert detector.head == HEAD_POSTPROCESS
        assert report["head"] == "TFLite_Detection_PostProcess"
        assert [t["index"] for t in report["outputs"]] == [o.index for o in detector.backend.outputs]


class FloatFrames(Source):
    """Every third frame is float32, which the capture thread's resize refuses (a bad frame)."""

    def __init__(self, frames: int) -> None:
        super().__init__("float-frames")
        self.frames = frames
        self.good = np.full((48, 64, 3), 90, np.uint8)
        self.bad = np.zeros((48, 64, 3), np.float32)

    def _read(self):
        n = self.counters.frames_read
        if n >= self.frames:
            return None
        return self.bad if n % 3 == 2 else self.good


def test_a_frame_the_capture_thread_cannot_resize_is_counted_and_shown_in_the_stats():
    messages = []
    loop = LiveLoop(Detector(DEMO_MODEL), FloatFrames(30), [], stats_every=0, log=messages.append)
    summary = loop.run()
    stats = loop.live_stats()
    assert summary.bad_frames == 10 and stats["bad_frames"] == 10
    assert summary.frames_processed == 20 and summary.frames_read == 30 == stats["frames_read"]
    assert any("skipped" in m and "uint8" in m for m in messages), messages


def test_preview_stats_and_the_summary_count_the_same_frames(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((60, 80, 3), 60 * i, np.uint8))
    (tmp_path / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    from edge.live.sources import open_source

    loop = LiveLoop(Detector(DEMO_MODEL), open_source(str(tmp_path)), [], stats_every=0, log=lambda m: None)
    summary = loop.run()
    stats = loop.live_stats()  # what the preview page's /stats serves
    for key in ("frames_read", "bad_frames", "frames_dropped", "reconnects", "stalls"):
        assert stats[key] == getattr(summary, key), key
    assert (summary.frames_read, summary.bad_frames, summary.frames_processed) == (4, 1, 4)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask, images_dir):
    old = os.umask(umask)
    try:
        text = atomic_write(tmp_path / "a.txt", "x")
        data = atomic_write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for path in (text, data):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    out = tmp_path / "out"
    script = (f"import os, sys; os.umask({umask}); from edge.cli import main; "
              f"sys.exit(main(['detect', {str(images_dir / 'cat.bmp')!r}, '--out', {str(out)!r}]))")
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = sorted(out.iterdir())
    assert written and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in written)


def test_outputs_are_checked_against_inputs_and_each_other(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    link = tmp_path / "link.tflite"
    link.symlink_to(model)
    hard = tmp_path / "hard.tflite"
    os.link(model, hard)
    for target in (model, link, hard):
        with pytest.raises(EdgeError, match="would destroy it"):
            check_paths([("MODEL", model)], [("--json", target, STREAM)])
    with pytest.raises(EdgeError, match="same file"):
        check_paths([], [("--video", tmp_path / "x.mp4", FILE), ("--json", tmp_path / "x.mp4", STREAM)])
    with pytest.raises(EdgeError, match="is a folder"):
        check_paths([], [("-o", tmp_path, FILE)])
    with pytest.raises(EdgeError, match="does not exist"):
        check_paths([], [("-o", tmp_path / "missing" / "m.tflite", FILE)])
    with pytest.raises(EdgeError, match="is a file"):
        check_paths([], [("--out", model, FOLDER)])
    with pytest.raises(EdgeError, match="not a regular file"):
        check_paths([], [("-o", Path("/dev/null"), FILE)])
    check_paths([("MODEL", model)], [("--json", "-", STREAM), ("--json", Path("/dev/null"), STREAM),
                                     ("--out", tmp_path / "new" / "deeper", FOLDER)])
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs another user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(EdgeError, match="cannot write"):
            check_paths([], [("-o", ro / "m.tflite", FILE)])


def test_edge_package_imports_lazily():
    code = ("import sys, edge.contract.anchors, edge.contract.heads, edge.files, edge.errors; "
            "print(sorted(m for m in ('cv2', 'ai_edge_litert', 'edge.detector.detector') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
