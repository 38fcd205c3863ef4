"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import numpy as np


def iou_xyxy(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(found: list[tuple[str, float, list[float]]], label: str, score: float, box=None,
          score_tol: float = 0.05, min_iou: float = 0.8) -> bool:
    """Is there a detection of ``label`` with ``score`` (within tolerance) and, if given, the box?"""
    for found_label, found_score, found_box in found:
        if found_label != label or abs(found_score - score) > score_tol:
            continue
        if box is None or iou_xyxy(found_box, box) >= min_iou:
            return True
    return False


def as_list(detections) -> list[tuple[str, float, list[float]]]:
    return [(detections.label(i), float(detections.scores[i]), [float(v) for v in detections.boxes[i]])
            for i in range(detections.count)]
