"""Event clips: the pre-roll ring holds the stated frames before the event, overlapping events extend
a clip, clips play back with OpenCV, SIGTERM mid-clip leaves nothing half-written, retention removes
the oldest first, and the ring's memory is the stated bound. Every frame carries its number as a
drawn bit pattern, read back from the decoded clip."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detector.step import Frame
from edge.errors import EdgeError
from edge.events.zones import Event
from edge.live.clips import ClipSink

PROJECT = Path(__file__).resolve().parents[1]
BITS, BLOCK_W, BLOCK_H = 12, 12, 16  # seq as 12 black/white blocks along the top of a 160x120 frame
T0 = 1_700_000_000.0


def draw_seq(image: np.ndarray, seq: int) -> None:
    for b in range(BITS):
        image[:BLOCK_H, b * BLOCK_W:(b + 1) * BLOCK_W] = 255 if (seq >> b) & 1 else 0


def read_seq(image: np.ndarray) -> int:
    value = 0
    for b in range(BITS):
        if image[3:BLOCK_H - 3, b * BLOCK_W + 3:(b + 1) * BLOCK_W - 3].mean() > 128:
            value |= 1 << b
    return value


def decoded_seqs(path: Path) -> list[int]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    seqs = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        seqs.append(read_seq(image))
    cap.release()
    return seqs


def enter(seq: int, stamp: float, kind: str = "enter", label: str = "circle") -> Event:
    return Event(kind, "in", "zone", "door", 1, 0, label, seq, stamp, 10.0, 10.0)


def feed(sink: ClipSink, seqs, fps: float, events_at=(), image=None):
    image = np.full((120, 160, 3), 90, np.uint8) if image is None else image
    events_at = dict.fromkeys(events_at, "enter") if not isinstance(events_at, dict) else events_at
    for seq in seqs:
        draw_seq(image, seq)
        frame = Frame.of(image, seq, stamp=T0 + seq / fps)
        sink.write(frame, None, None)
        if seq in events_at:
            sink.events(frame, [enter(seq, frame.stamp, events_at[seq])])


def test_pre_roll_post_roll_overlap_and_retention(tmp_path):
    fps = 10.0
    done = []
    sink = ClipSink(tmp_path, pre_roll=1.0, post_roll=1.05, fps=fps, annotate=False, max_clips=2,
                    on_clip=done.append)
    assert sink.pre_frames == 10 and sink.capacity == 11
    # Events at 25 and 30 (the second extends the first clip); a "leave" at 45 starts nothing; one at 60.
    feed(sink, range(0, 81), fps, {25: "enter", 30: "cross", 45: "leave", 60: "enter"})
    assert len(sink.clips) == 2 and [c.path for c in sink.clips] == [c.path for c in done]
    first, second = sink.clips
    assert first.pre_frames == 10 and first.events == 2 and first.first_event["frame"] == 25
    assert decoded_seqs(first.path) == list(range(15, 41)), "10 frames of pre-roll, event, post-roll after 30"
    assert decoded_seqs(second.path) == list(range(50, 71))
    assert first.frames == 26 and second.frames == 21 and sink.last_clip == second.path
    assert sink.codec in ("avc1", "mp4v")
    cap = cv2.VideoCapture(str(first.path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    decoders = {"mp4v": {"mp4v", "fmp4"}, "avc1": {"avc1", "h264"}}  # FFmpeg names its decoder's tag
    assert fourcc.lower() in decoders[sink.codec] and cap.get(cv2.CAP_PROP_FPS) == fps
    cap.release()
    assert sink.ring_bytes == 11 * 160 * 120 * 3 == sink.ring_bytes_for((120, 160, 3))
    # A third clip: retention (max_clips=2) removes the oldest.
    time.sleep(0.05)  # distinct mtimes
    feed(sink, range(81, 121), fps, [100])
    sink.close()
    assert len(sink.clips) == 3 and sink.removed == [first.path]
    assert not first.path.exists() and second.path.exists() and sink.clips[2].path.exists()
    assert decoded_seqs(sink.clips[2].path) == list(range(90, 111))
    assert not list(tmp_path.glob(".*part*")), "no temporary file left"
    report = sink.report()
    assert "wrote 3 clips" in report and "1 old clips removed" in report and sink.clips[2].path.name in report


def test_class_filter_and_clip_cut_at_close(tmp_path):
    sink = ClipSink(tmp_path, pre_roll=0.5, post_roll=30, fps=10, classes={"square"}, annotate=False)
    image = np.full((120, 160, 3), 90, np.uint8)
    for seq in range(40):
        draw_seq(image, seq)
        frame = Frame.of(image, seq, stamp=T0 + seq / 10)
        sink.write(frame, None, None)
        if seq == 10:
            sink.events(frame, [enter(seq, frame.stamp, label="circle")])  # not a class asked for
        if seq == 20:
            sink.events(frame, [enter(seq, frame.stamp, label="square")])
            assert sink.current_clip is not None and not sink.current_clip.exists()
    sink.close()  # mid post-roll: the clip is closed whole
    assert len(sink.clips) == 1 and sink.current_clip is None
    assert decoded_seqs(sink.clips[0].path) == list(range(15, 40))


def test_ring_memory_is_the_stated_bound_and_frames_allocate_nothing(tmp_path):
    fps, pre = 15.0, 2.0
    sink = ClipSink(tmp_path, pre_roll=pre, post_roll=0.5, fps=fps, annotate=False)
    sink.presize((240, 320, 3))
    frame_bytes = 320 * 240 * 3
    assert sink.ring_bytes == (math.ceil(pre * fps) + 1) * frame_bytes == 31 * frame_bytes
    image = np.full((240, 320, 3), 90, np.uint8)
    events = {s: "enter" for s in range(60, 400, 7)}  # one long clip, extended all along
    feed(sink, range(0, 60), fps, image=image)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    feed(sink, range(60, 400), fps, events, image=image)
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sink.close()
    assert peak - before < frame_bytes // 4, f"{peak - before} bytes allocated at once"
    assert after - before < 16 * 1024, f"{after - before} bytes kept over 340 frames"
    assert len(sink.clips) == 1 and sink.clips[0].frames == 30 + 340 and sink.ring_bytes == 31 * frame_bytes
    # A frame of another size goes into its slot at the ring's size: no new ring.
    sink.write(Frame.of(np.zeros((100, 100, 3), np.uint8), 1000, T0 + 1000), None, None)
    assert sink.ring_bytes == 31 * frame_bytes


def test_retention_by_age_and_bytes_and_dead_parts_at_start(tmp_path):
    now = time.time()
    for i, age in enumerate([4000, 3000, 2000, 100]):
        path = tmp_path / f"cam-20261201-1010{i:02d}-{i}.mp4"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
    other = tmp_path / "holiday.mp4"  # not ours: never touched
    other.write_bytes(b"y")
    os.utime(other, (now - 10**6, now - 10**6))
    neighbour = tmp_path / "cam-2-20261201-101000-7.mp4"  # camera "cam-2"'s clip, though it starts with "cam-"
    neighbour.write_bytes(b"w" * 5000)
    os.utime(neighbour, (now - 10**5, now - 10**5))
    neighbours_part = tmp_path / ".cam-2-20261201-101000-8.mp4.abc123.part.mp4"
    neighbours_part.write_bytes(b"w")
    os.utime(neighbours_part, (now - 10**4, now - 10**4))
    dead = tmp_path / ".cam-20261201-101009-9.mp4.abc123.part.mp4"
    dead.write_bytes(b"z")
    os.utime(dead, (now - 10**4, now - 10**4))
    fresh = tmp_path / ".cam-20261201-101010-10.mp4.def456.part.mp4"  # a writer may still be on it
    fresh.write_bytes(b"z")
    sink = ClipSink(tmp_path, prefix="cam", max_age=3500, max_bytes=2500)
    # age, then bytes (oldest first); the other camera's files count for neither
    assert sorted(p.name for p in sink.removed) == ["cam-20261201-101000-0.mp4", "cam-20261201-101001-1.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fresh.name, neighbours_part.name, neighbour.name, "cam-20261201-101002-2.mp4", "cam-20261201-101003-3.mp4",
         "holiday.mp4"])
    with pytest.raises(EdgeError, match="post-roll"):
        ClipSink(tmp_path, post_roll=-1)


SIGTERM_SCRIPT = r"""
import json, sys
from edge.detector.detector import Detector
from edge.events.zones import Event
from edge.live.clips import ClipSink
from edge.live.loop import LiveLoop
from edge.live.synthetic import SyntheticSource
from edge.models import DEMO_MODEL
sys.path.insert(0, "tests")
from test_clips import draw_seq

class Numbered(SyntheticSource):
    def _read(self):
        seq = self.frames_read
        frame = super()._read()
        draw_seq(frame, seq)
        return frame

class Stage:  # an "enter" event on frame 30
    def presize(self, shape):
        pass
    def update(self, image, seq, stamp, detections):
        return [Event("enter", "in", "zone", "door", 1, 0, "circle", seq, stamp, 5.0, 5.0)] if seq == 30 else ()

sink = ClipSink(sys.argv[1], pre_roll=1.0, post_roll=60, fps=20, annotate=False, log=print)
loop = LiveLoop(Detector(DEMO_MODEL), Numbered("synthetic", 160, 120, fps=20, realtime=True), [sink],
                duration=50, stats_every=0, events=Stage(), log=print)
restore = loop.install_signal_handlers()
summary = loop.run()
print("CLIPS " + json.dumps([c.to_dict() for c in sink.clips]))
print("STOP " + summary.stop_reason)
"""


def test_sigterm_mid_clip_leaves_a_whole_clip_and_no_part_file(tmp_path):
    clips = tmp_path / "clips"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(clips)], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(clips.glob(".*.part.mp4")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert list(clips.glob(".*.part.mp4")), "the clip never started"
        time.sleep(1.0)  # ~20 frames of post-roll written
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "STOP SIGTERM" in out, out + err
    written = json.loads(out.split("CLIPS ", 1)[1].splitlines()[0])
    assert len(written) == 1
    assert not [p for p in clips.iterdir() if ".part" in p.name], "a half-written file was left"
    files = sorted(clips.glob("*.mp4"))
    assert [str(p) for p in files] == [written[0]["clip"]]
    seqs = decoded_seqs(files[0])
    pre = written[0]["pre_frames"]
    assert len(seqs) == written[0]["frames"] >= pre + 10
    assert seqs[pre] == 30 and seqs == sorted(seqs), seqs
    gaps = any(b - a != 1 for a, b in zip(seqs, seqs[1:pre + 1]))  # frames dropped under load
    assert pre == 20 or (gaps and pre < 20), (pre, seqs[:pre + 1])
    assert all(30 - 21 <= s < 30 for s in seqs[:pre])
