"""``edge convert --format onnx``: float sources -> one ONNX graph (network, anchors, decoding, NMS) that
matches the float TFLite model on ONNX Runtime, and the parity gate that refuses one that does not.

Sources: the OD API SSDLite person frozen graph (the astronaut, against TensorFlow's own run of the
graph), the tiny SSD trained once per session for tests/test_export.py too (conftest.py's
``trained_run``: its run directory, and the same network saved as a TF2 OD API-style SavedModel).
Calibration photos: conftest.py's ``calib_dir``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _report(model_path):
    return json.loads(model_path.with_name(model_path.stem + ".report.json").read_text())


@pytest.fixture(scope="module")
def person_onnx(tmp_path_factory, odapi_frozen_graph, calib_dir):
    from edge.cli import main

    out = tmp_path_factory.mktemp("odapi_onnx") / "person.onnx"
    labels = out.parent / "labels.txt"
    labels.write_text("person\n")
    code = main(["convert", str(odapi_frozen_graph), "--format", "onnx", "-o", str(out), "--calib", str(calib_dir),
                 "--labels", str(labels)])
    assert code == 0
    return out


def test_frozen_graph_onnx_finds_the_astronaut_like_tensorflow(person_onnx, odapi_frozen_graph, tmp_path, capsys):
    from convert.odapi import run_frozen_graph
    from edge.cli import main
    from edge.detector.detector import Detector

    image = skimage_data.astronaut()
    reference = run_frozen_graph(odapi_frozen_graph, image)
    assert reference["scores"][0] > 0.8
    h, w = image.shape[:2]
    ymin, xmin, ymax, xmax = reference["boxes"][0]
    ref_box = (xmin * w, ymin * h, xmax * w, ymax * h)

    detector = Detector(person_onnx, runtime="onnxruntime", score_threshold=0.5)
    dets = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert dets.count >= 1 and dets.label(0) == "person"
    iou = _iou(dets.boxes[0], ref_box)
    print(f"astronaut: ONNX person {float(dets.scores[0]):.3f} vs TensorFlow {float(reference['scores'][0]):.3f}, "
          f"IoU {iou:.3f}")
    assert iou >= 0.8
    assert abs(float(dets.scores[0]) - float(reference["scores"][0])) < 0.05

    # The same through the command line.
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    capsys.readouterr()
    assert main(["detect", "--runtime", "onnxruntime", str(person_onnx), str(path)]) == 0
    out = capsys.readouterr().out
    assert "runtime onnxruntime" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("person"))
    box = [float(v) for v in re.search(r"\[([^\]]+)\]", line).group(1).split(",")]
    assert _iou(box, ref_box) >= 0.8


def test_frozen_graph_onnx_contract_metadata_and_report(person_onnx, odapi_frozen_graph):
    import onnx

    from edge.backends import open_backend
    from edge.contract.modelinfo import ModelInfo

    model = onnx.load(str(person_onnx))
    onnx.checker.check_model(model, full_check=True)
    image = model.graph.input[0]
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in image.type.tensor_type.shape.dim] == [1, 300, 300, 3]
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outputs == {"boxes": [1, 100, 4], "classes": [1, 100], "scores": [1, 100], "count": [1]}
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    props = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_dict(json.loads(props["edgekit"]))
    assert info.to_json() == props["edgekit"]  # the same JSON the TFLite metadata carries
    assert info.labels == ["person"] and info.head == "postprocess"
    assert (info.normalization.mean, info.normalization.std) == (0.0, 1.0)
    assert info.anchors is not None and info.anchors.num_anchors == 1917
    assert info.postprocess["max_detections"] == 100 and info.postprocess["num_classes"] == 1
    provenance = info.provenance
    assert provenance["format"] == "onnx" and provenance["quantization"] == "float32"
    assert provenance["source_kind"] == "OD API frozen graph" and provenance["versions"]["tf2onnx"]

    backend = open_backend(person_onnx, providers=("cpu",))
    assert backend.has_postprocess and backend.model_info().labels == ["person"]

    report = _report(person_onnx)
    parity = report["parity"]
    print(f"person parity: {json.dumps(parity)}")
    assert parity["passed"] and "CPU" in parity["compared"] and "calibration images" in parity["compared"]
    assert parity["images"] >= 6 and parity["matched"] == parity["detections"] >= 1
    assert parity["min_iou"] >= 0.95 and parity["max_score_diff"] <= 0.02
    assert report["models"]["onnx"]["stats"]["input"]["dtype"] == "uint8"
    assert report["models"]["onnx"]["stats"]["size_bytes"] == person_onnx.stat().st_size


def _onnx_export_passes_parity(source, out, val, *, min_detections, min_map50):
    """``edge convert SOURCE --format onnx`` (through convert()); asserts the parity gate's findings and
    returns the report."""
    from convert.conversion import ConvertOptions, convert

    report = convert(ConvertOptions(source=source, output=out, val=val, sparsity=0.0, latency_runs=5,
                                    format="onnx"), log=lambda _: None)
    parity = report["parity"]
    print(f"{Path(out).name} parity: {json.dumps(parity)}")
    assert parity["passed"], parity
    assert parity["detections"] >= min_detections and parity["matched"] == parity["detections"]
    assert parity["min_iou"] >= 0.95 and parity["max_score_diff"] <= 0.02
    assert parity["map50_tflite"] > min_map50 and abs(parity["map50_points"]) <= 0.5
    return report


def test_trained_run_onnx_matches_float_tflite(trained_run, tmp_path_factory, capsys):
    from edge.cli import main

    run_dir, _, val_dir = trained_run
    out = tmp_path_factory.mktemp("run_onnx") / "shapes.onnx"
    report = _onnx_export_passes_parity(run_dir, out, val_dir, min_detections=50, min_map50=0.15)
    assert "held-out set" in report["parity"]["compared"]
    assert abs(report["map_drop"]["map50_points"]) <= 0.5  # the measure step's own mAP, float vs onnx
    assert out.is_file() and out.with_name("shapes.report.json").is_file()

    image = next((val_dir / "JPEGImages").iterdir())
    capsys.readouterr()
    assert main(["detect", "--runtime", "onnxruntime", str(out), str(image)]) == 0
    assert image.name in capsys.readouterr().out


def _detections_by_image(out_dir):
    found = {}
    for det in json.loads((out_dir / "detections.json").read_text()):
        x, y, w, h = det["bbox"]
        found.setdefault(det["file_name"], []).append((det["label"], det["score"], (x, y, x + w, y + h)))
    return found


def test_demo_model_onnx_matches_its_float_run_and_the_shipped_int8(tmp_path_factory, capsys):
    """The bundled demo's own run (edge/models/demo_run, the source of the shipped int8 model) exported to
    ONNX: the parity gate passes on held-out shapes, and ``edge detect --backend onnxruntime`` finds what
    the shipped int8 demo finds on LiteRT."""
    from edge.cli import main
    from edge.models import DEMO_MODEL, DEMO_RUN

    if not (DEMO_RUN / "config.json").is_file():
        pytest.skip(f"{DEMO_RUN} is not here (a source checkout holds the demo's float run)")
    work = tmp_path_factory.mktemp("demo_onnx")
    val = work / "val"  # plain backgrounds: deterministic without ../shared
    assert main(["data", "synth", "--out", str(val), "--n", "40", "--size", "320", "--seed", "7"]) == 0
    out = work / "demo.onnx"
    parity = _onnx_export_passes_parity(DEMO_RUN, out, val, min_detections=40, min_map50=0.8)["parity"]

    images = val / "JPEGImages"
    assert main(["detect", str(out), str(images), "--backend", "onnxruntime", "--out", str(work / "onnx")]) == 0
    assert main(["detect", str(DEMO_MODEL), str(images), "--out", str(work / "int8")]) == 0
    assert "runtime onnxruntime" in capsys.readouterr().out
    onnx, int8 = _detections_by_image(work / "onnx"), _detections_by_image(work / "int8")
    pairs = [(label, box, onnx.get(name, [])) for name, dets in int8.items() for label, _, box in dets]
    assert len(pairs) >= 40
    matched = [any(lab == label and _iou(box, other) >= 0.8 for lab, _, other in found) for label, box, found in pairs]
    print(f"shipped int8 vs demo ONNX: {sum(matched)}/{len(pairs)} int8 detections matched at IoU >= 0.8, "
          f"{sum(len(v) for v in onnx.values())} ONNX detections")
    assert sum(matched) >= 0.95 * len(pairs)

    # edge eval on ONNX Runtime scores the export as the parity gate did
    assert main(["eval", str(out), "--voc", str(val), "--backend", "onnxruntime", "--json", str(work / "eval.json")]) == 0
    evaluated = json.loads((work / "eval.json").read_text())
    assert evaluated["map50"] == pytest.approx(parity["map50_onnx"], abs=1e-6)


def test_tf2_saved_model_onnx_matches_float_tflite(trained_run, tmp_path):
    """The trained network saved the way export_tflite_graph_tf2.py does (empty post-process function)."""
    import tensorflow as tf

    from convert.checkpoints import load_trained_model
    from convert.conversion import ConvertOptions, convert
    from convert.export import postprocess_function, weights_only
    from convert.head import PostprocessOptions
    from edge.contract.anchors import generate_anchors

    run_dir, _, val_dir = trained_run
    model, config = load_trained_model(run_dir)
    size = config.architecture.input_size
    attributes = {"max_detections": 10, "max_classes_per_detection": 1, "use_regular_nms": False,
                  "nms_score_threshold": 1e-8, "nms_iou_threshold": 0.6, "y_scale": 10.0, "x_scale": 10.0,
                  "h_scale": 5.0, "w_scale": 5.0, "num_classes": len(config.labels)}
    post = postprocess_function(attributes)
    anchors = tf.constant(generate_anchors(config.anchors))
    module = tf.Module()
    # The serving signature and the variables it reads, not the Keras model's own functions: what is
    # read here is the signature (a SavedModel holding the whole Keras model is test_export.py's case),
    # and the layers' functions would cost a minute to save and to load twice on 2 cores.
    module.model = weights_only(model)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="input")])
    def inference(image):
        box, logits = model(image, training=False)
        return post(box, tf.sigmoid(logits), anchors)

    export_dir = tmp_path / "saved_model"
    tf.saved_model.save(module, str(export_dir), signatures=inference.get_concrete_function())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(config.labels) + "\n")
    out = tmp_path / "tf2.onnx"
    report = convert(ConvertOptions(source=export_dir, output=out, val=val_dir, labels=labels, format="onnx",
                                    postprocess=PostprocessOptions(max_detections=25), latency_runs=2),
                     log=lambda _: None)
    parity = report["parity"]
    print(f"TF2 SavedModel parity: {json.dumps(parity)}")
    assert parity["passed"] and parity["detections"] >= 50, parity
    assert abs(parity["map50_points"]) <= 0.5
    from edge.backends import open_backend

    backend = open_backend(out)
    assert backend.outputs[0].shape == (1, 25, 4)
    assert backend.model_info().provenance["source_kind"] == "OD API TF2 SavedModel"


def test_an_export_that_differs_exits_3_and_writes_nothing(odapi_frozen_graph, calib_dir, tmp_path, capsys,
                                                           monkeypatch):
    """An ONNX tail decoding against wrong anchors (shifted down 5% of the image) must not reach the disk."""
    from convert import onnx_export
    from edge.cli import main

    real = onnx_export.append_postprocess

    def shifted_anchors(model, anchors, attributes):
        return real(model, anchors + np.array([0.05, 0.0, 0.0, 0.0], np.float32), attributes)

    monkeypatch.setattr(onnx_export, "append_postprocess", shifted_anchors)
    out = tmp_path / "person.onnx"
    labels = tmp_path / "labels.txt"
    labels.write_text("person\n")
    capsys.readouterr()
    code = main(["convert", str(odapi_frozen_graph), "--format", "onnx", "-o", str(out), "--calib", str(calib_dir),
                 "--labels", str(labels)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "does not match the float TFLite model" in err[0] and "nothing written" in err[0], err
    assert not out.exists() and not (tmp_path / "person.report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt"]


def test_bad_onnx_options_are_one_line_before_any_load(tmp_path, odapi_frozen_graph, capsys):
    from edge.cli import main

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((16, 16, 3), np.uint8))
    cases = [
        (["--format", "onnx", "-o", str(tmp_path / "x.onnx")], "pass --val DIR"),
        (["--format", "onnx", "-o", str(tmp_path / "x.tflite"), "--calib", str(images)], "must be a .onnx file"),
        (["-o", str(tmp_path / "x.onnx"), "--calib", str(images)], "must be a .tflite file"),
        (["--format", "onnx", "--qat", "-o", str(tmp_path / "x.onnx"), "--calib", str(images)], "--qat"),
        (["--format", "onnx", "-o", str(tmp_path / "x.onnx"), "--calib", str(tmp_path / "none")], "--calib"),
    ]
    for extra, expected in cases:
        code = main(["convert", str(odapi_frozen_graph), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (extra, err)
        assert "load" not in capsys.readouterr().out
    assert not list(tmp_path.glob("x.*"))
