"""TF OD API imports: the real SSDLite MobileNetV2 frozen graph -> int8 TFLite that still finds the astronaut."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow

skimage_data = pytest.importorskip("skimage.data")


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.fixture(scope="module")
def person_model(tmp_path_factory, odapi_frozen_graph, calib_dir):
    from edge.cli import main

    out = tmp_path_factory.mktemp("odapi") / "person_int8.tflite"
    labels = out.parent / "labels.txt"
    labels.write_text("person\n")
    code = main(["convert", str(odapi_frozen_graph), "-o", str(out), "--calib", str(calib_dir),
                 "--labels", str(labels)])
    assert code == 0
    return out


def test_int8_frozen_graph_finds_the_astronaut_like_tensorflow(person_model, odapi_frozen_graph):
    from convert.odapi import run_frozen_graph
    from edge.detector.detector import Detector

    image = skimage_data.astronaut()
    reference = run_frozen_graph(odapi_frozen_graph, image)
    assert reference["scores"][0] > 0.8  # the fixture README: person 0.90
    h, w = image.shape[:2]
    ymin, xmin, ymax, xmax = reference["boxes"][0]
    ref_box = (xmin * w, ymin * h, xmax * w, ymax * h)

    detector = Detector(person_model, score_threshold=0.5)
    dets = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert dets.count >= 1
    assert dets.label(0) == "person"
    assert _iou(dets.boxes[0], ref_box) >= 0.8
    assert abs(float(dets.scores[0]) - float(reference["scores"][0])) < 0.1


def test_int8_model_contract_and_metadata(person_model, odapi_frozen_graph):
    from ai_edge_litert.interpreter import Interpreter

    from convert.tflite_edit import read_postprocess_attributes
    from edge.contract.tflite_file import POSTPROCESS_OP, load_model_info, read_tflite

    data = person_model.read_bytes()
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    # Raw camera pixels go straight in: uint8, scale 1, zero point 0.
    assert detail["dtype"] == np.uint8 and list(detail["shape"]) == [1, 300, 300, 3]
    assert detail["quantization"] == (1.0, 0)
    outputs = interpreter.get_signature_list()["serving_default"]["outputs"]
    assert sorted(outputs) == ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
    assert POSTPROCESS_OP in read_tflite(person_model).operators
    attrs = read_postprocess_attributes(data)
    assert attrs["max_detections"] == 100 and attrs["detections_per_class"] == 100
    assert attrs["nms_score_threshold"] == pytest.approx(0.05)
    assert attrs["nms_iou_threshold"] == pytest.approx(0.6)
    assert attrs["num_classes"] == 1

    info = load_model_info(person_model)
    assert info.labels == ["person"]
    assert (info.normalization.mean, info.normalization.std) == (0.0, 1.0)
    assert info.head == "postprocess"
    assert info.anchors is not None and info.anchors.num_anchors == 1917
    assert info.provenance["quantization"] == "int8-ptq"
    assert info.provenance["source_kind"] == "OD API frozen graph"
    assert info.provenance["versions"]["tensorflow"]
    report = json.loads(person_model.with_name("person_int8.report.json").read_text())
    assert report["models"]["int8-ptq"]["stats"]["size_bytes"] == len(data)
    assert report["models"]["int8-ptq"]["stats"]["size_bytes"] < 0.4 * report["models"]["float"]["stats"]["size_bytes"]


def test_graph_anchors_are_the_standard_300px_generator(odapi_frozen_graph):
    from convert.odapi import load_frozen_graph
    from edge.contract.anchors import AnchorConfig, generate_anchors

    graph = load_frozen_graph(odapi_frozen_graph)
    assert graph.input_size == (300, 300) and graph.num_classes == 1
    assert graph.score_conversion == "sigmoid"
    np.testing.assert_allclose(graph.anchors, generate_anchors(AnchorConfig.for_input(300)), atol=1e-4)
    assert graph.anchor_config == AnchorConfig.for_input(300)


def test_graphs_that_are_not_ssds_fail_in_one_line(tmp_path, capsys):
    import tensorflow as tf

    from edge.cli import main

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def double(x):
        return x * 2.0

    not_ssd = tmp_path / "classifier.pb"
    not_ssd.write_bytes(double.get_concrete_function().graph.as_graph_def().SerializeToString())
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(b"\x08\x96\x01 this is not a graph" * 10)
    calib = tmp_path / "calib"  # valid calibration images, so the graph is what gets refused
    calib.mkdir()
    cv2.imwrite(str(calib / "noise.png"), np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    for path, expected in ((not_ssd, "not an OD API SSD"), (corrupt, "frozen graph")):
        out = tmp_path / "out.tflite"
        code = main(["convert", str(path), "-o", str(out), "--calib", str(calib)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(err) == 1 and err[0].startswith("edge: error:") and expected in err[0], err
        assert not out.exists()
