"""Training stage end to end on CPU: a tiny SSDLite (width 0.35, 160 px) trained on synthetic shapes.

One module-scoped run serves most tests and proves resume at the same time: ``edge train`` starts in
a child process, is SIGKILLed after its first mid-epoch checkpoint, and ``train(..., resume=True)``
finishes the run in this process from that checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.config import CHECKPOINT_DIR, SSDConfig
from convert.pipeline import _box_safe_crop
from convert.targets import IGNORE, anchor_corners, assign_targets, iou_matrix
from edge.contract.anchors import AnchorConfig, generate_anchors
from edge.contract.boxcoding import decode_boxes
from edge.errors import EdgeError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square"]
SIZE, WIDTH = 160, 0.35
EPOCHS, STEPS, BATCH, LR = 5, 30, 16, 5e-3
CHECKPOINT_EVERY = 10
MAP50_FLOOR = 0.10  # measured ~0.25 for this run; an untrained model scores < 0.02


# ---------------------------------------------------------------- targets and augmentation (numpy)

def test_targets_match_by_iou_and_decode_back_exactly():
    anchors = generate_anchors(AnchorConfig.for_input(SIZE))
    boxes = np.array([[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.95, 0.9]], np.float32)  # yxyx normalised
    box_t, cls_t = assign_targets(boxes, [0, 1], anchors)
    iou = iou_matrix(boxes, anchor_corners(anchors))
    best = iou.max(axis=0)
    assert set(np.unique(cls_t)) <= {IGNORE, 0, 1, 2}
    assert np.all(cls_t[best >= 0.5] > 0)  # every anchor over the positive threshold is positive
    assert np.all(cls_t[best < 0.4][np.isin(np.flatnonzero(best < 0.4), iou.argmax(axis=1), invert=True)] == 0)
    assert np.all(cls_t[iou.argmax(axis=1)] == [1, 2])  # each box claims its best anchor
    decoded = decode_boxes(box_t, anchors)
    for cls, box in ((1, boxes[0]), (2, boxes[1])):
        np.testing.assert_allclose(decoded[cls_t == cls], np.broadcast_to(box, decoded[cls_t == cls].shape), atol=1e-5)
    assert np.all(box_t[cls_t <= 0] == 0)
    empty_box, empty_cls = assign_targets(np.zeros((0, 4)), [], anchors)
    assert np.all(empty_cls == 0) and np.all(empty_box == 0)


def test_box_safe_crop_never_cuts_a_box():
    rng = np.random.default_rng(0)
    image = np.zeros((120, 200, 3), np.uint8)
    boxes = np.array([[30, 20, 80, 60], [120, 50, 190, 110]], np.float32)
    aspect = set()
    for _ in range(200):
        crop, moved = _box_safe_crop(image, boxes, rng)
        h, w = crop.shape[:2]
        assert np.all(moved[:, :2] >= 0) and np.all(moved[:, 2] <= w) and np.all(moved[:, 3] <= h)
        np.testing.assert_allclose(moved[:, 2:] - moved[:, :2], boxes[:, 2:] - boxes[:, :2])
        aspect.add(round(w / h, 1))
    assert len(aspect) > 5  # crops change the aspect ratio too (frames are stretched to the input)


# ---------------------------------------------------------------- the shared trained run

def _add_bad_images(train_dir: Path) -> None:
    """One corrupt JPEG and one whose annotation lies about its size: skipped, named, never fatal."""
    xml = (train_dir / "Annotations" / "000000.xml").read_text()
    (train_dir / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (train_dir / "Annotations" / "corrupt.xml").write_text(xml.replace("000000.jpg", "corrupt.jpg"))
    cv2.imwrite(str(train_dir / "JPEGImages" / "wrongsize.jpg"), np.zeros((50, 70, 3), np.uint8))
    (train_dir / "Annotations" / "wrongsize.xml").write_text(xml.replace("000000.jpg", "wrongsize.jpg"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from convert.data import load_dataset
    from convert.data.synth import write_synthetic_voc
    from convert.train import train

    base = tmp_path_factory.mktemp("train")
    train_dir, val_dir, run_dir = base / "train", base / "val", base / "run"
    write_synthetic_voc(train_dir, 300, classes=CLASSES, size=SIZE, seed=1)
    val = write_synthetic_voc(val_dir, 60, classes=CLASSES, size=SIZE, seed=2)
    _add_bad_images(train_dir)

    cmd = [sys.executable, "-m", "edge.cli", "train", "--data", str(train_dir), "--val-data", str(val_dir),
           "--out", str(run_dir), "--input-size", str(SIZE), "--width", str(WIDTH), "--epochs", str(EPOCHS),
           "--steps-per-epoch", str(STEPS), "--batch-size", str(BATCH), "--lr", str(LR),
           "--checkpoint-every", str(CHECKPOINT_EVERY), "--backbone-weights", "none", "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    log = (base / "child.log").open("w")
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    deadline = time.monotonic() + 400
    try:
        while not (ckpt_dir / "checkpoint").exists():
            if child.poll() is not None:
                pytest.fail(f"edge train exited early ({child.returncode}): {(base / 'child.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("edge train wrote no checkpoint in 400 s")
            time.sleep(0.5)
        time.sleep(0.5)  # let the manager finish writing its state file
    finally:
        child.send_signal(signal.SIGKILL)  # a hard kill: no handler runs, only checkpoints survive
        child.wait()
        log.close()
    import tensorflow as tf  # noqa: F401  (already imported through convert.tf by now)

    killed_at = int(tf.train.load_variable(tf.train.latest_checkpoint(str(ckpt_dir)), "step/.ATTRIBUTES/VARIABLE_VALUE"))

    dataset = load_dataset(train_dir)
    config = SSDConfig.create(dataset.labels, input_size=SIZE, width=WIDTH)
    result = train(config, dataset, run_dir, epochs=EPOCHS, batch_size=BATCH, steps_per_epoch=STEPS,
                   val_dataset=val, learning_rate=LR, checkpoint_every=CHECKPOINT_EVERY, resume=True, verbose=0)
    return {"result": result, "killed_at": killed_at, "run_dir": run_dir, "val": val, "train_dir": train_dir,
            "child_log": (base / "child.log").read_text()}


@pytest.mark.slow
def test_resume_after_kill_continues_the_step_count(trained):
    result, killed_at = trained["result"], trained["killed_at"]
    assert killed_at >= CHECKPOINT_EVERY and killed_at % CHECKPOINT_EVERY == 0
    assert result.resumed_from_step == killed_at  # restored, not restarted
    assert result.steps == EPOCHS * STEPS  # and not overshot either
    history = json.loads((trained["run_dir"] / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history][-1] == EPOCHS and history[-1]["step"] == EPOCHS * STEPS
    assert "no GPU found" in trained["child_log"]


@pytest.mark.slow
def test_trained_model_reaches_map_floor_untrained_does_not(trained):
    from convert.evaluate import evaluate_keras
    from convert.model import build_ssd

    result, val = trained["result"], trained["val"]
    config = SSDConfig.load(trained["run_dir"])
    untrained = evaluate_keras(build_ssd(config), config, val)
    assert untrained.map50 < 0.05
    assert result.val_map.map50 >= MAP50_FLOOR, result.history
    assert result.val_map.map50 > 3 * untrained.map50
    assert set(result.val_map.per_class_ap50) == set(CLASSES)


@pytest.mark.slow
def test_bad_images_are_skipped_and_named(trained):
    skipped = {Path(f).name: r for f, r in trained["result"].skipped}
    assert "unreadable" in skipped["corrupt.jpg"]
    assert "70x50" in skipped["wrongsize.jpg"] and "annotation says" in skipped["wrongsize.jpg"]


@pytest.mark.slow
def test_run_dir_rebuilds_the_same_model(trained):
    from convert.checkpoints import load_trained_model
    from convert.evaluate import evaluate_keras
    from convert.model import BOX_OUTPUT, CLASS_OUTPUT

    run_dir = trained["run_dir"]
    model, config = load_trained_model(run_dir)
    data = json.loads((run_dir / "config.json").read_text())
    assert data["labels"] == CLASSES and data["architecture"]["input_size"] == SIZE
    assert data["normalization"] == {"mean": 127.5, "std": 127.5} and data["score_conversion"] == "sigmoid"
    assert data["training"]["final"]["steps"] == EPOCHS * STEPS
    assert model.output_names == [BOX_OUTPUT, CLASS_OUTPUT]
    assert model.outputs[0].shape[1:] == (config.anchors.num_anchors, 4)
    assert model.outputs[1].shape[1:] == (config.anchors.num_anchors, len(CLASSES) + 1)
    assert not any(type(l).__name__ in ("Rescaling", "Normalization", "Functional") for l in model.layers)
    reloaded = evaluate_keras(model, config, trained["val"])
    assert reloaded.map50 == pytest.approx(trained["result"].val_map.map50, abs=1e-6)


@pytest.mark.slow
def test_load_trained_model_refuses_missing_mismatched_or_corrupt_checkpoints(trained, tmp_path):
    from convert.checkpoints import load_trained_model

    run_dir = trained["run_dir"]
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(run_dir / "config.json", no_ckpt / "config.json")
    with pytest.raises(EdgeError, match="no checkpoint"):
        load_trained_model(no_ckpt)

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    config = SSDConfig.load(other)
    SSDConfig.create(CLASSES + ["triangle"], input_size=SIZE, width=WIDTH).save(other)
    with pytest.raises(EdgeError, match="does not match"):
        load_trained_model(other)
    config.save(other)
    for data_file in (other / CHECKPOINT_DIR).glob("*.data-*"):
        data_file.write_bytes(b"\0" * 64)
    with pytest.raises(EdgeError, match="checkpoint"):
        load_trained_model(other)


@pytest.mark.slow
def test_model_only_copy_converts_like_the_run_at_a_fraction_of_its_size(trained, tmp_path):
    from convert.checkpoints import latest_checkpoint, load_trained_model, write_model_only_run

    run_dir = trained["run_dir"]
    copy = write_model_only_run(run_dir, tmp_path / "slim")
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        name for name in ("config.json", "history.json", CHECKPOINT_DIR) if (run_dir / name).exists())
    assert latest_checkpoint(copy).endswith(f"ckpt-{EPOCHS * STEPS}")
    ours, theirs = load_trained_model(copy)[0], load_trained_model(run_dir)[0]
    assert len(ours.weights) == len(theirs.weights)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(ours.weights, theirs.weights))

    def checkpoint_bytes(folder):
        prefix = Path(latest_checkpoint(folder))
        return sum(f.stat().st_size for f in prefix.parent.glob(prefix.name + ".*"))

    assert checkpoint_bytes(copy) < 0.4 * checkpoint_bytes(run_dir)  # Adam keeps two moments per weight
    with pytest.raises(EdgeError, match="already exists"):
        write_model_only_run(run_dir, copy)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.slow
def test_train_refuses_to_overwrite_a_run_without_resume(trained):
    from convert.data import load_dataset
    from convert.train import train

    dataset = load_dataset(trained["train_dir"])
    config = SSDConfig.create(dataset.labels, input_size=SIZE, width=WIDTH)
    with pytest.raises(EdgeError, match="already holds checkpoints.*--resume"):
        train(config, dataset, trained["run_dir"], epochs=1, batch_size=2)
    other = SSDConfig.create(dataset.labels, input_size=SIZE, width=0.5)
    with pytest.raises(EdgeError, match="describes a different model"):
        train(other, dataset, trained["run_dir"], epochs=1, batch_size=2, resume=True)


@pytest.mark.slow
def test_fpn_model_obeys_the_contract():
    from convert.model import build_ssd

    config = SSDConfig.create(["a", "b", "c"], input_size=224, width=0.35, fpn=True)
    model = build_ssd(config)
    out = model(np.zeros((2, 224, 224, 3), np.float32))
    assert out[0].shape == (2, config.anchors.num_anchors, 4)
    assert out[1].shape == (2, config.anchors.num_anchors, 4)
    bad = SSDConfig.create(["a"], input_size=224, width=0.35)
    bad.anchors = AnchorConfig.for_input(192)
    with pytest.raises(EdgeError, match="feature map 0 .* anchor config says"):
        build_ssd(bad)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["focal", "hard_negatives"])
def test_losses_reward_correct_predictions(kind):
    from convert.losses import LossConfig, detection_loss
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    cls_t = np.zeros((2, 50), np.int32)
    cls_t[:, :3] = [1, 2, IGNORE]
    box_t = np.random.default_rng(0).normal(size=(2, 50, 4)).astype(np.float32)
    right = np.where(np.eye(3)[np.maximum(cls_t, 0)] > 0, 6.0, -6.0).astype(np.float32)
    wrong = -right
    cfg = LossConfig(classification=kind)
    good = [float(v) for v in detection_loss(box_t, cls_t, box_t, right, cfg)]
    bad = [float(v) for v in detection_loss(box_t, cls_t, np.zeros_like(box_t), wrong, cfg)]
    assert good[1] == 0.0 and bad[1] > 0.5  # box loss only on positives, zero when exact
    assert good[2] < 0.01 < bad[2]
    assert bad[0] == pytest.approx(bad[1] + bad[2], rel=1e-6)
    # Ignored anchors cost nothing whatever they predict.
    flipped = right.copy()
    flipped[:, 2] = -flipped[:, 2]
    assert float(detection_loss(box_t, cls_t, box_t, flipped, cfg)[2]) == pytest.approx(good[2], abs=1e-6)
    del tf


def test_edge_train_help_states_every_default():
    """A user choosing settings from --help sees what they get without them."""
    import argparse

    from convert.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    silent = [action.option_strings[0] for action in parser._actions
              if action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
              and "default" not in (action.help or "")]
    assert not silent, f"options whose help does not state their default: {silent}"
