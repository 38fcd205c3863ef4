"""Run any detector ``.tflite`` over a :class:`convert.data.Dataset` and score it with pycocotools.

The model runs through :class:`edge.detector.detector.Detector` -- the board's own code path (FrameBuffer
resize, input quantization, output decoding) -- with ``score_threshold=0``: every detection the
model returns is scored, so mAP sees the whole precision/recall curve. Third-party models are
welcome: their classes are matched to the dataset's categories by label name (case-insensitive,
``_``/``-``/space-insensitive); model classes without a match are ignored.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError


def _key(label: str) -> str:
    return re.sub(r"[\s_\-]+", " ", label.strip().lower())


def class_mapping(model_labels: list[str], dataset_labels: list[str]) -> np.ndarray:
    """``map[model_class] = dataset_class`` (or -1), matched by label name."""
    index = {}
    for i, name in enumerate(dataset_labels):
        index.setdefault(_key(name), i)
    return np.array([index.get(_key(name), -1) for name in model_labels], dtype=np.int64)


@dataclass
class Evaluation:
    map50: float
    map: float
    per_class_ap50: dict[str, float]
    num_images: int
    num_detections: int
    matched_classes: list[str]  # dataset classes the model can predict
    unmatched_dataset_classes: list[str]  # dataset classes the model has no label for (AP counts as 0)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "map50": self.map50, "map": self.map, "per_class_ap50": dict(self.per_class_ap50),
            "num_images": self.num_images, "num_detections": self.num_detections,
            "matched_classes": list(self.matched_classes),
            "unmatched_dataset_classes": list(self.unmatched_dataset_classes),
            "skipped_images": [list(x) for x in self.skipped_images], "seconds": round(self.seconds, 2),
        }


def predict(model_path: str | Path, dataset, labels: list[str] | str | Path | None = None,
            num_threads: int | None = None, runtime: str | None = None):
    """Per-sample ``(boxes xyxy pixels, scores, dataset class ids)`` plus the class mapping.

    Images that cannot be read get empty predictions and are listed (they still count as misses).
    """
    from edge.detector.detector import Detector

    detector = Detector(model_path, labels=labels, score_threshold=0.0, num_threads=num_threads, runtime=runtime)
    if not detector.labels:
        raise EdgeError(f"{model_path}: the model carries no labels; pass --labels FILE (one name per line)")
    mapping = class_mapping(detector.labels, dataset.labels)
    if not np.any(mapping >= 0):
        raise EdgeError(f"{model_path}: none of the model's labels ({', '.join(detector.labels[:8])}...) "
                        f"match the dataset's classes ({', '.join(dataset.labels[:8])}); pass --labels FILE")
    predictions, skipped = [], []
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for sample in dataset.samples:
        frame = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
        if frame is None:
            skipped.append((str(sample.image_path), "unreadable or not an image"))
            predictions.append(empty)
            continue
        dets = detector.detect(frame)
        n = dets.count
        ids = np.asarray(dets.class_ids[:n], np.int64)
        ids = np.where((ids >= 0) & (ids < len(mapping)), mapping[np.clip(ids, 0, len(mapping) - 1)], -1)
        keep = ids >= 0
        # Detections are views into reused buffers: copy before the next detect().
        predictions.append((np.array(dets.boxes[:n][keep], np.float32), np.array(dets.scores[:n][keep], np.float32),
                            ids[keep].copy()))
    matched = sorted({dataset.labels[i] for i in mapping if i >= 0})
    return predictions, matched, skipped


def evaluate_tflite(model_path: str | Path, dataset, labels=None, num_threads: int | None = None,
                    runtime: str | None = None) -> Evaluation:
    """mAP@0.5 and mAP@[.5:.95] of ``model_path`` on ``dataset`` (pycocotools)."""
    from convert.metrics import evaluate_map

    if not dataset.samples:
        raise EdgeError("evaluation dataset has no images")
    start = time.perf_counter()
    predictions, matched, skipped = predict(model_path, dataset, labels, num_threads, runtime)
    result = evaluate_map(dataset, predictions)
    return Evaluation(
        map50=float(result.map50), map=float(result.map), per_class_ap50=dict(result.per_class_ap50),
        num_images=result.num_images, num_detections=result.num_detections, matched_classes=matched,
        unmatched_dataset_classes=[name for name in dataset.labels if name not in matched],
        skipped_images=skipped + list(getattr(dataset, "skipped", [])), seconds=time.perf_counter() - start,
    )
