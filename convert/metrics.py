"""Detection mAP with pycocotools, the reference implementation, on any :class:`Dataset`.

Ground truth and predictions are handed to COCO's evaluator in memory (no JSON files), with
category ids ``class_id + 1`` and image ids ``index + 1`` (COCO ids start at 1). mAP@0.5 and
mAP@[.5:.95] are COCO's 101-point interpolated averages over the classes that have ground truth.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

from edge.errors import EdgeError


@dataclass
class MapResult:
    map50: float  # mAP@0.5, 0..1
    map: float  # mAP@[.5:.95], 0..1
    per_class_ap50: dict[str, float] = field(default_factory=dict)  # classes with ground truth only
    num_images: int = 0
    num_detections: int = 0

    def to_dict(self) -> dict:
        return {"map50": self.map50, "map": self.map, "per_class_ap50": dict(self.per_class_ap50),
                "num_images": self.num_images, "num_detections": self.num_detections}


def _coco_api():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise EdgeError('pycocotools is not installed; install the desktop extra: pip install ".[convert]"') from None
    return COCO, COCOeval


def evaluate_map(dataset, predictions) -> MapResult:
    """mAP of ``predictions`` against ``dataset``.

    ``predictions[i] = (boxes xyxy pixels [K, 4], scores [K], class_ids [K] 0-based)`` for
    ``dataset.samples[i]``, every detection kept (no score cut-off: low scores still shape the curve).
    """
    COCO, COCOeval = _coco_api()
    if len(predictions) != len(dataset.samples):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset.samples)} images")
    num_classes = len(dataset.labels)
    images, annotations, detections = [], [], []
    for i, sample in enumerate(dataset.samples):
        image_id = i + 1
        images.append({"id": image_id, "width": int(sample.width), "height": int(sample.height)})
        for box, cls in zip(sample.boxes, sample.class_ids):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
        boxes, scores, classes = predictions[i]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        classes = np.asarray(classes).reshape(-1).astype(np.int64)
        if not (len(boxes) == len(scores) == len(classes)):
            raise ValueError(f"prediction {i}: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
        for box, score, cls in zip(boxes, scores, classes):
            if 0 <= cls < num_classes:
                detections.append({"image_id": image_id, "category_id": int(cls) + 1, "score": float(score),
                                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    result = MapResult(0.0, 0.0, {}, len(images), len(detections))
    if not annotations:
        return result
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": n} for c, n in enumerate(dataset.labels)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        gt.createIndex()
        present = sorted({a["category_id"] for a in annotations})
        if not detections:
            result.per_class_ap50 = {dataset.labels[c - 1]: 0.0 for c in present}
            return result
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    result.map, result.map50 = float(max(ev.stats[0], 0.0)), float(max(ev.stats[1], 0.0))
    precision = ev.eval["precision"]  # [iou thresholds, recall, classes, areas, max dets]
    for k, cat_id in enumerate(ev.params.catIds):
        if cat_id in present:
            p = precision[0, :, k, 0, -1]
            p = p[p > -1]
            result.per_class_ap50[dataset.labels[cat_id - 1]] = float(p.mean()) if p.size else 0.0
    return result
