"""pycocotools mAP wrapper: numbers checked against hand-computed COCO values. No TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from convert.data import Dataset, Sample
from convert.metrics import evaluate_map


def _dataset():
    return Dataset(["cat", "dog"], [
        Sample("a.jpg", 200, 100, [[10, 10, 50, 50], [100, 20, 180, 90]], [0, 1]),
        Sample("b.jpg", 200, 100, [[20, 10, 60, 60]], [0]),
    ])


def _perfect(ds):
    return [(s.boxes, np.ones(len(s.boxes)), s.class_ids) for s in ds.samples]


def test_perfect_predictions_score_one():
    result = evaluate_map(_dataset(), _perfect(_dataset()))
    assert result.map50 == pytest.approx(1.0) and result.map == pytest.approx(1.0)
    assert result.per_class_ap50 == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert result.num_images == 2 and result.num_detections == 3


def test_wrong_classes_and_no_predictions_score_zero():
    ds = _dataset()
    swapped = [(s.boxes, np.ones(len(s.boxes)), 1 - s.class_ids) for s in ds.samples]
    assert evaluate_map(ds, swapped).map50 == 0.0
    empty = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for _ in ds.samples]
    result = evaluate_map(ds, empty)
    assert result.map50 == 0.0 and result.num_detections == 0


def test_ranked_false_positive_matches_coco_101_point_interpolation():
    # One class, two objects; detections ranked TP (0.9), FP (0.8), TP (0.7):
    # precision 1 up to recall 0.5, 2/3 up to recall 1 -> (51 * 1 + 50 * 2/3) / 101.
    ds = Dataset(["cat"], [Sample("a.jpg", 100, 100, [[0, 0, 40, 40], [50, 50, 90, 90]], [0, 0])])
    preds = [(np.array([[0, 0, 40, 40], [0, 50, 40, 90], [50, 50, 90, 90]], np.float32),
              np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0]))]
    assert evaluate_map(ds, preds).map50 == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    # The same false positive ranked last costs nothing.
    preds_last = [(preds[0][0], np.array([0.9, 0.1, 0.7]), preds[0][2])]
    assert evaluate_map(ds, preds_last).map50 == pytest.approx(1.0)


def test_loose_boxes_pass_at_half_iou_but_not_at_strict_thresholds():
    ds = Dataset(["cat"], [Sample("a.jpg", 100, 100, [[0, 0, 40, 40]], [0])])
    shifted = [(np.array([[8, 0, 48, 40]], np.float32), np.array([0.9]), np.array([0]))]  # IoU 32/48 = 0.667
    result = evaluate_map(ds, shifted)
    assert result.map50 == pytest.approx(1.0)
    assert result.map == pytest.approx(0.4, abs=1e-6)  # passes .50,.55,.60,.65 of ten thresholds


def test_mismatched_prediction_count_is_refused():
    with pytest.raises(ValueError, match="1 predictions for 2 images"):
        evaluate_map(_dataset(), _perfect(_dataset())[:1])
