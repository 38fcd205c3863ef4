"""Output that fails mid-run: a full disk under the JSON lines or the video, the reader of stdout gone,
stdout closed, hard kills (SIGKILL) of a recording, video segments, and SIGHUP.

Real files, real small filesystems (a tmpfs mounted for the test; skipped where mounting is not
permitted), real pipes, and real ``python -m edge.cli run`` subprocesses with the fixture model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.contract.detections import Detections
from edge.detector.step import Frame
from edge.live.sinks import JsonLinesSink, SinkError
from edge.live.video import DISK_RESERVE, VideoSink, _has_mp4_index

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(ssd_model_path, coco_labels_path):
    """``edge run`` with the fixture model, one thread and no periodic stats: argv for subprocess."""

    def build(*args) -> list[str]:
        return [sys.executable, "-m", "edge.cli", "run", "--model", str(ssd_model_path), "--labels",
                str(coco_labels_path), "--threads", "1", "--stats-every", "0", *map(str, args)]

    return build


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(name, size)``: a tmpfs of ``size`` (``16k``, ``3m``) mounted at ``tmp_path/name``,
    unmounted after the test. Skips when this machine does not let the test mount one."""
    mounted = []

    def mount(name: str, size: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a small filesystem needs root and mount(8) to make a tmpfs")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:g} s")


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _records(path: Path) -> list[dict]:
    """Every line of a JSON lines file, parsed: fails on a cut or garbled line."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the last line is cut"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def _playable_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    return frames


def _clean_stop(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "(sink error)" in stderr and "latency ms" in stderr and "RSS" in stderr, "the summary is printed"


def _processed(stderr: str) -> int:
    return int(re.search(r"frames: \d+ read, (\d+) processed", stderr).group(1))


# ---- JSON lines --------------------------------------------------------------------------------


def test_json_to_dev_full_is_one_line_and_the_summary(cli):
    result = subprocess.run(cli("--source", "synthetic:160x120", "--max-frames", "20", "--json", "/dev/full"),
                            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    _clean_stop(result.stderr)
    line = "--json /dev/full: disk full (No space left on device); kept 0 whole lines"
    assert f"edge run: {line}" in result.stderr and result.stderr.strip().endswith(f"stopped: {line}")
    assert _processed(result.stderr) == 1, "the run stopped at the first failed write"


def test_json_disk_full_cuts_back_to_the_last_whole_line(cli, small_fs):
    out = small_fs("small", "8k") / "out.jsonl"
    result = subprocess.run(cli("--source", "synthetic:160x120", "--duration", "120", "--json", out),
                            cwd=PROJECT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr
    _clean_stop(result.stderr)
    found = re.search(rf"--json {re.escape(str(out))}: disk full \(No space left on device\); kept (\d+) whole lines?",
                      result.stderr)
    assert found, result.stderr
    kept = int(found.group(1))
    records = _records(out)  # every line whole: the cut one was removed
    assert len(records) == kept > 0 and out.stat().st_size <= 8192
    assert [r["frame"] for r in records] == list(range(kept))
    assert _processed(result.stderr) == kept + 1, "the frame whose line did not fit was the last one"
    assert out.stat().st_size > 4096, "the lines filled the disk (two 4 KB pages) before it failed"
    print(f"8 KB disk: kept {kept} whole lines, {out.stat().st_size} bytes")


def test_json_to_stdout_whose_reader_goes_away(cli, tmp_path):
    """``edge run --json - | head -c 10``: a real pipe read for 10 bytes and closed."""
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        proc = subprocess.Popen(cli("--source", "synthetic:160x120", "--duration", "120", "--json", "-"),
                                cwd=PROJECT, stdout=subprocess.PIPE, stderr=stderr)
        try:
            head = proc.stdout.read(10)
            proc.stdout.close()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = errors.read_text()
    assert head.startswith(b'{"frame":0') and len(head) == 10
    assert code == 1, text
    _clean_stop(text)
    assert re.search(r"--json -: the reader went away \(Broken pipe\); (kept|wrote) \d+ whole lines?", text), text


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh for >&-")
def test_json_to_a_closed_stdout(cli, tmp_path):
    closed = ["sh", "-c", 'exec "$0" "$@" >&-']  # stdout closed, as `edge run ... >&-`
    result = subprocess.run(closed + cli("--source", "synthetic:160x120", "--max-frames", "5", "--json", "-"),
                            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("edge: error: --json -: stdout is closed")
    # A file still works with stdout closed (and does not take stdout's descriptor).
    out = tmp_path / "out.jsonl"
    result = subprocess.run(closed + cli("--source", "synthetic:160x120", "--max-frames", "5", "--json", out),
                            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [r["frame"] for r in _records(out)] == [0, 1, 2, 3, 4]


# ---- video: a full disk --------------------------------------------------------------------------


def test_video_disk_filling_up_stops_with_a_playable_file(cli, small_fs, tmp_path):
    """The disk fills up (another file) while recording: the run stops within one check, closes the
    MP4 with the space kept in reserve, and the file plays every frame it reports."""
    disk = small_fs("disk", "40m")
    video, out = disk / "v.mp4", tmp_path / "out.jsonl"
    proc = subprocess.Popen(cli("--source", "synthetic:320x240", "--duration", "120", "--json", out, "--video", video),
                            cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _lines(out) >= 10, "10 processed frames", proc)
        vfs = os.statvfs(disk)
        free = vfs.f_bavail * vfs.f_frsize
        assert free > DISK_RESERVE, "the run stopped before the disk filled up"
        with open(disk / "filler", "wb") as filler:  # leaves 8 MB, below the 32 MB reserve
            os.posix_fallocate(filler.fileno(), 0, free - 8 * 2**20)
        lines_when_full = _lines(out)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    _clean_stop(stderr)
    found = re.search(rf"--video {re.escape(str(video))}: disk full \(([\d.]+) MB free, below the ([\d.]+) MB kept "
                      rf"to close the file\); kept {re.escape(str(video))} \((\d+) frames\)", stderr)
    assert found, stderr
    free_mb, need_mb, kept = float(found.group(1)), float(found.group(2)), int(found.group(3))
    # tmpfs allocates the filler page by page, so the run may catch the disk part-way down to its 8 MB: what
    # matters is that it stopped on seeing less free than the reserve, and kept the reserve to close the file.
    assert free_mb < need_mb and need_mb >= 32.0
    assert f"wrote {video} ({kept} frames)" in stderr
    assert 9 <= kept <= lines_when_full + 15, "stopped within one check (15 frames or 0.5 s)"
    assert _playable_frames(video) == kept, "the file plays every frame it reports"
    print(f"disk filled at {lines_when_full} frames: stopped with {free_mb} MB free, {kept} frames kept and playable")
    assert not list(disk.glob(".*part*")) and len(_records(out)) >= kept


@pytest.mark.parametrize("status", [True, False], ids=["write-status", "growth-check"])
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_video_writer_failing_on_a_full_disk_is_caught(small_fs, suffix, status):
    """No reserve: FFmpeg itself hits ENOSPC on a 3 MB disk. The sink sees it from the writer's status
    (OpenCV 5) or, with the status ignored as OpenCV 4 gives none, from the file no longer growing
    while the disk refuses a test write; then says what is left: an MP4 that could not write its
    index does not play (left as .part, not claimed as written); an MKV plays up to the full disk."""
    disk = small_fs("full", "3m")
    sink = VideoSink(disk / f"v{suffix}", 30, reserve=0)
    sink.check_write_status = status
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]
    detections = Detections(4)
    error = None
    for i in range(5000):
        try:
            sink.write(Frame.of(noise[i % 8], seq=i), detections, None)
        except SinkError as exc:
            error = str(exc)
            break
    sink.close()
    assert error is not None, f"{sink.frames} frames written to a 3 MB disk and no error"
    how = "FFmpeg could not write frame" if status else "the file stopped growing at"
    assert f"disk full (No space left on device): {how}" in error, error
    part, final = disk / f".v.part{suffix}", disk / f"v{suffix}"
    if suffix == ".mp4":
        assert f"{sink.frames} frames lost: .v.part.mp4 has no index" in error and error.endswith("no frame kept")
        assert part.exists() and not final.exists() and not _has_mp4_index(part)
        assert _playable_frames(part) == 0 and sink.report() is None, "nothing is claimed as written"
    else:
        found = re.search(r"the last ~(\d+) frames never reached the disk; kept (\S+) \(up to (\d+) frames\)$", error)
        assert found and found.group(2) == str(final), error
        lost, kept = int(found.group(1)), int(found.group(3))
        assert lost > 0 and kept + lost == sink.frames
        assert not part.exists() and 0 < _playable_frames(final) <= kept, "what reached the disk plays"
        assert sink.report().startswith(f"wrote {final} (up to {kept} frames), codec XVID")
    print(f"3 MB disk, {suffix}, {'status' if status else 'growth'}: {sink.frames} frames given; {error}; "
          f"{_playable_frames(final if final.exists() else part)} frames play")


# ---- video: hard kills and segments ------------------------------------------------------------


def test_video_segments_rotate_and_each_plays(cli, tmp_path):
    """0.01 minutes at the synthetic source's 30 fps: 18 frames a file."""
    video, out = tmp_path / "v.mp4", tmp_path / "out.jsonl"
    result = subprocess.run(cli("--source", "synthetic:160x120", "--max-frames", "45", "--json", out, "--video", video,
                                "--video-segment", "0.01"), cwd=PROJECT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    segments = sorted(tmp_path.glob("v-*.mp4"))
    assert [s.name for s in segments] == ["v-0001.mp4", "v-0002.mp4", "v-0003.mp4"] and not video.exists()
    assert [_playable_frames(s) for s in segments] == [18, 18, 9]
    assert len(_records(out)) == 45 and not list(tmp_path.glob(".*part*"))
    assert f"wrote {segments[0]} .. v-0003.mp4 (3 files, 45 frames)" in result.stderr


def test_sigkill_loses_only_the_open_segment(cli, tmp_path):
    video, out = tmp_path / "v.mp4", tmp_path / "out.jsonl"
    proc = subprocess.Popen(cli("--source", "synthetic:160x120", "--duration", "120", "--json", out, "--video", video,
                                "--video-segment", "0.01"), cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # two segments closed and five frames into the third
        _wait_for(lambda: (tmp_path / "v-0002.mp4").exists() and _lines(out) >= 2 * 18 + 6, "two segments", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    closed = sorted(tmp_path.glob("v-*.mp4"))
    assert len(closed) >= 2 and [_playable_frames(s) for s in closed] == [18] * len(closed)
    open_part = tmp_path / f".v-{len(closed) + 1:04d}.part.mp4"
    assert open_part.exists() and open_part.stat().st_size > 0
    assert not _has_mp4_index(open_part) and _playable_frames(open_part) == 0, "a killed MP4 does not play"
    print(f"SIGKILL after {_lines(out)} frames: {len(closed)} segments of 18 frames play, "
          f"{open_part.name} ({open_part.stat().st_size} bytes) plays 0")


def _killed_mkv(cli, folder: Path, source: list, ready) -> tuple[Path, int]:
    """Record ``source`` (``--source`` and its options) into ``folder/x.mkv``, SIGKILL the run once ``ready(part, started)``: the
    temporary file left and the frames processed."""
    folder.mkdir()
    out, part = folder / "out.jsonl", folder / ".x.part.mkv"
    proc = subprocess.Popen(cli(*source, "--duration", "120", "--json", out, "--video", folder / "x.mkv"),
                            cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        _wait_for(lambda: part.exists() and ready(part, started), "the moment to kill", proc, timeout=90)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (folder / "x.mkv").exists(), "a killed run leaves the temporary name"
    return part, _lines(out)


def test_mkv_plays_after_sigkill(cli, traffic_video, tmp_path):
    """Matroska needs no index at the end: what FFmpeg wrote before the kill plays. But it writes in
    256 KB blocks, so a run killed before its first block (2 s of 160x120 here) leaves an empty file."""
    block = 2**18
    part, processed = _killed_mkv(cli, tmp_path / "early", ["--source", "synthetic:160x120"],
                                  lambda part, started: time.monotonic() - started >= 2)
    early_size, early = part.stat().st_size, _playable_frames(part)
    assert (early == 0) == (early_size < block), f"{early_size} bytes on disk, {early} frames play"
    # The traffic video (960x540) fills two blocks in ~25 frames.
    part, processed = _killed_mkv(cli, tmp_path / "late", ["--source", traffic_video, "--loop"],
                                  lambda part, started: time.monotonic() - started >= 2 and part.stat().st_size >= 2 * block)
    frames = _playable_frames(part)
    assert 0 < frames <= processed, f"{frames} frames play of {processed} processed"
    print(f"MKV killed: 160x120 after 2 s: {early_size} bytes, {early} frames play; "
          f"960x540: {part.stat().st_size} bytes, {frames} of {processed} frames play")


# ---- SIGHUP ------------------------------------------------------------------------------------


def test_sighup_finishes_with_the_summary_and_whole_lines(cli, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(cli("--source", "synthetic:160x120", "--duration", "120", "--json", out), cwd=PROJECT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _lines(out) >= 10, "10 processed frames", proc)
        proc.send_signal(signal.SIGHUP)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "SIGHUP: finishing the current frame" in stderr and "(SIGHUP)" in stderr and "latency ms" in stderr
    records = _records(out)
    assert len(records) >= 10 and [r["frame"] for r in records] == list(range(len(records)))
    assert len(records) == _processed(stderr)


# ---- the checks cost little per frame -----------------------------------------------------------


def test_sinks_allocate_little_per_frame(tmp_path):
    """300 frames of 320x240 through the JSON sink and a segmented video sink (its disk checks and two
    rotations included), traced: no frame-sized allocation, no growth beyond the closed files' names."""
    json_sink = JsonLinesSink(tmp_path / "out.jsonl")
    video = VideoSink(tmp_path / "v.mp4", 30, segment_minutes=0.06)  # 108 frames a file
    image = np.zeros((240, 320, 3), np.uint8)
    frame = Frame.of(image)
    detections = Detections(10, ["car", "person"])
    detections._xyxy[:3] = [[10, 10, 60, 50], [70, 20, 120, 90], [5, 5, 300, 200]]
    detections._scores[:3], detections._class_ids[:3], detections.count = [0.9, 0.7, 0.6], [0, 1, 0], 3
    for i in range(330):
        if i == 30:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
        image[:, :] = i % 256
        frame.seq = i
        json_sink.write(frame, detections, None)
        video.write(frame, detections, image)
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    json_sink.close()
    video.close()
    transient, growth = peak - max(before, after), after - before
    assert transient < 32 * 1024, f"{transient} bytes at once (a frame is {image.nbytes})"
    assert growth < 8 * 1024, f"{growth} bytes kept over 300 frames"
    assert [_playable_frames(p) for p in sorted(tmp_path.glob("v-*.mp4"))] == [108, 108, 108, 6]
    assert len(_records(tmp_path / "out.jsonl")) == 330
    print(f"300 frames through both sinks: {transient} B transient peak, {growth:+d} B kept")
