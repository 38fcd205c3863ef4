"""``edge eval``: any detector .tflite, classes matched to the dataset by label name."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest


def test_class_mapping_matches_names_loosely():
    from convert.evaluate import class_mapping

    mapping = class_mapping(["person", "n/a", "Traffic Light", "dog"], ["dog", "traffic_light", "person", "cat"])
    assert mapping.tolist() == [2, -1, 1, 0]


@pytest.mark.slow
def test_eval_third_party_coco_model_on_coco_json(ssd_model_path, coco_labels_path, images_dir, tmp_path, capsys):
    """Google's COCO SSD on the fixture photos, against a COCO file made from its own confident boxes.

    The ground truth is the model's detections at score >= 0.5 (so the expected mAP@0.5 is 1.0 for
    the classes present), with COCO category ids that are neither 0-based nor contiguous and one
    class the model does not know: what is tested is the reading, the name matching and the scoring.
    """
    from edge.cli import main
    from edge.detector.detector import Detector

    detector = Detector(ssd_model_path, labels=coco_labels_path, score_threshold=0.5)
    names = ["unicorn"]  # a dataset class the model has no label for
    images, annotations = [], []
    for image_id, path in enumerate(sorted(images_dir.iterdir()), start=1):
        frame = cv2.imread(str(path))
        dets = detector.detect(frame)
        images.append({"id": image_id, "file_name": path.name, "width": frame.shape[1], "height": frame.shape[0]})
        for i in range(dets.count):
            label = dets.label(i)
            if label not in names:
                names.append(label)
            x0, y0, x1, y1 = (float(v) for v in dets.boxes[i])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 10 * names.index(label) + 7,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    assert "person" in names and len(annotations) >= 4
    categories = [{"id": 10 * i + 7, "name": n.replace(" ", "_")} for i, n in enumerate(names)]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))

    out = tmp_path / "eval.json"
    code = main(["eval", str(ssd_model_path), "--coco", str(ann), "--images", str(images_dir),
                 "--labels", str(coco_labels_path), "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "mAP@0.5" in text and "unicorn" in text
    result = json.loads(out.read_text())
    assert result["map50"] > 0.95
    assert result["unmatched_dataset_classes"] == ["unicorn"]
    assert result["num_detections"] > len(annotations)  # low-score detections are scored too

    # A model with no labels of its own needs --labels: one line, exit 2.
    code = main(["eval", str(ssd_model_path), "--coco", str(ann), "--images", str(images_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--labels" in err[0]


@pytest.mark.slow
def test_eval_voc_folder_with_our_model(tmp_path, capsys):
    """A model converted here carries its labels: ``edge eval`` needs only the model and the data."""
    import tensorflow as tf

    from convert.config import CHECKPOINT_DIR, SSDConfig
    from convert.data.synth import write_synthetic_voc
    from convert.model import build_ssd
    from edge.cli import main

    data = write_synthetic_voc(tmp_path / "shapes", 6, size=128, seed=5)
    config = SSDConfig.create(list(data.labels), input_size=128, width=0.35)
    config.save(tmp_path / "run")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=build_ssd(config)),
                               str(tmp_path / "run" / CHECKPOINT_DIR), 1).save()
    model = tmp_path / "m.tflite"
    assert main(["convert", str(tmp_path / "run"), "-o", str(model), "--float", "--sparsity", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(model), "--voc", str(tmp_path / "shapes"), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_images"] == 6
    assert sorted(result["matched_classes"]) == sorted(data.labels)
    assert 0.0 <= result["map50"] <= 1.0 and np.isfinite(result["map"])
