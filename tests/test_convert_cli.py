"""``edge convert`` on bad input: one line, exit 2, nothing written; ``--max-map-drop`` refuses a bad model."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A run directory with config.json and a real checkpoint of an untrained tiny SSD (no training needed)."""
    import tensorflow as tf

    from convert.config import CHECKPOINT_DIR, SSDConfig
    from convert.data.synth import write_synthetic_voc
    from convert.model import build_ssd

    root = tmp_path_factory.mktemp("cli")
    data = write_synthetic_voc(root / "shapes", 12, size=128, seed=3)
    config = SSDConfig.create(list(data.labels), input_size=128, width=0.35)
    run = root / "run"
    config.save(run)
    model = build_ssd(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run / CHECKPOINT_DIR), 1).save()
    return run, root / "shapes"


def _run(capsys, *argv):
    from edge.cli import main

    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def _assert_one_line(code, err, expected):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("edge: error:"), err
    assert expected in err[0], err


def test_missing_and_corrupt_checkpoints(untrained_run, tmp_path, capsys):
    run, shapes = untrained_run
    out = tmp_path / "m.tflite"
    _assert_one_line(*_run(capsys, tmp_path / "nope", "-o", out, "--calib", shapes), "no such file")

    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(run / "config.json", no_ckpt / "config.json")
    _assert_one_line(*_run(capsys, no_ckpt, "-o", out, "--calib", shapes), "no checkpoint")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(run, corrupt)
    for data in (corrupt / "checkpoints").glob("*.data-*"):
        data.write_bytes(b"garbage" * 100)
    _assert_one_line(*_run(capsys, corrupt, "-o", out, "--calib", shapes, "--sparsity", "0"), "checkpoint")

    bad_config = tmp_path / "bad_config"
    shutil.copytree(run, bad_config)
    (bad_config / "config.json").write_text("{not json")
    _assert_one_line(*_run(capsys, bad_config, "-o", out, "--calib", shapes), "not valid JSON")
    assert not out.exists()


def test_checkpoint_that_does_not_match_its_config(untrained_run, tmp_path, capsys):
    from convert.config import SSDConfig

    run, shapes = untrained_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    config = SSDConfig.load(other)
    config.architecture.width = 0.5  # different layer widths than the checkpoint holds
    config.save(other)
    out = tmp_path / "m.tflite"
    _assert_one_line(*_run(capsys, other, "-o", out, "--calib", shapes, "--sparsity", "0"), "does not match")
    assert not out.exists()


def test_empty_or_unreadable_calibration_folder(untrained_run, tmp_path, capsys):
    run, _ = untrained_run
    out = tmp_path / "m.tflite"
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line(*_run(capsys, run, "-o", out, "--calib", empty, "--sparsity", "0"), "no images")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    _assert_one_line(*_run(capsys, run, "-o", out, "--calib", broken, "--sparsity", "0"), "could be read")
    _assert_one_line(*_run(capsys, run, "-o", out, "--sparsity", "0"), "--calib")
    _assert_one_line(*_run(capsys, run, "-o", out, "--calib", broken), "--data")  # pruning without data
    _assert_one_line(*_run(capsys, run, "-o", tmp_path / "m.onnx", "--calib", broken), ".tflite")
    assert list(tmp_path.glob("*.tflite")) == [] and list(tmp_path.glob("*.json")) == []


def test_max_map_drop_fails_without_writing(untrained_run, tmp_path, capsys):
    """An untrained model scores ~0 either way; a negative allowance makes any result fail."""
    run, shapes = untrained_run
    out = tmp_path / "m.tflite"
    code, err = _run(capsys, run, "-o", out, "--calib", shapes, "--val", shapes, "--sparsity", "0",
                     "--max-map-drop", "-1")
    assert code == 3 and len(err) == 1 and "--max-map-drop" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_convert_writes_model_and_report_and_inspect_reads_them(untrained_run, tmp_path, capsys):
    import json

    from edge.cli import main
    from edge.contract.tflite_file import load_model_info

    run, shapes = untrained_run
    out = tmp_path / "sub" / "m.tflite"
    code, err = _run(capsys, run, "-o", out, "--calib", shapes, "--val", shapes, "--sparsity", "0",
                     "--max-detections", "17", "--score-threshold", "0.3", "--iou-threshold", "0.5", "--nms", "regular")
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.report.json", "m.tflite"]
    report = json.loads((out.parent / "m.report.json").read_text())
    assert report["postprocess"]["max_detections"] == 17 and report["postprocess"]["use_regular_nms"] is True
    assert set(report["models"]) == {"float", "int8-ptq"}
    info = load_model_info(out)
    assert info.postprocess["nms_score_threshold"] == pytest.approx(0.3)
    assert info.postprocess["nms_iou_threshold"] == pytest.approx(0.5)
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "TFLite_Detection_PostProcess" in text
    frame = np.zeros((100, 100, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "black.png"), frame)
    assert main(["detect", "--model", str(out), str(tmp_path / "black.png")]) == 0


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_mid_conversion_leaves_the_old_output_and_no_work_folder(untrained_run, tmp_path, signame):
    """A conversion stopped by a signal never finishes and overwrites -o, and leaves no work folder."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    run, shapes = untrained_run
    out = tmp_path / "m.tflite"
    out.write_bytes(b"the previous model")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "convert", str(run), "-o", str(out), "--calib",
                             str(shapes), "--sparsity", "0"], cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(p.name.startswith("edge-convert-") for p in tmp.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the conversion never started its work folder"
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1]
    assert out.read_bytes() == b"the previous model"
    assert not [p for p in tmp.iterdir() if p.name.startswith("edge-convert-")], list(tmp.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "tmp"]
