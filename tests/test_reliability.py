"""A hostile user's inputs: nothing destroyed, finite inputs finish, bad ones skipped and named, one line."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]


def edge(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edge: error: "), result.stderr
    for needle in needles:
        assert needle in last, last
    return last


def huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 69-byte-class PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b""))
    return path


# ---- never destroy an input -------------------------------------------------------------------


def test_run_refuses_to_write_json_onto_the_model(tmp_path, ssd_model_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(ssd_model_path.read_bytes())
    before = model.read_bytes()
    one_line_error(edge("run", model, "--json", model, "--max-frames", "2"), "--json", "would destroy it")
    link = tmp_path / "link.tflite"
    link.symlink_to(model)
    one_line_error(edge("run", model, "--json", link, "--max-frames", "2"), "would destroy it")
    assert model.read_bytes() == before


def test_run_refuses_outputs_onto_the_source_or_each_other(tmp_path, traffic_video):
    video = tmp_path / "src.mp4"
    video.write_bytes(traffic_video.read_bytes())
    size = video.stat().st_size
    one_line_error(edge("run", "--source", video, "--json", video, "--max-frames", "2"), "--source")
    one_line_error(edge("run", "--source", video, "--video", video, "--max-frames", "2"), "--source")
    assert video.stat().st_size == size
    out = tmp_path / "x.mp4"
    one_line_error(edge("run", "--video", out, "--json", out, "--max-frames", "2"), "same file")
    one_line_error(edge("run", "--video", tmp_path, "--max-frames", "2"), "is a folder")
    one_line_error(edge("run", "--json", tmp_path / "no" / "such" / "x.jsonl", "--max-frames", "2"), "does not exist")


def test_detect_out_must_be_a_folder_and_never_an_input(tmp_path, images_dir):
    image = tmp_path / "cat.bmp"
    image.write_bytes((images_dir / "cat.bmp").read_bytes())
    one_line_error(edge("detect", image, "--out", image), "--out", "is a file")


@pytest.mark.parametrize("args,needle", [
    (["run", "--threads", "40000", "--max-frames", "1"], "--threads"),
    (["run", "--duration", "nan"], "--duration"),
    (["run", "--score", "inf"], "--score"),
    (["run", "--stall-timeout", "-1"], "--stall-timeout"),
    (["detect", "--threads", "0", "x.jpg"], "--threads"),
    (["inspect", "m.tflite", "--threads", "99999"], "--threads"),
])
def test_numbers_are_checked_once_for_every_command(args, needle):
    one_line_error(edge(*args), needle)


# ---- finite inputs finish; bad ones are skipped and named -------------------------------------


def test_folder_with_an_absurd_image_finishes_and_names_it(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((120, 160, 3), 40 * i + 30, np.uint8))
    huge_png(folder / "1b_huge.png")
    os.mkfifo(folder / "2b_pipe.jpg")  # a FIFO named like an image: never opened
    out = tmp_path / "out.jsonl"
    result = edge("run", "--source", folder, "--json", out, "--stats-every", "0", timeout=60)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    files = [Path(r["file"]).name for r in records]
    assert files == ["0.jpg", "1.jpg", "1b_huge.png", "2.jpg"], files
    bad = [r for r in records if "error" in r]
    assert len(bad) == 1 and "1b_huge.png" in bad[0]["file"] and "100000" in bad[0]["error"]
    assert "1b_huge.png" in result.stderr and "end of source" in result.stderr
    assert "3 read, 3 processed, 0 dropped, 1 bad" in result.stderr


def test_detect_on_a_folder_skips_the_unreadable_and_exits_non_zero(tmp_path, images_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cat.bmp").write_bytes((images_dir / "cat.bmp").read_bytes())
    huge_png(folder / "huge.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    out = tmp_path / "out"
    result = edge("detect", folder, "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "huge.png" in result.stderr and "broken.jpg" in result.stderr and "2 of 3 image(s) skipped" in result.stderr
    assert (out / "cat.annotated.jpg").is_file()
    assert {r["file_name"] for r in json.loads((out / "detections.json").read_text())} <= {"cat.bmp"}


def test_fifo_as_model_or_labels_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.tflite"
    os.mkfifo(fifo)
    one_line_error(edge("inspect", fifo, timeout=30), "model.tflite")
    labels = tmp_path / "labels.txt"
    os.mkfifo(labels)
    one_line_error(edge("run", "--labels", labels, "--max-frames", "1", timeout=30), "labels.txt")


def test_large_synthetic_frames_are_built_in_uint8():
    from edge.live.synthetic import SyntheticSource

    tracemalloc.start()
    source = SyntheticSource("synthetic", 4096, 4096)
    source.read()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    frame_bytes = 4096 * 4096 * 3
    assert peak < 2.3 * frame_bytes, f"peak {peak / 2**20:.0f} MB for two {frame_bytes / 2**20:.0f} MB frames"


# ---- desktop commands check their outputs before any work -----------------------------------


def test_desktop_commands_refuse_outputs_onto_inputs_and_bad_locations(tmp_path, ssd_model_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(ssd_model_path.read_bytes())
    size = model.stat().st_size
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    folder_named_like_a_model = tmp_path / "somedir.tflite"
    folder_named_like_a_model.mkdir()
    one_line_error(edge("convert", run, "-o", folder_named_like_a_model), "is a folder")
    one_line_error(edge("convert", run, "-o", model, "--calib", model), "would destroy it")
    one_line_error(edge("eval", model, "--voc", data, "--json", model), "would destroy it")
    one_line_error(edge("bench", model, "--json", model, "--frames", "2"), "would destroy it")
    one_line_error(edge("bench", model, "--report", model, "--frames", "2"), "is a file")
    one_line_error(edge("data", "synth", "--out", model, "--n", "2"), "is a file")
    one_line_error(edge("train", "--data", data, "--out", data / "x.json"), "is a file")
    assert model.stat().st_size == size


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_that_a_library_turns_into_another_error_still_exits_130(signame):
    """TensorFlow's C code can turn the KeyboardInterrupt our handler raises into a SystemError or
    TypeError; the command still ends as interrupted: exit 130, one line, no traceback."""
    script = f"""
import os, signal, sys
from edge import cli

def add_arguments(parser):
    pass

def main(args):
    try:
        os.kill(os.getpid(), signal.{signame})
        signal.pause() if hasattr(signal, "pause") else None
    except KeyboardInterrupt:
        raise TypeError("a C extension reported the interrupt as this") from None

cli.COMMANDS["stopper"] = ("__main__", "a command that is stopped by a signal")
sys.exit(cli.main(["stopper"]))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [f"edge: interrupted ({signame})"]


def test_an_error_without_a_stop_signal_is_not_reported_as_an_interrupt():
    script = """
import sys
from edge import cli

def add_arguments(parser):
    pass

def main(args):
    raise TypeError("a real bug")

cli.COMMANDS["broken"] = ("__main__", "a command with a bug")
sys.exit(cli.main(["broken"]))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "TypeError: a real bug" in result.stderr and "interrupted" not in result.stderr
