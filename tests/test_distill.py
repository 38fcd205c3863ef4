"""Knowledge distillation (``edge train --teacher``): anchor mapping, the loss, its effect, bad input,
and pseudo-labelling an images-only folder.

The TensorFlow tests share one module-scoped teacher: a tiny SSDLite (width 0.35, 160 px) trained
briefly on synthetic shapes. Students are 128 px, so they go through the max-IoU anchor match, and
the teacher sees the pipeline's 160 px view of each image (the same crop from the source pixels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from convert.config import CHECKPOINT_DIR, SSDConfig
from convert.distill import (IDENTITY, MAX_IOU, DistillConfig, Teacher, box_reencoding, check_compatible,
                             max_iou_mapping)
from convert.targets import anchor_corners, iou_matrix
from edge.contract.anchors import AnchorConfig, generate_anchors
from edge.contract.boxcoding import BoxCoderScales, decode_boxes, encode_boxes
from edge.errors import EdgeError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square"]
WIDTH, TEACHER_SIZE, STUDENT_SIZE = 0.35, 160, 128
TEACHER_STEPS, STUDENT_STEPS, BATCH, LR = 120, 60, 8, 5e-3
# 60 student steps, not 30: after 30 the class outputs of both students were still equally far from the
# teacher's (0.0593 vs 0.0591, a tie either way on another machine); after 60 the distilled one is 11%
# closer (0.0341 vs 0.0382) and its boxes half as far (0.74 vs 1.44).
BOX_CONFIDENCE = 0.3  # a briefly trained teacher is rarely above the default 0.5


class _StubModel:
    """Enough of a Keras model for Teacher's bookkeeping (no TensorFlow)."""

    def __init__(self, num_anchors: int) -> None:
        self.outputs = [types.SimpleNamespace(shape=(None, num_anchors, 4))]
        self.trainable = True


# ---------------------------------------------------------------- mapping (numpy, fast)

def test_identical_layouts_map_by_identity_without_reencoding():
    student = SSDConfig.create(CLASSES, input_size=160, width=0.35)
    teacher_config = SSDConfig.create(CLASSES, input_size=160, width=1.0)
    teacher = Teacher(_StubModel(teacher_config.anchors.num_anchors), teacher_config, student)
    assert teacher.mapping == IDENTITY and teacher.index is None and not teacher.reencode
    assert teacher.model.trainable is True  # untouched: a pruned clone of it must stay trainable
    # The same anchors map onto themselves under max-IoU too: the identity is the exact special case.
    anchors = generate_anchors(student.anchors)
    np.testing.assert_array_equal(max_iou_mapping(anchors, anchors), np.arange(len(anchors)))
    # Same anchors, other box coder: the index stays the identity but encodings are converted.
    other_coder = SSDConfig.from_dict({**teacher_config.to_dict(), "box_coder": {"y": 5, "x": 5, "h": 2, "w": 2}})
    converted = Teacher(_StubModel(other_coder.anchors.num_anchors), other_coder, student)
    assert converted.mapping == IDENTITY and converted.index is None and converted.reencode


def test_max_iou_mapping_between_input_sizes():
    student_anchors = generate_anchors(AnchorConfig.for_input(128))
    teacher_anchors = generate_anchors(AnchorConfig.for_input(224))
    index = max_iou_mapping(student_anchors, teacher_anchors)
    assert index.shape == (len(student_anchors),) and index.dtype == np.int32
    assert index.min() >= 0 and index.max() < len(teacher_anchors)
    iou = iou_matrix(anchor_corners(student_anchors), anchor_corners(teacher_anchors))
    np.testing.assert_array_equal(index, iou.argmax(axis=1))  # chunking changes nothing
    best = iou[np.arange(len(index)), index]
    assert best.min() > 0.3 and np.median(best) > 0.6  # every student anchor has a real counterpart
    # Anchors are normalised: the same relative place, so centres stay within one teacher cell.
    shift = np.abs(student_anchors[:, :2] - teacher_anchors[index, :2]).max(axis=1)
    assert shift.max() <= 1.0 / 14 + 1e-6

    student = SSDConfig.create(CLASSES, input_size=128, width=0.35)
    teacher_config = SSDConfig.create(CLASSES, input_size=224, width=0.5)
    teacher = Teacher(_StubModel(len(teacher_anchors)), teacher_config, student)
    assert teacher.mapping == MAX_IOU and teacher.reencode
    np.testing.assert_array_equal(teacher.index, index)


def test_box_reencoding_equals_decode_then_encode():
    rng = np.random.default_rng(0)
    student_anchors = generate_anchors(AnchorConfig.for_input(128))
    teacher_anchors = generate_anchors(AnchorConfig.for_input(224))
    matched = teacher_anchors[max_iou_mapping(student_anchors, teacher_anchors)]
    for teacher_scales in (BoxCoderScales(), BoxCoderScales(5.0, 4.0, 2.0, 3.0)):
        student_scales = BoxCoderScales()
        scale, offset = box_reencoding(student_anchors, matched, student_scales, teacher_scales)
        encodings = rng.normal(0, 1.5, (len(student_anchors), 4)).astype(np.float32)
        expected = encode_boxes(decode_boxes(encodings, matched, teacher_scales), student_anchors, student_scales)
        np.testing.assert_allclose(encodings * scale + offset, expected, atol=2e-4)


def test_incompatible_teachers_are_refused_in_one_line():
    student = SSDConfig.create(CLASSES, input_size=160)
    for labels in (["dog", "cat"], list(reversed(CLASSES))):
        with pytest.raises(EdgeError, match=r"--teacher /t: labels \[.*\] differ from the student's \['circle', 'square'\]"):
            check_compatible(SSDConfig.create(labels, input_size=160), student, "--teacher /t")
    softmax = SSDConfig.create(CLASSES, input_size=160)
    softmax.score_conversion = "softmax"
    with pytest.raises(EdgeError, match="softmax .*--loss hard_negatives.* sigmoid .*--loss focal"):
        check_compatible(softmax, student, "--teacher /t")
    for bad, option in ((DistillConfig(weight=-1), "--distill-weight"), (DistillConfig(temperature=0), "--temperature"),
                        (DistillConfig(temperature=float("nan")), "--temperature")):
        with pytest.raises(EdgeError, match=option):
            bad.validate()


# ---------------------------------------------------------------- bad input through the CLI

def _fake_run(path: Path, labels) -> Path:
    """A run directory as far as the pure-Python checks see it (config.json, a checkpoint index)."""
    SSDConfig.create(labels, input_size=TEACHER_SIZE, width=WIDTH).save(path)
    (path / CHECKPOINT_DIR).mkdir()
    (path / CHECKPOINT_DIR / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    return path


def _cli_error(capsys, argv) -> str:
    from edge.cli import main

    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edge: error:")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("extra, option", [
    (["--teacher", "MISSING"], "--teacher"),
    (["--teacher", "FAKE", "--distill-weight", "-1"], "--distill-weight"),
    (["--teacher", "FAKE", "--temperature", "0"], "--temperature"),
    (["--temperature", "3"], "--temperature"),  # without --teacher it would silently do nothing
])
def test_bad_distillation_options_are_one_line_exit_2_nothing_written(tmp_path, capsys, extra, option):
    fake = _fake_run(tmp_path / "teacher", CLASSES)
    data = tmp_path / "data"
    (data / "Annotations").mkdir(parents=True)  # never read: the options fail first
    out = tmp_path / "out"
    extra = [str(tmp_path / "missing") if a == "MISSING" else str(fake) if a == "FAKE" else a for a in extra]
    line = _cli_error(capsys, ["train", "--data", str(data), "--out", str(out), *extra])
    assert line.startswith(f"edge: error: {option} ")
    assert not out.exists()


@pytest.mark.slow
def test_teacher_with_other_labels_or_images_without_teacher_fail_before_writing(tmp_path, capsys):
    from convert.data.synth import write_synthetic_voc

    data = tmp_path / "data"
    write_synthetic_voc(data, 3, classes=CLASSES, size=TEACHER_SIZE, seed=0)
    fake = _fake_run(tmp_path / "teacher", ["circle", "triangle"])
    out = tmp_path / "out"
    common = ["--out", str(out), "--input-size", str(TEACHER_SIZE), "--width", str(WIDTH), "--epochs", "1",
              "--backbone-weights", "none", "--quiet"]
    line = _cli_error(capsys, ["train", "--data", str(data), "--teacher", str(fake), *common])
    assert f"--teacher {fake}: labels ['circle', 'triangle'] differ from the student's ['circle', 'square']" in line
    assert not out.exists()
    images = tmp_path / "images"
    images.mkdir()
    for jpeg in sorted((data / "JPEGImages").glob("*.jpg")):
        shutil.copy(jpeg, images / jpeg.name)
    line = _cli_error(capsys, ["train", "--data", str(images), *common])
    assert "cannot tell the format" in line  # unlabelled images need a teacher
    assert not out.exists()


# ---------------------------------------------------------------- a real teacher (TensorFlow)

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from convert.data.synth import write_synthetic_voc
    from convert.train import train

    base = tmp_path_factory.mktemp("distill")
    train_set = write_synthetic_voc(base / "train", 200, classes=CLASSES, size=TEACHER_SIZE, seed=1)
    held_out = write_synthetic_voc(base / "held_out", 24, classes=CLASSES, size=TEACHER_SIZE, seed=2)
    config = SSDConfig.create(CLASSES, input_size=TEACHER_SIZE, width=WIDTH)
    train(config, train_set, base / "teacher", epochs=1, steps_per_epoch=TEACHER_STEPS, batch_size=16,
          learning_rate=LR, verbose=0)
    return {"base": base, "run_dir": base / "teacher", "train": train_set, "held_out": held_out}


@pytest.mark.slow
def test_identity_teacher_outputs_are_the_model_outputs_and_loss_is_zero_on_a_match(teacher_run):
    from convert.checkpoints import load_trained_model
    from convert.distill import distillation_loss

    model, config = load_trained_model(teacher_run["run_dir"])
    teacher = Teacher(model, config, config)
    images = np.random.default_rng(0).uniform(-1, 1, (2, TEACHER_SIZE, TEACHER_SIZE, 3)).astype(np.float32)
    box, logits = teacher.targets(images)
    ref_box, ref_logits = model(images, training=False)
    np.testing.assert_array_equal(box.numpy(), ref_box.numpy())
    np.testing.assert_array_equal(logits.numpy(), ref_logits.numpy())
    for kind in ("sigmoid", "softmax"):
        same = [float(v) for v in distillation_loss(box, logits, box, logits, DistillConfig(), kind)]
        assert same == pytest.approx([0.0, 0.0], abs=1e-5)
        off = [float(v) for v in distillation_loss(box + 1.0, -logits, box, logits,
                                                   DistillConfig(box_confidence=0.0), kind)]
        assert off[0] > 0.01 and off[1] == pytest.approx(4 * 0.5, rel=1e-5)  # Huber of 1 on 4 coordinates


def _distances(model, config: SSDConfig, teacher: Teacher, dataset, confidence: float) -> tuple[float, float]:
    """Mean |sigmoid(student) - sigmoid(teacher)| over all anchors and columns, and the mean absolute
    box-encoding difference on the anchors the teacher calls foreground with more than ``confidence``."""
    from convert.pipeline import InputPipeline

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    class_diffs, box_diffs = [], []
    # Unaugmented, in sample order: the teacher-size pipeline's images are the teacher's views of these.
    views = InputPipeline(dataset, teacher.config).eval_dataset(8)
    for (images, _, ok), (teacher_images, _, _) in zip(InputPipeline(dataset, config).eval_dataset(8), views):
        teacher_box, teacher_logits = (t.numpy() for t in teacher.targets(images, teacher_images))
        box, logits = (t.numpy() for t in model(images, training=False))
        keep = ok.numpy()
        class_diffs.append(np.abs(sig(logits) - sig(teacher_logits))[keep].reshape(-1))
        confident = (sig(teacher_logits)[..., 1:].max(-1) > confidence) & keep[:, None]
        box_diffs.append(np.abs(box - teacher_box)[confident].reshape(-1))
    box_diffs = np.concatenate(box_diffs)
    assert box_diffs.size >= 4 * 20, "the teacher is confident about too few anchors to compare boxes"
    return float(np.concatenate(class_diffs).mean()), float(box_diffs.mean())


@pytest.mark.slow
def test_distillation_brings_the_student_closer_to_the_teacher(teacher_run):
    from convert.checkpoints import load_trained_model
    from convert.train import train

    base, run_dir = teacher_run["base"], teacher_run["run_dir"]
    results = {}
    for name, use_teacher in (("plain", False), ("distilled", True)):
        config = SSDConfig.create(CLASSES, input_size=STUDENT_SIZE, width=WIDTH)
        teacher = Teacher.from_run(run_dir, config) if use_teacher else None
        result = train(config, teacher_run["train"], base / name, epochs=1, steps_per_epoch=STUDENT_STEPS,
                       batch_size=BATCH, learning_rate=LR, seed=0, verbose=0, teacher=teacher,
                       distill=DistillConfig(box_confidence=BOX_CONFIDENCE) if use_teacher else None)
        model, student_config = load_trained_model(base / name)
        measure = Teacher.from_run(run_dir, student_config)  # the same teacher judges both students
        results[name] = _distances(model, student_config, measure, teacher_run["held_out"], BOX_CONFIDENCE)
        results[name + "_history"] = result.history[-1]
    print(f"\nheld-out distance to the teacher after {STUDENT_STEPS} steps "
          f"(class |sigmoid| diff, box encoding diff): plain {results['plain']}, distilled {results['distilled']}; "
          f"last epoch plain: {results['plain_history']}, distilled: {results['distilled_history']}")
    assert results["distilled"][0] < results["plain"][0]
    assert results["distilled"][1] < results["plain"][1]
    recorded = json.loads((base / "distilled" / "config.json").read_text())["training"]["distillation"]
    assert recorded["teacher"] == str(run_dir) and recorded["mapping"] == MAX_IOU
    assert recorded["weight"] == 1.0 and recorded["temperature"] == 2.0
    assert results["distilled_history"]["distill_loss"] > 0
    assert "distill_loss" not in results["plain_history"]
    assert "distillation" not in json.loads((base / "plain" / "config.json").read_text())["training"]


def test_a_teacher_of_another_size_sees_the_same_crop_from_the_source_pixels(tmp_path):
    import cv2

    from convert.data.synth import write_synthetic_voc
    from convert.pipeline import InputPipeline

    dataset = write_synthetic_voc(tmp_path / "data", 8, classes=CLASSES, size=TEACHER_SIZE, seed=4)
    student = SSDConfig.create(CLASSES, input_size=STUDENT_SIZE, width=WIDTH)
    teacher = SSDConfig.create(CLASSES, input_size=TEACHER_SIZE, width=WIDTH)

    # Unaugmented: the teacher's view is the source image at the teacher's size (here its own pixels).
    image, _, _, view = InputPipeline(dataset, student, teacher_config=teacher).read(0)
    source = cv2.cvtColor(cv2.imread(str(dataset.samples[0].image_path)), cv2.COLOR_BGR2RGB)
    assert image.shape == (STUDENT_SIZE, STUDENT_SIZE, 3)
    np.testing.assert_array_equal(view, source)
    assert InputPipeline(dataset, student, teacher_config=student).read(0)[3] is None  # same size: no view
    assert InputPipeline(dataset, student).read(0)[3] is None

    # Augmented batches: each view went through its student image's crop, flip and colour jitter.
    pipeline = InputPipeline(dataset, student, augment=True, crop_probability=1.0, teacher_config=teacher)
    images, targets = next(iter(pipeline.training_dataset(8, seed=3)))
    views = targets["teacher_images"].numpy()
    assert views.shape == (8, TEACHER_SIZE, TEACHER_SIZE, 3) and np.abs(views).max() <= 1.0
    shrunk = np.stack([cv2.resize(v, (STUDENT_SIZE, STUDENT_SIZE), interpolation=cv2.INTER_AREA) for v in views])
    matched = np.abs(shrunk - images.numpy()).mean(axis=(1, 2, 3))
    mismatched = np.abs(shrunk - np.roll(images.numpy(), 1, axis=0)).mean(axis=(1, 2, 3))
    print(f"teacher view vs its student image (mean abs, [-1, 1] units): {matched.max():.4f}; "
          f"vs another image: {mismatched.min():.4f}")
    assert matched.max() < 0.03 and mismatched.min() > 4 * matched.max()


def _images_only(dataset, folder: Path, count: int) -> Path:
    folder.mkdir()
    for sample in dataset.samples[:count]:
        shutil.copy(sample.image_path, folder / sample.image_path.name)
    return folder


@pytest.mark.slow
def test_pseudo_labels_are_the_teachers_confident_detections(teacher_run, tmp_path):
    from convert.data import load_dataset
    from convert.data.pseudo import images_only, write_pseudo_labels
    from convert.evaluate import predict_keras

    folder = _images_only(teacher_run["held_out"], tmp_path / "images", 8)
    assert images_only(folder) and not images_only(teacher_run["base"] / "held_out")
    config = SSDConfig.load(teacher_run["run_dir"])
    teacher = Teacher.from_run(teacher_run["run_dir"], config)
    score = 0.3
    dataset, labelled = write_pseudo_labels(teacher, folder, tmp_path / "out", score=score)
    assert labelled.images == 8 and not labelled.skipped and labelled.objects > 0, labelled
    again = load_dataset(tmp_path / "out")  # a plain VOC folder to the ordinary reader
    assert len(again.samples) == 8 and set(again.labels) <= set(CLASSES)

    reference = load_dataset(teacher_run["base"] / "held_out").subset(range(8))
    predictions, indices = predict_keras(teacher.model, config, reference, score_threshold=score)
    by_name = {reference.samples[i].image_path.name: p for p, i in zip(predictions, indices)}
    for sample in dataset.samples:
        boxes, scores, ids = by_name[sample.image_path.name]
        assert np.all(scores >= score)
        np.testing.assert_allclose(sample.boxes, boxes, atol=0.06)
        np.testing.assert_array_equal(sample.class_ids, ids)
        assert (tmp_path / "out" / "JPEGImages" / sample.image_path.name).is_file()


@pytest.mark.slow
def test_edge_train_on_unlabelled_images_with_a_teacher(teacher_run, tmp_path):
    # A child process: edge train configures the GPUs first, before any TensorFlow use, which this
    # process (it trained the teacher) is past.
    folder = _images_only(teacher_run["held_out"], tmp_path / "images", 6)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "edge.cli", "train", "--data", str(folder), "--teacher", str(teacher_run["run_dir"]), "--out", str(out),
            "--input-size", str(TEACHER_SIZE), "--width", str(WIDTH), "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "2", "--val-split", "0", "--backbone-weights", "none", "--pseudo-label-score", "0.3",
            "--temperature", "3", "--quiet"]
    child = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
                           text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "pseudo-labels:" in child.stdout and "anchors by identity" in child.stdout
    assert len(list((out / "pseudo_labels" / "Annotations").glob("*.xml"))) == 6
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["distillation"]["mapping"] == IDENTITY and training["distillation"]["temperature"] == 3.0
    assert training["pseudo_labels"]["score"] == 0.3 and training["pseudo_labels"]["labelled_images"] == 6
    assert training["final"]["steps"] == 2
