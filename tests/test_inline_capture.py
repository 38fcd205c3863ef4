"""Reading on the loop's thread (one usable core, a source that is not live): the rule that picks it,
the same frames and detections as the capture thread gives, skipped inputs in order, a failing
source given up as the thread gives it up, no per-frame allocation, and the CLI's choice and checks.
Real video decoding, real interpreters (the bundled demo model)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detector.detector import Detector
from edge.errors import EdgeError
from edge.live.capture import GIVE_UP_AFTER, Capture
from edge.live.inline_capture import CAPTURE_MODES, InlineCapture, choose_capture
from edge.live.loop import LiveLoop
from edge.live.sinks import JsonLinesSink
from edge.live.sources import Source, open_source
from edge.live.synthetic import SyntheticSource
from edge.models import DEMO_MODEL

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector():
    return Detector(DEMO_MODEL, num_threads=1)


def _video(path: Path, frames: int = 40) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, (320, 240))
    rng = np.random.default_rng(0)
    for i in range(frames):
        image = np.full((240, 320, 3), 40, np.uint8)
        x = 10 + 6 * i
        cv2.circle(image, (x % 300, 120), 30, (0, 200, 255), -1)
        cv2.rectangle(image, (200, 20), (260, 80), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        writer.write(image)
    writer.release()
    return path


def test_the_rule():
    files = SyntheticSource("synthetic:160x120", 160, 120)
    live = SyntheticSource("synthetic:160x120@30", 160, 120, fps=30, realtime=True)
    assert choose_capture(files, "auto", cores=1)[0] is InlineCapture
    assert choose_capture(files, "auto", cores=2)[0] is Capture
    assert choose_capture(live, "auto", cores=1)[0] is Capture  # a live source drops stale frames on its thread
    assert choose_capture(files, "thread", cores=1)[0] is Capture
    assert choose_capture(files, "inline", cores=4)[0] is InlineCapture
    with pytest.raises(EdgeError, match="--capture inline: --source synthetic:160x120@30 is live"):
        choose_capture(live, "inline")
    from edge.commands._args import CAPTURE_CHOICES

    assert tuple(CAPTURE_CHOICES) == CAPTURE_MODES


def _run(detector, source: Source, capture: str, out: Path) -> tuple[list[dict], object]:
    sink = JsonLinesSink(out)
    loop = LiveLoop(detector, source, [sink], stats_every=0, capture=capture)
    summary = loop.run()
    sink.close()
    return [json.loads(line) for line in out.read_text().splitlines()], summary


def test_same_frames_and_detections_as_the_capture_thread(detector, tmp_path):
    video = _video(tmp_path / "v.mp4")
    inline, s1 = _run(detector, open_source(str(video)), "inline", tmp_path / "inline.jsonl")
    thread, s2 = _run(detector, open_source(str(video)), "thread", tmp_path / "thread.jsonl")
    assert s1.stop_reason == s2.stop_reason == "end of source"
    assert [r["frame"] for r in inline] == list(range(40)) == [r["frame"] for r in thread]
    assert [r["detections"] for r in inline] == [r["detections"] for r in thread]
    assert sum(len(r["detections"]) for r in inline) > 0, "the frames had something to detect"


def test_edge_stream_reads_the_same_way(detector, tmp_path):
    import edge

    video = _video(tmp_path / "v.mp4", frames=12)
    seen = {}
    for mode in ("inline", "thread"):
        seen[mode] = [(frame.seq, detections.count, detections.boxes.round(1).tolist())
                      for frame, detections in edge.stream(str(video), detector, capture=mode)]
    assert [s for s, _, _ in seen["inline"]] == list(range(12)) and seen["inline"] == seen["thread"]


def test_a_folder_with_a_bad_image_skips_it_in_order(detector, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), np.full((120, 160, 3), 30 * i, np.uint8))
    (folder / "02.jpg").write_bytes(b"not a jpeg")
    records, summary = _run(detector, open_source(str(folder)), "inline", tmp_path / "out.jsonl")
    assert summary.stop_reason == "end of source"
    named = [(r.get("file") or r.get("name") or "", "skipped" in r or "error" in r) for r in records]
    assert len(records) == 5 and sum(flag for _, flag in named) == 1, records
    assert "02.jpg" in json.dumps(records[2]), records[2]


class BrokenFile(Source):
    """A file whose every read raises (a decoder error); it reopens fine."""

    live = False
    reconnectable = False

    def __init__(self) -> None:
        super().__init__("broken.mp4")
        self.frame_shape = (120, 160, 3)
        self.reopened = 0

    def _read(self):
        raise RuntimeError("moov atom not found")

    def reopen(self) -> None:
        self.reopened += 1


def test_a_source_that_keeps_failing_is_given_up(detector):
    source = BrokenFile()
    messages = []
    loop = LiveLoop(detector, source, [], stats_every=0, capture="inline", log=messages.append)
    summary = loop.run()
    assert summary.stop_reason == "source error" and isinstance(loop.capture.error, RuntimeError)
    assert source.counters.read_errors == GIVE_UP_AFTER and source.reopened == GIVE_UP_AFTER - 1
    assert any("giving up" in m for m in messages)


def test_the_inline_loop_allocates_nothing_per_frame(detector):
    source = SyntheticSource("synthetic:320x240", 320, 240, seed=3)
    capture = InlineCapture(source, prepare=detector.buffer.resize)
    capture.presize((240, 320, 3))
    detector.buffer.presize((240, 320, 3))

    def frames(n):
        for _ in range(n):
            frame = capture.get(1.0)
            detector.preprocess(frame)
            detector.invoke()
            detector.postprocess()
            capture.release(frame)

    frames(30)
    tracemalloc.start()
    try:
        frames(20)
        before = tracemalloc.get_traced_memory()[0]
        frames(300)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 2048, f"{after - before} B kept over 300 frames"


def _edge(*args, prefix=(), timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "edge.cli", *map(str, args)], cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset(1) to run on one core")
def test_cli_reads_inline_on_one_core_and_on_a_thread_otherwise():
    one = _edge("run", "--max-frames", "20", "--stats-every", "0", prefix=("taskset", "-c", "0"))
    assert one.returncode == 0, one.stderr
    assert "capture: on the loop's thread (one usable core and a source that is not live)" in one.stderr
    forced = _edge("run", "--max-frames", "20", "--stats-every", "0", "--capture", "thread",
                   prefix=("taskset", "-c", "0"))
    assert forced.returncode == 0 and "capture: on a thread of its own" in forced.stderr, forced.stderr


def test_cli_checks(tmp_path):
    result = _edge("run", "--capture", "inline", "--source", "synthetic:160x120@30", "--realtime", "--max-frames", "2")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("edge: error: --capture inline:") and "is live" in last
    config = tmp_path / "cameras.json"
    config.write_text(json.dumps({"cameras": [{"name": "a", "source": "synthetic"}]}))
    result = _edge("run", "--config", config, "--capture", "inline", "--max-frames", "2")
    assert result.returncode == 2 and "drop --capture" in result.stderr.strip().splitlines()[-1], result.stderr
