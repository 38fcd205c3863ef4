"""The ONNX Runtime backend on a tiny hand-made detector: the tail, IOBinding, memory, providers, bad input.

The model is built with the ``onnx`` helper API and the export's own post-process tail
(:func:`convert.onnx_export.append_postprocess`, which needs no TensorFlow): six anchors whose raw
encodings are zero (boxes = anchors) and whose class scores are fixed, so what NMS keeps is known.
"""

from __future__ import annotations

import json
import tracemalloc

import cv2
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from convert.head import PostprocessOptions  # noqa: E402  (pure Python, no TensorFlow)
from edge.contract.boxcoding import BoxCoderScales  # noqa: E402
from edge.contract.modelinfo import HEAD_POSTPROCESS, ModelInfo, Normalization  # noqa: E402
from edge.errors import EdgeError  # noqa: E402

SIZE = 32
LABELS = ["cat", "dog"]
# (yc, xc, h, w): 0 and 1 overlap (IoU 0.82), 2 apart, 3..5 low scores
ANCHORS = np.array([[0.30, 0.30, 0.40, 0.40], [0.32, 0.32, 0.40, 0.40], [0.75, 0.75, 0.30, 0.30],
                    [0.50, 0.50, 0.20, 0.20], [0.20, 0.80, 0.20, 0.20], [0.80, 0.20, 0.20, 0.20]], np.float32)
# columns: background, cat, dog
SCORES = np.array([[0.0, 0.90, 0.10], [0.0, 0.80, 0.70], [0.0, 0.05, 0.60],
                   [0.0, 0.01, 0.02], [0.0, 0.03, 0.01], [0.0, 0.02, 0.04]], np.float32)


def make_model(path, postprocess: PostprocessOptions | None = None, *, metadata: bool = True):
    """uint8 image -> zero encodings, fixed scores (plus 0 x the image mean, so the input is used) -> tail."""
    from onnx import TensorProto, helper, numpy_helper

    from convert.onnx_export import METADATA_KEY, OPSET, append_postprocess

    postprocess = postprocess or PostprocessOptions(max_detections=4, score_threshold=0.05, iou_threshold=0.5)
    a = len(ANCHORS)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["encodings", "nothing"], ["raw_box_encodings"]),
        helper.make_node("Add", ["scores", "nothing"], ["raw_class_scores"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_ssd", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("raw_box_encodings", TensorProto.FLOAT, [1, a, 4]),
         helper.make_tensor_value_info("raw_class_scores", TensorProto.FLOAT, [1, a, 3])],
        [numpy_helper.from_array(np.zeros((1, a, 4), np.float32), "encodings"),
         numpy_helper.from_array(SCORES[None], "scores"), numpy_helper.from_array(np.float32(0.0), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    append_postprocess(model, ANCHORS, postprocess.op_attributes(len(LABELS), BoxCoderScales()))
    if metadata:
        info = ModelInfo(labels=list(LABELS), normalization=Normalization(0.0, 1.0), head=HEAD_POSTPROCESS,
                         max_detections=postprocess.max_detections,
                         postprocess=postprocess.op_attributes(len(LABELS), BoxCoderScales()),
                         provenance={"source": "tests/test_onnx_backend.py", "format": "onnx"})
        helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _corners(anchor):
    yc, xc, h, w = anchor
    return [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]


def test_tail_outputs_fixed_shapes_padded_with_count(tiny_model):
    from edge.backends import open_backend

    backend = open_backend(tiny_model, providers=("cpu",))
    assert backend.info.name == "onnxruntime" and backend.info.device == "cpu"
    assert [(o.name, o.shape) for o in backend.outputs] == [
        ("boxes", (1, 4, 4)), ("classes", (1, 4)), ("scores", (1, 4)), ("count", (1,))]
    assert backend.image.dtype == np.uint8 and backend.image.shape == (1, SIZE, SIZE, 3)
    backend.invoke()
    out = {spec.name: backend.view(spec)() for spec in backend.outputs}
    # fast NMS: best class per anchor; anchor 1 (cat 0.80) is suppressed by anchor 0 (cat 0.90, IoU 0.82),
    # anchors 3..5 (best 0.02..0.04) are under the 0.05 score threshold; the rest is zero padding
    assert int(out["count"][0]) == 2
    np.testing.assert_allclose(out["scores"][0], [0.90, 0.60, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(out["classes"][0], [0, 1, 0, 0])
    np.testing.assert_allclose(out["boxes"][0, 0], _corners(ANCHORS[0]), atol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 1], _corners(ANCHORS[2]), atol=1e-6)
    # the same arrays every time: bound once, written in place
    assert backend.view(backend.outputs[0])() is out["boxes"]


def test_padding_and_regular_nms(tmp_path):
    from edge.backends import open_backend

    few = make_model(tmp_path / "few.onnx", PostprocessOptions(max_detections=5, score_threshold=0.5,
                                                               iou_threshold=0.5))
    backend = open_backend(few, providers=("cpu",))
    backend.invoke()
    out = {spec.name: backend.view(spec)() for spec in backend.outputs}
    assert int(out["count"][0]) == 2  # cat 0.90 and dog 0.60 above 0.5
    np.testing.assert_array_equal(out["scores"][0, 2:], 0.0)  # padding rows are zeros
    np.testing.assert_array_equal(out["boxes"][0, 2:], 0.0)

    regular = make_model(tmp_path / "regular.onnx", PostprocessOptions(
        max_detections=3, score_threshold=0.5, iou_threshold=0.5, use_regular_nms=True, detections_per_class=10))
    backend = open_backend(regular, providers=("cpu",))
    backend.invoke()
    out = {spec.name: backend.view(spec)() for spec in backend.outputs}
    # per class: cat keeps anchor 0 (0.90; anchor 1 suppressed); dog keeps anchor 1 (0.70) and 2 (0.60)
    assert int(out["count"][0]) == 3
    np.testing.assert_allclose(out["scores"][0], [0.90, 0.70, 0.60], atol=1e-6)
    np.testing.assert_array_equal(out["classes"][0], [0, 1, 1])


def test_detector_reads_metadata_and_decodes_like_tflite(tiny_model):
    from edge.detector.detector import Detector

    detector = Detector(tiny_model, runtime="onnxruntime", score_threshold=0.5)
    assert detector.head == HEAD_POSTPROCESS
    assert detector.labels == LABELS and detector.labels_source == "the model's metadata"
    assert detector.num_classes == 2 and detector.detections.capacity == 4
    assert detector.buffer.encoding.kind == "raw"  # uint8 pixels straight in
    dets = detector.detect(np.zeros((64, 128, 3), np.uint8))
    assert dets.count == 2 and [dets.label(i) for i in range(2)] == ["cat", "dog"]
    ymin, xmin, ymax, xmax = _corners(ANCHORS[0])
    np.testing.assert_allclose(dets.boxes[0], [xmin * 128, ymin * 64, xmax * 128, ymax * 64], atol=1e-3)
    assert "onnxruntime" in detector.describe()


def test_detect_allocates_nothing_in_steady_state(tiny_model, images_dir):
    """1,000 detect() calls: zero net tracemalloc growth and a transient peak under 16 KB."""
    from edge.detector.detector import Detector

    detector = Detector(tiny_model, score_threshold=0.3)
    frame = cv2.resize(cv2.imread(str(images_dir / "kite_and_cold.jpg")), (960, 540))
    tracemalloc.start()
    try:
        for _ in range(200):
            detector.detect(frame)
        start = tracemalloc.get_traced_memory()[0]
        worst_transient = 0
        for _ in range(1000):
            level = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            detector.detect(frame)
            worst_transient = max(worst_transient, tracemalloc.get_traced_memory()[1] - level)
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    print(f"onnxruntime detect(): growth {growth} B over 1,000 frames, worst transient {worst_transient} B")
    assert growth < 1000, f"net heap growth {growth} B over 1,000 frames"
    assert worst_transient < 16 * 1024, f"transient peak {worst_transient} B per frame"


def test_inspect_shows_metadata(tiny_model, capsys):
    from edge.cli import main
    from edge.commands.inspect import inspect_model

    report = inspect_model(tiny_model)
    assert report["runtime"].startswith("onnxruntime")
    assert report["labels"] == LABELS
    assert report["metadata"]["provenance"]["format"] == "onnx"
    assert "NonMaxSuppression" in report["operators"] and "Conv" not in report["operators"]
    assert report["memory"]["tensor_bytes"] > 0
    assert [o["name"] for o in report["outputs"]] == ["boxes", "classes", "scores", "count"]
    assert main(["inspect", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "labels    cat, dog" in out and "onnxruntime" in out and '"format": "onnx"' in out


def test_detect_command_with_onnxruntime(tiny_model, tmp_path, capsys):
    from edge.cli import main

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((48, 48, 3), np.uint8))
    assert main(["detect", "--runtime", "onnxruntime", str(tiny_model), str(image), "--score", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "runtime onnxruntime" in out and "2 detection(s)" in out and "cat" in out and "dog" in out


def test_sidecar_overrides_embedded_metadata(tmp_path):
    from edge.backends import open_backend

    model = make_model(tmp_path / "bare.onnx", metadata=False)
    assert open_backend(model).model_info() is None
    info = ModelInfo(labels=["a", "b"], normalization=Normalization(0.0, 1.0))
    model.with_suffix(".json").write_text(json.dumps(info.to_dict()))
    assert open_backend(model).model_info().labels == ["a", "b"]


def test_bad_input_is_one_line(tiny_model, tmp_path, capsys):
    from edge.backends import open_backend
    from edge.cli import main

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a model" * 20)
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\0" * 64)
    cases = [
        (["detect", str(corrupt), str(image)], "ONNX Runtime cannot load it"),
        (["detect", "--runtime", "litert", str(tiny_model), str(image)], "run it with --runtime onnxruntime"),
        (["detect", "--runtime", "onnxruntime", str(tflite), str(image)], "is not an .onnx model"),
        (["inspect", str(tmp_path / "missing.onnx")], "no such model file"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edge: error:") and expected in err[0], (argv, err)
    with pytest.raises(EdgeError, match="unknown provider 'gpu'"):
        open_backend(tiny_model, providers=("gpu",))


def test_providers_not_installed_name_what_to_install(tiny_model):
    from edge.backends import open_backend
    from edge.backends.onnx_providers import choose_providers, parse_providers

    assert parse_providers("TensorRT, cuda,cpu") == ("tensorrt", "cuda", "cpu")
    assert choose_providers(None, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == (["cuda", "cpu"], [])
    chosen, notes = choose_providers(("tensorrt", "cpu"), ["CPUExecutionProvider"])
    assert chosen == ["cpu"] and "TensorrtExecutionProvider is not installed" in notes[0]
    with pytest.raises(EdgeError) as error:
        choose_providers(("cuda",), ["CPUExecutionProvider"])
    message = str(error.value)
    assert "\n" not in message and "CUDAExecutionProvider is not installed" in message
    assert "pip install onnxruntime-gpu" in message and "--providers cuda,cpu" in message
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        backend = open_backend(tiny_model, providers=("tensorrt", "cpu"))  # the list allows the fallback
        assert backend.providers == ["cpu"]
        assert "TensorrtExecutionProvider is not installed" in " ".join(backend.info.warnings)  # a fallback warns
        with pytest.raises(EdgeError, match="TensorrtExecutionProvider is not installed"):
            open_backend(tiny_model, providers=("tensorrt",))  # it does not


def test_operators_and_weights_read_without_onnx(tiny_model):
    from edge.backends.onnx_file import scan_onnx

    scanned = scan_onnx(tiny_model)
    model = onnx.load(str(tiny_model))
    assert scanned["operators"] == sorted({n.op_type for n in model.graph.node})
    expected = sum(onnx.numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    assert scanned["weights_bytes"] == expected
    assert scanned["opsets"]["ai.onnx"] == 17


def test_tensorrt_calibration_table_is_made_on_the_cpu(tiny_model, tmp_path, images_dir):
    """The INT8 table the TensorRT provider reads; made by ONNX Runtime's calibrator on the CPU."""
    pytest.importorskip("onnxruntime.quantization")
    from edge.backends.tensorrt import CALIBRATION_TABLE, tensorrt_options, write_tensorrt_calibration

    table = write_tensorrt_calibration(tiny_model, images_dir, tmp_path / "cache", limit=2)
    assert table.name == CALIBRATION_TABLE and table.stat().st_size > 0
    assert not list((tmp_path / "cache").glob("augmented*"))
    options = tensorrt_options(tmp_path / "cache", int8=True)
    assert options["trt_int8_calibration_table_name"] == CALIBRATION_TABLE
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path / "cache")


@pytest.mark.skipif("TensorrtExecutionProvider" not in ort.get_available_providers(),
                    reason="no TensorRT execution provider here (needs onnxruntime-gpu, TensorRT and an NVIDIA GPU)")
def test_tensorrt_builds_then_caches_its_engine(tiny_model, tmp_path, images_dir):
    from edge.backends import open_backend

    cache = tmp_path / "trt"
    first = open_backend(tiny_model, providers=("tensorrt", "cuda", "cpu"), trt_cache_dir=cache, trt_fp16=True)
    assert "builds its engine" in (first.info.note or "")
    first.invoke()
    assert list(cache.glob("*.engine"))
    second = open_backend(tiny_model, providers=("tensorrt",), trt_cache_dir=cache, trt_fp16=True)
    assert "builds its engine" not in (second.info.note or "")
    int8 = open_backend(tiny_model, providers=("tensorrt", "cpu"), trt_cache_dir=tmp_path / "int8", trt_int8=True,
                        calib=images_dir)
    int8.invoke()
    assert int(int8.view(int8.outputs[3])()[0]) >= 1


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="no CUDA execution provider here (needs onnxruntime-gpu and an NVIDIA GPU)")
def test_cuda_provider_matches_cpu(tiny_model):
    from edge.backends import open_backend

    results = []
    for providers in (("cuda",), ("cpu",)):
        backend = open_backend(tiny_model, providers=providers)
        backend.invoke()
        results.append([backend.view(spec)().copy() for spec in backend.outputs])
    for gpu, cpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, atol=1e-5)
