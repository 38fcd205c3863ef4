"""Our trained SSD -> float, int8 and pruned-int8 TFLite: sizes, sparsity, accuracy, runtime contract.

One small model (MobileNetV2 0.35, 160 px) is trained once per session on synthetic shapes (the
``trained_run`` fixture in conftest.py); each variant is converted once and shared by the tests (each
conversion is ~25-35 s on 2 cores).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _convert(trained_run, tmp_path_factory, name: str, *extra: str):
    from convert.conversion import ConvertOptions, convert
    from convert.head import PostprocessOptions

    run_dir, train_dir, val_dir = trained_run
    out = tmp_path_factory.mktemp(name) / f"{name}.tflite"
    options = ConvertOptions(source=run_dir, output=out, calib=train_dir, val=val_dir, data=train_dir,
                             sparsity=0.0, postprocess=PostprocessOptions(), latency_runs=5)
    for key, value in zip(extra[::2], extra[1::2]):
        setattr(options, key, value)
    report = convert(options, log=lambda _: None)
    return out, report


@pytest.fixture(scope="session")
def int8_model(trained_run, tmp_path_factory):
    return _convert(trained_run, tmp_path_factory, "int8")


@pytest.fixture(scope="session")
def pruned_int8_model(trained_run, tmp_path_factory):
    return _convert(trained_run, tmp_path_factory, "pruned_int8", "sparsity", 0.5, "prune_steps", 60)


def test_int8_is_small_accurate_and_takes_raw_pixels(int8_model):
    out, report = int8_model
    float_entry, int8_entry = report["models"]["float"], report["models"]["int8-ptq"]
    assert float_entry["eval"]["map50"] > 0.15, "the test model must detect something for the comparison to mean anything"
    ratio = int8_entry["stats"]["size_bytes"] / float_entry["stats"]["size_bytes"]
    # Weights shrink 4x, but each output channel's float32 scale + int64 zero point (kernel and
    # bias) and its int32 bias do not: measured 0.390 for this 0.35-width model, 0.307 at width 1.0
    # (benchmarks/int8_size_by_width.py), so 0.30 is out of reach for any width of this SSDLite.
    assert ratio <= 0.40, ratio
    # int8 must stay close to float. This 330-step model's weights differ from CPU to CPU (the same
    # code gave int8 1.2 points better on one machine, 2.8 points worse on another, on 80 images
    # where one box is ~1 point), so the test holds a 3-point bound; the 1-point bar is met by the
    # fully trained demo model (int8 94.7 vs float 94.5 mAP@0.5, benchmarks/results/convert_variants.md).
    assert report["map_drop"]["map50_points"] <= 3.0, report["map_drop"]
    assert int8_entry["stats"]["input"] == {"dtype": "uint8", "shape": [1, 160, 160, 3], "scale": 1.0, "zero_point": 0}
    assert out.is_file() and out.with_name("int8.report.json").is_file()
    saved = json.loads(out.with_name("int8.report.json").read_text())
    assert saved["models"]["int8-ptq"]["stats"]["size_bytes"] == out.stat().st_size


def test_int8_metadata_is_all_the_runtime_needs(int8_model, trained_run):
    from convert.config import SSDConfig
    from edge.contract.tflite_file import load_model_info

    out, _ = int8_model
    info = load_model_info(out)
    config = SSDConfig.load(trained_run[0])
    assert info.labels == config.labels
    assert (info.normalization.mean, info.normalization.std) == (0.0, 1.0)
    assert info.anchors == config.anchors and info.head == "postprocess"
    assert info.postprocess["max_detections"] == 100 and info.postprocess["num_classes"] == 3
    assert info.provenance["quantization"] == "int8-ptq"
    assert info.provenance["sparsity"]["target"] == 0.0
    assert info.provenance["versions"]["tensorflow-model-optimization"]


def test_detector_finds_a_drawn_shape_with_the_int8_model(int8_model):
    from edge.detector.detector import Detector
    from edge.live.synthetic import draw_shape

    out, _ = int8_model
    frame = np.full((240, 320, 3), 40, np.uint8)
    x0, y0, x1, y1 = draw_shape(frame, "square", 160, 120, 110, (0, 200, 255))
    detector = Detector(out, score_threshold=0.2)
    dets = detector.detect(frame)
    assert dets.count >= 1
    boxes = dets.boxes[:dets.count]
    ix = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    inter = ix * iy
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (x1 - x0) * (y1 - y0) - inter
    assert float(np.max(inter / union)) > 0.5


def test_pruning_halves_conv_kernels_and_pays_after_gzip(pruned_int8_model, int8_model):
    _, pruned = pruned_int8_model
    _, dense = int8_model
    achieved = pruned["sparsity"]["achieved"]
    assert achieved["by_kind"]["Conv2D"] == pytest.approx(0.5, abs=0.02)
    assert achieved["by_kind"].get("DepthwiseConv2D", 0.0) < 0.05  # TFMOT never prunes depthwise kernels
    file_sparsity = pruned["models"]["int8-ptq"]["stats"]["sparsity"]
    assert file_sparsity["by_kind"]["Conv2D"] > 0.45  # the zeros survive quantization into the file
    pruned_stats, dense_stats = pruned["models"]["int8-ptq"]["stats"], dense["models"]["int8-ptq"]["stats"]
    # The filters themselves: pruning pays after compression (measured 0.74: depthwise filters,
    # a quarter of this model's weights, stay dense).
    assert pruned_stats["weights_gzip_bytes"] <= 0.78 * dense_stats["weights_gzip_bytes"]
    # The whole file: a 0.35-width MobileNet carries ~24k per-channel scales (+ int64 zero points,
    # int32 biases) that gzip cannot shrink, so the file saves less (measured 0.78; wider models
    # come closer to the filters' ratio, see benchmarks/results/convert_variants.md).
    assert pruned_stats["gzip_bytes"] <= 0.80 * dense_stats["gzip_bytes"]
    assert pruned["map_drop"]["map50_points"] < 10.0  # BN statistics follow the pruned weights


def test_one_savedmodel_per_set_of_weights(trained_run, tmp_path):
    """The float reference and an int8 model of the same weights convert from one SavedModel (saving
    traces every layer); weights that changed get a SavedModel of their own."""
    from convert.conversion import _saved_module
    from convert.conversion_plan import plan
    from convert.convert_options import ConvertOptions
    from convert.head import PostprocessOptions

    run_dir, train_dir, _ = trained_run
    built = plan(ConvertOptions(source=run_dir, output=tmp_path / "m.tflite", calib=train_dir, sparsity=0.0,
                                postprocess=PostprocessOptions()), log=lambda _: None)
    model = built.source.model  # loaded from the run directory for this plan alone
    first = _saved_module(built, model, tmp_path, "float")
    assert _saved_module(built, model, tmp_path, "output") == first
    assert sorted(p.name for p in tmp_path.glob("*_savedmodel")) == ["float_savedmodel"]
    kernel = next(w for w in model.weights if "kernel" in w.name)
    kernel.assign(kernel * 0.5)
    changed = _saved_module(built, model, tmp_path, "pruned")
    assert changed != first and changed.name == "pruned_savedmodel"


def test_float_export_and_detect_command_run_all_variants(int8_model, pruned_int8_model, trained_run,
                                                          tmp_path_factory, capsys):
    from edge.cli import main

    float_out, report = _convert(trained_run, tmp_path_factory, "float32", "float_model", True)
    assert report["quantization"] == "float32"
    assert report["models"]["output"]["stats"]["input"]["dtype"] == "float32"
    image = next((trained_run[2] / "JPEGImages").iterdir())
    for model in (float_out, int8_model[0], pruned_int8_model[0]):
        capsys.readouterr()
        assert main(["detect", "--model", str(model), str(image)]) == 0
        assert image.name in capsys.readouterr().out


def test_tf2_saved_model_export_gets_our_attributes(tmp_path):
    """A SavedModel shaped like export_tflite_graph_tf2.py output (normalised input, OD API's op defaults)."""
    import tensorflow as tf

    from convert.config import SSDConfig
    from convert.conversion import ConvertOptions, convert
    from convert.head import PostprocessOptions
    from convert.model import build_ssd
    from convert.tflite_edit import read_postprocess_attributes
    from edge.contract.anchors import generate_anchors
    from edge.detector.detector import Detector

    config = SSDConfig.create(["circle", "square", "triangle"], input_size=128, width=0.35)
    model = build_ssd(config)
    from convert.export import postprocess_function, weights_only

    odapi_attrs = {"max_detections": 10, "max_classes_per_detection": 1, "use_regular_nms": False,
                   "nms_score_threshold": 1e-8, "nms_iou_threshold": 0.6, "y_scale": 10.0, "x_scale": 10.0,
                   "h_scale": 5.0, "w_scale": 5.0, "num_classes": 3}
    post = postprocess_function(odapi_attrs)
    anchors = tf.constant(generate_anchors(config.anchors))
    module = tf.Module()
    module.model = weights_only(model)  # the variables alone: saving the Keras model traces every layer

    @tf.function(input_signature=[tf.TensorSpec([1, 128, 128, 3], tf.float32, name="input")])
    def inference(image):
        box, logits = model(image, training=False)
        return post(box, tf.sigmoid(logits), anchors)

    export_dir = tmp_path / "saved_model"
    tf.saved_model.save(module, str(export_dir), signatures=inference.get_concrete_function())
    labels = tmp_path / "labels.txt"
    labels.write_text("circle\nsquare\ntriangle\n")
    out = tmp_path / "tf2.tflite"
    convert(ConvertOptions(source=export_dir, output=out, float_model=True, labels=labels,
                           postprocess=PostprocessOptions(max_detections=25, score_threshold=0.2), latency_runs=2),
            log=lambda _: None)
    attrs = read_postprocess_attributes(out.read_bytes())
    assert attrs["max_detections"] == 25 and attrs["nms_score_threshold"] == pytest.approx(0.2)
    detector = Detector(out, score_threshold=0.0)
    assert detector.detections.capacity == 25
    assert detector.labels == ["circle", "square", "triangle"]
    detector.detect(np.zeros((128, 128, 3), np.uint8))


def test_calibration_input_range_is_exact(tmp_path):
    from convert.quantize import list_images, load_calibration_frames

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((50, 70, 3), 100 + i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    frames = load_calibration_frames(list_images(tmp_path), 32, 32)
    assert len(frames) == 3 and frames[0].shape == (1, 32, 32, 3) and frames[0].dtype == np.float32
    assert frames[0].min() == 0.0 and frames[0].max() == 255.0
    assert float(frames[1].mean()) == pytest.approx(101.0)
