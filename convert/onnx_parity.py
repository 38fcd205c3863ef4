"""The parity gate of ``--format onnx``: the ONNX export against the float TFLite model, before anything is written.

:func:`check_parity` runs ONNX Runtime (CPU provider) and the float TFLite model over the same
images through the board's :class:`~edge.detector.detector.Detector`: every detection scoring at
least :data:`PARITY_SCORE` in one must have a same-class partner in the other within
:data:`PARITY_MIN_IOU` and :data:`PARITY_MAX_SCORE_DIFF`, and with labelled images mAP@0.5 must agree
within :data:`PARITY_MAX_MAP_POINTS` points. The :class:`Parity` it returns goes into the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from convert.onnx_export import cpu_backend

PARITY_MIN_IOU = 0.95
PARITY_MAX_SCORE_DIFF = 0.02
PARITY_MAX_MAP_POINTS = 0.5
PARITY_SCORE = 0.3  # detections at or above this score (in either model) must have a partner


@dataclass
class Parity:
    """ONNX Runtime (CPU) against the float TFLite model on the same images, and whether it passes."""

    compared: str
    images: int
    detections: int = 0  # detections at or above PARITY_SCORE, both directions
    matched: int = 0
    min_iou: float | None = None
    max_score_diff: float | None = None
    map50_tflite: float | None = None
    map50_onnx: float | None = None
    failures: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    evaluation: object = None  # the ONNX model's convert.evaluate.Evaluation (labelled images only)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def map50_points(self) -> float | None:
        if self.map50_onnx is None or self.map50_tflite is None:
            return None
        return round(100.0 * (self.map50_onnx - self.map50_tflite), 3)

    def to_dict(self) -> dict:
        return {"compared": self.compared, "images": self.images, "detections": self.detections,
                "matched": self.matched, "min_iou": self.min_iou, "max_score_diff": self.max_score_diff,
                "map50_tflite": self.map50_tflite, "map50_onnx": self.map50_onnx,
                "map50_points": self.map50_points, "passed": self.passed, "failures": list(self.failures),
                "unreadable": list(self.unreadable),
                "thresholds": {"min_iou": PARITY_MIN_IOU, "max_score_diff": PARITY_MAX_SCORE_DIFF,
                               "max_map50_points": PARITY_MAX_MAP_POINTS, "score": PARITY_SCORE}}

    def describe(self) -> str:
        text = (f"{self.matched}/{self.detections} detections matched on {self.images} images"
                + (f", min IoU {self.min_iou:.4f}" if self.min_iou is not None else "")
                + (f", max score diff {self.max_score_diff:.4f}" if self.max_score_diff is not None else ""))
        if not self.detections:
            text += f" (no detection scored >= {PARITY_SCORE} in either model: no boxes compared)"
        if self.map50_points is not None:
            text += f", mAP@0.5 {100 * self.map50_onnx:.2f} vs {100 * self.map50_tflite:.2f}"
        return text + ("" if self.passed else f"; FAILED: {self.failures[0]}")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` [n, 4] with every one in ``b`` [m, 4]."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(reference, candidate, score: float = PARITY_SCORE) -> list[tuple[float | None, float | None]]:
    """For each ``reference`` detection scoring >= ``score``: (IoU, |score difference|) of its partner in
    ``candidate`` -- the same class, highest IoU, each partner used once -- or (None, None).

    ``reference`` and ``candidate`` are ``(boxes xyxy [n, 4], scores [n], class ids [n])``.
    """
    ref_boxes, ref_scores, ref_classes = reference
    cand_boxes, cand_scores, cand_classes = candidate
    iou = _iou_matrix(np.asarray(ref_boxes, np.float64), np.asarray(cand_boxes, np.float64)) \
        if len(ref_boxes) and len(cand_boxes) else np.zeros((len(ref_boxes), len(cand_boxes)))
    used = np.zeros(len(cand_boxes), bool)
    results = []
    for i in np.argsort(-np.asarray(ref_scores), kind="stable"):
        if ref_scores[i] < score:
            continue
        options = np.where((cand_classes == ref_classes[i]) & ~used, iou[i], -1.0)
        j = int(np.argmax(options)) if len(options) else -1
        if j < 0 or options[j] <= 0:
            results.append((None, None))
            continue
        used[j] = True
        results.append((float(iou[i, j]), float(abs(cand_scores[j] - ref_scores[i]))))
    return results


def _predictions(detector, frames: list[np.ndarray]):
    out = []
    for frame in frames:
        dets = detector.detect(frame)
        n = dets.count
        out.append((np.array(dets.boxes[:n], np.float32), np.array(dets.scores[:n], np.float32),
                    np.array(dets.class_ids[:n], np.int64)))
    return out


def _dataset_predictions(predictions, mapping: np.ndarray):
    """Model class ids -> dataset class ids (unmatched classes dropped), for evaluate_map."""
    mapped = []
    for boxes, scores, classes in predictions:
        ids = np.where((classes >= 0) & (classes < len(mapping)), mapping[np.clip(classes, 0, len(mapping) - 1)], -1)
        keep = ids >= 0
        mapped.append((boxes[keep], scores[keep], ids[keep]))
    return mapped


def check_parity(onnx_path: str | Path, tflite_path: str | Path, image_paths: list[Path], where: str,
                 dataset=None, num_threads: int | None = None, log: Callable[[str], None] = lambda _: None) -> Parity:
    """Run ONNX Runtime (CPU) and the float TFLite model on ``image_paths`` and compare.

    Every detection scoring >= :data:`PARITY_SCORE` in one model must have a same-class partner in
    the other with IoU >= :data:`PARITY_MIN_IOU` and a score within :data:`PARITY_MAX_SCORE_DIFF`;
    with a labelled ``dataset`` (whose images are ``image_paths``), mAP@0.5 must agree within
    :data:`PARITY_MAX_MAP_POINTS` points. ``where`` says where the images came from, for the report.
    """
    import cv2

    from edge.detector.detector import Detector

    onnx_detector = Detector(backend=cpu_backend(onnx_path, num_threads), score_threshold=0.0)
    tflite_detector = Detector(tflite_path, score_threshold=0.0, num_threads=num_threads)
    frames, readable, unreadable = [], [], []
    for path in image_paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            unreadable.append(str(path))
        else:
            frames.append(frame)
            readable.append(path)
    parity = Parity(compared=(f"ONNX Runtime {onnx_detector.runtime_info.describe()} (CPU provider) vs the float "
                              f"TFLite model on {tflite_detector.runtime_info.describe()}, {len(frames)} images "
                              f"from {where}, through the board's Detector"), images=len(frames),
                    unreadable=unreadable)
    if not frames:
        parity.failures.append(f"no readable image in {where} to compare on")
        return parity
    onnx_preds, tflite_preds = _predictions(onnx_detector, frames), _predictions(tflite_detector, frames)
    ious, diffs, missing = [], [], []
    for path, onnx_pred, tflite_pred in zip(readable, onnx_preds, tflite_preds):
        for direction, ref, cand in (("TFLite", tflite_pred, onnx_pred), ("ONNX", onnx_pred, tflite_pred)):
            for iou, diff in match_detections(ref, cand):
                parity.detections += 1
                if iou is None:
                    missing.append(f"a {direction} detection in {Path(path).name} has no same-class partner")
                    continue
                ious.append(iou)
                diffs.append(diff)
                if iou >= PARITY_MIN_IOU and diff <= PARITY_MAX_SCORE_DIFF:
                    parity.matched += 1
    parity.min_iou = round(min(ious), 5) if ious else None
    parity.max_score_diff = round(max(diffs), 5) if diffs else None
    if missing:
        parity.failures.append(f"{len(missing)} unmatched detections ({missing[0]})")
    if ious and min(ious) < PARITY_MIN_IOU:
        parity.failures.append(f"matched boxes IoU down to {min(ious):.4f} (< {PARITY_MIN_IOU})")
    if diffs and max(diffs) > PARITY_MAX_SCORE_DIFF:
        parity.failures.append(f"scores differ by up to {max(diffs):.4f} (> {PARITY_MAX_SCORE_DIFF})")
    if dataset is not None and onnx_detector.labels:
        from convert.evaluate import Evaluation, class_mapping
        from convert.metrics import evaluate_map

        start = time.perf_counter()
        kept = set(readable)
        subset = dataset.subset([i for i, s in enumerate(dataset.samples) if s.image_path in kept])
        mapping = class_mapping(onnx_detector.labels, dataset.labels)
        result = evaluate_map(subset, _dataset_predictions(onnx_preds, mapping))
        parity.map50_onnx = float(result.map50)
        parity.map50_tflite = float(evaluate_map(subset, _dataset_predictions(tflite_preds, mapping)).map50)
        matched = sorted({dataset.labels[i] for i in mapping if i >= 0})
        parity.evaluation = Evaluation(
            map50=float(result.map50), map=float(result.map), per_class_ap50=dict(result.per_class_ap50),
            num_images=result.num_images, num_detections=result.num_detections, matched_classes=matched,
            unmatched_dataset_classes=[name for name in dataset.labels if name not in matched],
            skipped_images=[(path, "unreadable or not an image") for path in unreadable],
            seconds=time.perf_counter() - start)
        if abs(parity.map50_points) > PARITY_MAX_MAP_POINTS:
            parity.failures.append(f"mAP@0.5 differs by {parity.map50_points:+.2f} points (> {PARITY_MAX_MAP_POINTS})")
    log(f"parity: {parity.describe()}")
    return parity
