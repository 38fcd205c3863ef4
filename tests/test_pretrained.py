"""Pretrained weights from disk (convert.pretrained): a real OD API export and Keras weights files mapped
onto our SSDLite by name, checked against the export's own tensors, all or nothing; and the freezing
policy of ``edge train --freeze-backbone-epochs``.

The frozen-graph tests read ``../shared/fixtures/odapi/ssdlite_mobilenet_v2_person_frozen.pb`` in place
(skipped, saying why, where it is absent). Keras weights files are written here from untrained
tf-keras MobileNetV2s (``save_weights``), the format of the ``imagenet`` download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from convert.config import SSDConfig
from edge.errors import EdgeError

# Measured on the fixture (astronaut, 300 px, 2 x86 cores): <= 1.4e-5 for every feature map and head
# output; float32 kernels differ in summation order, a wrong tensor is off by > 0.1.
TOLERANCE = 1e-4
SIZE, WIDTH = 160, 0.35  # the tiny model of tests/test_train.py


def _astronaut(size: int) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    image = cv2.resize(skimage_data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    return ((image.astype(np.float32) - 127.5) / 127.5)[None]


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def _keras_weights(path, width: float, size: int = SIZE):
    """An untrained tf-keras MobileNetV2 (no top) and its weights saved as .h5, like the imagenet file."""
    from convert.tf import import_keras

    reference = import_keras().applications.MobileNetV2(input_shape=(size, size, 3), alpha=width,
                                                        include_top=False, weights=None)
    reference.save_weights(str(path))
    return reference


def _layer_names(h5_file) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in h5_file.attrs["layer_names"]]


# ---------------------------------------------------------------- the OD API frozen graph

@pytest.mark.slow
def test_feature_maps_and_heads_equal_the_frozen_graphs_own_tensors(odapi_frozen_graph):
    from convert.model import build_ssd
    from convert.odapi import load_frozen_graph
    from convert.pretrained import InitFrom
    from convert.pretrained_sources import read_export
    from convert.pretrained_verify import compare_with_frozen_graph
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    config = SSDConfig.create(["person"], input_size=300, width=1.0)
    model = build_ssd(config, backbone_weights=InitFrom(str(odapi_frozen_graph)))
    report = model.pretrained_report
    assert report.parts == ["backbone", "extras", "heads"] and report.layers == 164 and report.tensors == 404
    assert max(report.max_abs_diff.values()) < TOLERANCE  # the load-time check on its probe image

    image = _astronaut(300)
    diffs = compare_with_frozen_graph(model, read_export(odapi_frozen_graph), heads=True, image=image)
    print("max abs diff vs the export, astronaut 300 px:",
          ", ".join(f"{name} {value:.2e}" for name, value in diffs.items()))
    feature_maps = ["block_13_expand_relu", "out_relu"] + [f"extra_{k}_expand_relu" for k in range(4)]
    assert set(feature_maps) <= set(diffs)  # all six SSD feature maps, strides 16 to 300
    assert {f"{head}_{i}_pw" for head in ("box", "class") for i in range(6)} <= set(diffs)
    assert max(diffs.values()) < TOLERANCE, diffs

    # End to end: our outputs are the graph's raw head (concat / concat_1), anchor for anchor.
    network = load_frozen_graph(odapi_frozen_graph).network
    their_boxes, their_logits = (np.asarray(t) for t in network(tf.constant(image)))
    our_boxes, our_logits = (np.asarray(t) for t in model(image, training=False))
    assert our_boxes.shape == their_boxes.shape == (1, 1917, 4)
    print(f"raw head vs concat/concat_1: boxes {np.abs(our_boxes - their_boxes).max():.2e}, "
          f"logits {np.abs(our_logits - their_logits).max():.2e}")
    assert np.abs(our_boxes - their_boxes).max() < TOLERANCE
    assert np.abs(our_logits - their_logits).max() < TOLERANCE
    assert our_logits[0, :, 1].max() > 2.0  # the astronaut, as a person (sigmoid ~0.9)


@pytest.mark.slow
def test_backbone_only_at_a_small_input_keeps_our_heads(odapi_frozen_graph):
    from convert.model import build_ssd

    config = SSDConfig.create(["cat", "dog"], input_size=SIZE, width=1.0)
    fresh = build_ssd(config)
    model = build_ssd(config, backbone_weights=str(odapi_frozen_graph))
    report = model.pretrained_report
    assert report.parts == ["backbone", "extras"] and report.layers == 128
    assert len(report.max_abs_diff) == 6 and max(report.max_abs_diff.values()) < TOLERANCE
    assert "verified 6 outputs" in report.describe()
    # Heads untouched: still the focal-loss prior, not the export's person logits.
    np.testing.assert_array_equal(model.get_layer("class_0_pw").get_weights()[1],
                                  fresh.get_layer("class_0_pw").get_weights()[1])
    fpn = build_ssd(SSDConfig.create(["cat"], input_size=SIZE, width=1.0, fpn=True),
                    backbone_weights=str(odapi_frozen_graph))
    assert fpn.pretrained_report.parts == ["backbone"] and len(fpn.pretrained_report.max_abs_diff) == 2


@pytest.mark.slow
def test_load_time_check_holds_under_mixed_precision(odapi_frozen_graph):
    """mixed_float16 layers differ from the export by ~0.05; the check compares their float32 twin."""
    from convert.model import build_ssd
    from convert.tf import import_keras

    keras = import_keras()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_ssd(SSDConfig.create(["person"], input_size=SIZE, width=1.0), backbone_weights=str(odapi_frozen_graph))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("Conv1").compute_dtype == "float16"
    assert max(model.pretrained_report.max_abs_diff.values()) < TOLERANCE


@pytest.mark.slow
def test_a_mismatched_export_is_one_line_and_loads_nothing(odapi_frozen_graph):
    from convert.model import build_ssd
    from convert.pretrained import InitFrom

    with pytest.raises(EdgeError) as exc:  # our width 0.35 against the export's 1.0
        build_ssd(SSDConfig.create(["person"], input_size=SIZE, width=WIDTH), backbone_weights=str(odapi_frozen_graph))
    text = _one_line(exc)
    assert text.startswith("--backbone-weights ") and "differ in shape" in text and "--width" in text
    assert "nothing loaded" in text
    with pytest.raises(EdgeError) as exc:  # heads for 1 class into a 2-class model
        build_ssd(SSDConfig.create(["cat", "dog"], input_size=SIZE, width=1.0),
                  backbone_weights=InitFrom(str(odapi_frozen_graph)))
    assert "--init-from" in _one_line(exc) and "1 class(es), the model 2" in str(exc.value)


def _rewrite_graph(source, target, keep=lambda node: True, rename=lambda name: name) -> None:
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(source.read_bytes())
    out = tf.compat.v1.GraphDef()
    for node in graph_def.node:
        if keep(node):
            copy = out.node.add()
            copy.CopyFrom(node)
            copy.name = rename(node.name)
    target.write_bytes(out.SerializeToString())


@pytest.mark.slow
def test_a_partial_export_is_one_line_and_loads_nothing(odapi_frozen_graph, tmp_path):
    from convert.model import build_ssd
    from convert.pretrained import load_pretrained

    partial = tmp_path / "partial.pb"  # the last inverted-residual block's variables gone
    _rewrite_graph(odapi_frozen_graph, partial,
                   keep=lambda n: not (n.op == "Const" and "/expanded_conv_16/" in n.name))
    config = SSDConfig.create(["person"], input_size=SIZE, width=1.0)
    model = build_ssd(config)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(EdgeError) as exc:
        load_pretrained(model, partial)
    text = _one_line(exc)
    assert "partial match, 15 of 320 tensors" in text and "expanded_conv_16/" in text and "nothing loaded" in text
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    other = tmp_path / "other_net.pb"  # another feature extractor altogether
    _rewrite_graph(odapi_frozen_graph, other, rename=lambda name: name.replace("MobilenetV2", "MobilenetV3"))
    with pytest.raises(EdgeError, match=r"not an SSD MobileNetV2 export .*MobilenetV3"):
        build_ssd(config, backbone_weights=other)
    with pytest.raises(EdgeError) as exc:
        build_ssd(config, backbone_weights=tmp_path / "absent.pb")
    assert _one_line(exc) == f"--backbone-weights {tmp_path / 'absent.pb'}: no such file or folder"


# ---------------------------------------------------------------- Keras weights files (.h5)

@pytest.mark.slow
def test_keras_h5_file_loads_by_layer_name(tmp_path):
    from convert.model import build_ssd
    from convert.pretrained_names import backbone_layer_names
    from convert.tf import import_keras

    keras = import_keras()
    saved = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_160_no_top.h5"
    reference = _keras_weights(saved, WIDTH)
    # By name, not by position: the same groups listed in reverse, plus a layer we do not have.
    shuffled = tmp_path / "reversed.h5"
    with h5py.File(saved, "r") as src, h5py.File(shuffled, "w") as dst:
        names = _layer_names(src)[::-1]
        for name in names:
            src.copy(src[name], dst, name=name)
        extra = dst.create_group("Logits")
        extra.attrs["weight_names"] = np.array([b"Logits/kernel:0"])
        extra.create_dataset("Logits/kernel:0", data=np.zeros((1280, 10), np.float32))
        dst.attrs["layer_names"] = np.array([n.encode() for n in names + ["Logits"]])
        for key in ("backend", "keras_version"):
            dst.attrs[key] = src.attrs[key]

    config = SSDConfig.create(["circle", "square"], input_size=SIZE, width=WIDTH)
    for path in (saved, shuffled):
        model = build_ssd(config, backbone_weights=str(path))
        assert model.pretrained_report.kind == "keras_h5" and model.pretrained_report.layers == 104
        for name, _, _ in backbone_layer_names():
            for ours, theirs in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
                np.testing.assert_array_equal(ours, theirs)
    assert model.pretrained_report.unused == 1  # Logits
    trunk = keras.Model(model.input, model.get_layer("out_relu").output)
    image = _astronaut(SIZE)
    assert float(np.abs(np.asarray(trunk(image)) - np.asarray(reference(image))).max()) == 0.0


@pytest.mark.slow
def test_keras_h5_of_another_width_or_missing_layers_is_one_line(tmp_path):
    from convert.model import build_ssd

    wide = tmp_path / "wide.h5"
    _keras_weights(wide, 1.0)
    config = SSDConfig.create(["circle"], input_size=SIZE, width=WIDTH)
    with pytest.raises(EdgeError) as exc:
        build_ssd(config, backbone_weights=str(wide))
    assert "differ in shape" in _one_line(exc) and "_no_top.h5" in str(exc.value)

    cut = tmp_path / "cut.h5"
    _keras_weights(cut, WIDTH)
    with h5py.File(cut, "r+") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in _layer_names(f) if not n.startswith("block_16")])
    with pytest.raises(EdgeError) as exc:
        build_ssd(config, backbone_weights=str(cut))
    assert "partial match, 15 of 260 tensors" in _one_line(exc) and "block_16_expand/kernel" in str(exc.value)


@pytest.mark.slow
def test_tf2_checkpoint_layout_maps_the_backbone(tmp_path):
    """TF2 OD API checkpoints key the backbone by object path; written here in that layout (no real
    TF2 export is in the fixtures, so this checks our reader, not a zoo file)."""
    from convert.model import build_ssd
    from convert.tf import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    reference = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=WIDTH, include_top=False,
                                               weights=None)
    feature_extractor = tf.Module()
    feature_extractor.classification_backbone = keras.Model(
        reference.input, [reference.get_layer("block_13_expand_relu").output, reference.output])
    detection_model = tf.Module()
    detection_model._feature_extractor = feature_extractor
    tf.train.Checkpoint(model=detection_model).save(str(tmp_path / "export" / "checkpoint" / "ckpt"))

    config = SSDConfig.create(["circle"], input_size=SIZE, width=WIDTH)
    model = build_ssd(config, backbone_weights=str(tmp_path / "export"))
    assert model.pretrained_report.kind == "odapi_tf2" and model.pretrained_report.layers == 104
    trunk = keras.Model(model.input, model.get_layer("out_relu").output)
    image = _astronaut(SIZE)
    assert float(np.abs(np.asarray(trunk(image)) - np.asarray(reference(image))).max()) == 0.0


# ---------------------------------------------------------------- freezing

@pytest.mark.slow
def test_freezing_flags_and_batchnorm_policy(tmp_path):
    from convert.model import build_ssd
    from convert.pretrained_names import backbone_layer_names
    from convert.steps import make_optimizer
    from convert.tf import import_tensorflow
    from convert.train import _BackboneFreezing

    tf = import_tensorflow()
    weights = tmp_path / "w.h5"
    _keras_weights(weights, WIDTH)
    config = SSDConfig.create(["circle"], input_size=SIZE, width=WIDTH)
    model = build_ssd(config, backbone_weights=str(weights))
    everything = len(model.trainable_variables)
    trunk = [model.get_layer(name) for name, _, _ in backbone_layer_names()]
    bn = [layer for layer in trunk if "BN" in layer.name or "bn" in layer.name]
    assert len(bn) == 52

    optimizer = make_optimizer(1e-3, 10)
    small = _BackboneFreezing(model, optimizer, tf.distribute.get_strategy(), str(weights), 2, batch_per_replica=8)
    assert len(optimizer.variables()) > 2 * everything  # Adam slots for every variable, frozen ones too
    assert small.apply(0) and small.describe() == "frozen"
    assert not any(layer.trainable for layer in trunk)
    assert len(model.trainable_variables) == everything - 52 * 3  # no trunk kernel, gamma or beta left
    assert not small.apply(1)  # epoch 1: still frozen, nothing to retrace
    assert small.apply(2) and small.describe() == "trainable, BN frozen"
    assert all(layer.trainable != (layer in bn) for layer in trunk)
    assert len(model.trainable_variables) == everything - 52 * 2  # BN gamma/beta of the trunk stay fixed

    large = _BackboneFreezing(model, optimizer, tf.distribute.get_strategy(), str(weights), 1, batch_per_replica=16)
    assert large.apply(0) and large.apply(1) and large.describe() == "trainable"
    assert all(layer.trainable for layer in trunk) and len(model.trainable_variables) == everything

    random_init = _BackboneFreezing(model, optimizer, tf.distribute.get_strategy(), "none", 0, batch_per_replica=2)
    assert not random_init.active and not random_init.apply(0)  # a random backbone's BN always trains
    with pytest.raises(EdgeError, match="needs pretrained --backbone-weights"):
        _BackboneFreezing(model, optimizer, tf.distribute.get_strategy(), "none", 1, batch_per_replica=8)


@pytest.mark.slow
def test_two_epoch_run_freezes_then_unfreezes_the_backbone(tmp_path):
    from convert.data.synth import write_synthetic_voc
    from convert.model import build_ssd
    from convert.tf import import_keras, import_tensorflow
    from convert.train import train

    tf = import_tensorflow()
    weights = tmp_path / "w.h5"
    reference = _keras_weights(weights, WIDTH)
    dataset = write_synthetic_voc(tmp_path / "data", 24, classes=["circle", "square"], size=SIZE, seed=3)
    config = SSDConfig.create(dataset.labels, input_size=SIZE, width=WIDTH)
    steps, batch = 3, 4
    result = train(config, dataset, tmp_path / "run", epochs=2, batch_size=batch, steps_per_epoch=steps,
                   backbone_weights=str(weights), freeze_backbone_epochs=1, augment=False, verbose=0, workers=1)
    assert [e["backbone"] for e in result.history] == ["frozen", "trainable, BN frozen"]
    assert SSDConfig.load(tmp_path / "run").training["backbone_weights"] == str(weights)

    def restored(step: int):
        model = build_ssd(config)
        tf.train.Checkpoint(model=model).restore(str(tmp_path / "run" / "checkpoints" / f"ckpt-{step}")).expect_partial()
        return model

    after_frozen, after_unfrozen = restored(steps), restored(2 * steps)
    for name in ("Conv1", "block_8_expand", "Conv_1"):  # frozen epoch: as loaded; then trained
        np.testing.assert_array_equal(after_frozen.get_layer(name).get_weights()[0], reference.get_layer(name).get_weights()[0])
        assert not np.array_equal(after_unfrozen.get_layer(name).get_weights()[0], reference.get_layer(name).get_weights()[0])
    for name in ("bn_Conv1", "block_8_expand_BN", "Conv_1_bn"):  # batch 4: statistics never move
        for ours, theirs in zip(after_unfrozen.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    # The heads learned in both epochs (the start rebuilt with train()'s seed).
    import_keras().utils.set_random_seed(0)
    start = build_ssd(config, backbone_weights=str(weights)).get_layer("box_0_pw").get_weights()[0]
    head = [m.get_layer("box_0_pw").get_weights()[0] for m in (after_frozen, after_unfrozen)]
    assert not np.array_equal(start, head[0]) and not np.array_equal(head[0], head[1])


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _person_voc(folder, images: dict, references, score: float) -> None:
    """A VOC folder of ``images`` (name -> RGB) whose person boxes are the export's own detections."""
    (folder / "JPEGImages").mkdir(parents=True)
    (folder / "Annotations").mkdir()
    (folder / "labels.txt").write_text("person\n")
    for (name, image), found in zip(images.items(), references):
        h, w = image.shape[:2]
        objects = "".join(
            f"<object><name>person</name><difficult>0</difficult><bndbox><xmin>{x0 * w:.1f}</xmin>"
            f"<ymin>{y0 * h:.1f}</ymin><xmax>{x1 * w:.1f}</xmax><ymax>{y1 * h:.1f}</ymax></bndbox></object>"
            for (y0, x0, y1, x1), s in zip(found["boxes"], found["scores"]) if s >= score)
        cv2.imwrite(str(folder / "JPEGImages" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        (folder / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")


@pytest.mark.slow
def test_person_detector_fine_tuned_from_its_backbone_and_heads_converts_and_finds_the_astronaut(
        odapi_frozen_graph, images_dir, tmp_path):
    """The whole small-data path a user takes: ``edge train --init-from`` the person export on a few
    labelled photos, ``edge convert`` to int8, ``edge detect``: the astronaut (never trained on) is
    still found where TensorFlow's own run of the export finds her."""
    from convert.odapi import run_frozen_graph_on_images
    from edge.cli import main
    from edge.detector.detector import Detector

    skimage_data = pytest.importorskip("skimage.data")
    train_images = {p.stem: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(images_dir.iterdir())}
    for name in ("camera", "chelsea", "coffee", "rocket"):  # one more person (grey), three without
        image = getattr(skimage_data, name)()
        train_images[name] = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image[..., :3]
    astronaut = skimage_data.astronaut()
    *train_refs, reference = run_frozen_graph_on_images(odapi_frozen_graph, [*train_images.values(), astronaut])
    # Labels as a user's annotator would give them: the export's boxes down to 0.4 keeps the two
    # distant kite flyers (0.41-0.44) that a 0.5 cut would leave as unlabelled people.
    _person_voc(tmp_path / "train", train_images, train_refs, score=0.4)
    _person_voc(tmp_path / "val", {"astronaut": astronaut}, [reference], score=0.5)
    assert sum(1 for p in (tmp_path / "train" / "Annotations").iterdir() if "<object>" in p.read_text()) >= 3

    run = tmp_path / "run"
    # A child process: edge train configures the GPUs before any TensorFlow use, which this process
    # (the labels above, earlier tests) is past.
    child = subprocess.run(
        [sys.executable, "-m", "edge.cli", "train", "--data", str(tmp_path / "train"), "--val-data", str(tmp_path / "val"),
         "--input-size", "300", "--width", "1.0", "--init-from", str(odapi_frozen_graph),
         "--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "4", "--lr", "2e-4",
         "--freeze-backbone-epochs", "1", "--workers", "1", "--quiet", "--out", str(run)],
        cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-2000:]
    config = SSDConfig.load(run)
    assert config.labels == ["person"] and config.training["backbone_weights"].startswith("init-from:")
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [e["step"] for e in history] == [6] and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    assert history[0]["val_map50"] == pytest.approx(1.0)  # the float model, on the held-out astronaut

    model = tmp_path / "person_int8.tflite"
    assert main(["convert", str(run), "-o", str(model), "--calib", str(tmp_path / "train" / "JPEGImages"),
                 "--val", str(tmp_path / "val"), "--sparsity", "0"]) == 0
    report = json.loads(model.with_suffix(".report.json").read_text())
    assert report["postprocess"] and report["quantization"].startswith("int8")
    assert report["models"]["int8-ptq"]["eval"]["map50"] == pytest.approx(1.0)  # validated on the astronaut

    h, w = astronaut.shape[:2]
    ymin, xmin, ymax, xmax = reference["boxes"][0]
    dets = Detector(model, score_threshold=0.5).detect(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    print(f"astronaut: fine-tuned int8 person {float(dets.scores[0]):.3f} (export {float(reference['scores'][0]):.3f}), "
          f"IoU {_iou(dets.boxes[0], (xmin * w, ymin * h, xmax * w, ymax * h)):.3f}")
    assert dets.count >= 1 and dets.label(0) == "person"
    assert _iou(dets.boxes[0], (xmin * w, ymin * h, xmax * w, ymax * h)) >= 0.8
    assert float(dets.scores[0]) >= 0.5


# ---------------------------------------------------------------- the CLI options

@pytest.mark.parametrize("extra,expected", [
    (["--init-from", "{graph}", "--fpn"], "drop --fpn"),
    (["--init-from", "{graph}", "--backbone-weights", "none"], "loads the backbone too"),
    (["--init-from", "{h5}"], "frozen graphs (.pb) only"),
    (["--backbone-weights", "{missing}"], "no such file or folder"),
    (["--freeze-backbone-epochs", "-1"], "must be 0 or more"),
])
def test_cli_refuses_bad_pretrained_options_in_one_line(tmp_path, capsys, extra, expected):
    from edge.cli import main

    h5 = tmp_path / "weights.h5"
    h5.write_bytes(b"")
    paths = {"graph": str(tmp_path / "graph.pb"), "h5": str(h5), "missing": str(tmp_path / "missing.pb")}
    (tmp_path / "graph.pb").write_bytes(b"")
    (tmp_path / "data").mkdir()
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")] + [a.format(**paths) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
