"""Raw SSD heads: the real TF OD API SSDLite graph, cut before its post-processing, decoded by us.

The frozen graph's own output (TensorFlow, post-processing included) is the reference: our anchors,
box coder, sigmoid scores and NMS must find the same person in astronaut() with the same box.
"""

import os

import cv2
import numpy as np
import pytest
from helpers import iou_xyxy

from edge.contract.anchors import AnchorConfig
from edge.detector.detector import Detector
from edge.contract.modelinfo import ModelInfo

pytestmark = pytest.mark.slow

INPUT = "FeatureExtractor/MobilenetV2/MobilenetV2/input"


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow", reason="needs the convert extra (TensorFlow) to cut the graph")


@pytest.fixture(scope="module")
def astronaut_bgr():
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut() photo")
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def frozen_graph_person(tf, odapi_frozen_graph, astronaut_bgr):
    """(box xyxy pixels, score) of the best person from the frozen graph run in TensorFlow."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(odapi_frozen_graph.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            boxes, scores = session.run(["detection_boxes:0", "detection_scores:0"],
                                        {"image_tensor:0": cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2RGB)[None]})
    h, w = astronaut_bgr.shape[:2]
    y0, x0, y1, x1 = boxes[0, 0]
    return [x0 * w, y0 * h, x1 * w, y1 * h], float(scores[0, 0])


@pytest.fixture(scope="module")
def raw_head_model(tf, odapi_frozen_graph, tmp_path_factory):
    """The frozen graph's network up to the raw head, as a float .tflite with a sidecar."""
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        str(odapi_frozen_graph), [INPUT], ["concat", "concat_1"], {INPUT: [1, 300, 300, 3]})
    path = tmp_path_factory.mktemp("raw") / "ssdlite_person_raw.tflite"
    path.write_bytes(converter.convert())
    info = ModelInfo(labels=["person"], anchors=AnchorConfig.for_input(300), head="raw",
                     score_conversion="sigmoid", has_background=True)
    path.with_suffix(".json").write_text(info.to_json())
    return path


def test_raw_head_matches_the_frozen_graph(raw_head_model, frozen_graph_person, astronaut_bgr):
    detector = Detector(raw_head_model, score_threshold=0.3)
    assert detector.head == "raw" and detector.buffer.encoding.dtype == np.float32
    det = detector.detect(astronaut_bgr)
    ref_box, ref_score = frozen_graph_person
    assert ref_score > 0.85
    assert det.count >= 1 and det.label(0) == "person"
    assert abs(float(det.scores[0]) - ref_score) <= 0.05
    assert iou_xyxy(det.boxes[0], ref_box) >= 0.9


def test_raw_head_without_anchors_is_a_clear_error(raw_head_model, tmp_path):
    from edge.errors import EdgeError

    bare = tmp_path / "bare.tflite"
    bare.write_bytes(raw_head_model.read_bytes())
    with pytest.raises(EdgeError, match="raw SSD head .* no anchor config"):
        Detector(bare)
    wrong = ModelInfo(labels=["person"], anchors=AnchorConfig.for_input(320), head="raw")
    bare.with_suffix(".json").write_text(wrong.to_json())
    with pytest.raises(EdgeError, match="anchor config gives 2034 anchors"):
        Detector(bare)


def test_raw_head_decoding_allocates_no_frame_sized_memory(raw_head_model, astronaut_bgr):
    import tracemalloc

    detector = Detector(raw_head_model, score_threshold=0.3)
    frame = cv2.resize(astronaut_bgr, (960, 540))
    for _ in range(5):
        detector.detect(frame)
    tracemalloc.start()
    try:
        level = tracemalloc.get_traced_memory()[0]
        worst = 0
        for _ in range(20):
            tracemalloc.reset_peak()
            detector.detect(frame)
            worst = max(worst, tracemalloc.get_traced_memory()[1] - level)
    finally:
        tracemalloc.stop()
    # candidates above the threshold only: far below one 300x300x3 float frame (1 MB)
    assert worst < 64 * 1024
