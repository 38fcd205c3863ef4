import json

import pytest

from convert.tflite_edit import embed_metadata
from edge.errors import EdgeError
from edge.contract.labels import load_labels, parse_labels
from edge.contract.tflite_file import load_model_info, read_tflite
from edge.contract.modelinfo import ModelInfo


def test_fixture_coco_labels_are_zero_based_with_gaps(coco_labels_path):
    labels = load_labels(coco_labels_path)
    assert len(labels) == 90
    assert labels[0] == "person" and labels[2] == "car" and labels[11] == "n/a"


def test_id_label_form_fills_gaps():
    assert parse_labels("0 person\n2 car\n") == ["person", "n/a", "car"]
    assert parse_labels("cat\ndog\n\n") == ["cat", "dog"]
    with pytest.raises(EdgeError, match="empty"):
        parse_labels("\n\n", source="x.txt")


def test_reads_operators_of_the_fixture_model(ssd_model_path):
    tflite = read_tflite(ssd_model_path)
    assert tflite.has_postprocess
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "TFLite_Detection_PostProcess"} <= set(tflite.operators)
    assert tflite.metadata == {}


def test_embedded_metadata_round_trips_and_model_still_runs(ssd_model_path, tmp_path):
    from edge.detector.detector import Detector

    info = ModelInfo(labels=["a", "b"], provenance={"source": "test"})
    out = tmp_path / "with_meta.tflite"
    out.write_bytes(embed_metadata(ssd_model_path.read_bytes(), info))
    assert load_model_info(out).labels == ["a", "b"]
    # replacing keeps one entry
    out.write_bytes(embed_metadata(out.read_bytes(), ModelInfo(labels=["c"])))
    assert list(read_tflite(out).metadata) == ["edgekit"]
    detector = Detector(out, score_threshold=0.0)
    assert detector.labels == ["c"] and detector.head == "postprocess"


def test_sidecar_wins_over_embedded_and_bad_sidecar_is_named(ssd_model_path, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(embed_metadata(ssd_model_path.read_bytes(), ModelInfo(labels=["embedded"])))
    (tmp_path / "m.json").write_text(json.dumps({"labels": ["sidecar"]}))
    assert load_model_info(model).labels == ["sidecar"]
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(EdgeError, match=r"m\.json: model sidecar is not valid JSON"):
        load_model_info(model)


def test_not_a_tflite_file_is_refused(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"PK\x03\x04 definitely not a flatbuffer")
    with pytest.raises(EdgeError, match="not a TFLite model"):
        read_tflite(bogus)
    with pytest.raises(EdgeError, match="not found"):
        read_tflite(tmp_path / "missing.tflite")
