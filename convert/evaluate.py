"""Run a detector over a :class:`convert.data.Dataset` and score it with pycocotools.

Two kinds of detector, one metric (:func:`convert.metrics.evaluate_map`):

- any ``.tflite`` (:func:`predict_tflite`, :func:`evaluate_tflite`): the model runs through
  :class:`edge.detector.detector.Detector` -- the board's own code path (FrameBuffer resize, input
  quantization, output decoding) -- with ``score_threshold=0``: every detection the model returns
  is scored, so mAP sees the whole precision/recall curve. Third-party models are welcome: their
  classes are matched to the dataset's categories by label name (case-insensitive,
  ``_``/``-``/space-insensitive); model classes without a match are ignored.
- our Keras SSD during training (:func:`predict_keras`, :func:`evaluate_keras`): batches from the
  training input pipeline, decoded with the runtime's box decoder, per-class NMS in TensorFlow.
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


def predict_tflite(model_path: str | Path, dataset, labels: list[str] | str | Path | None = None,
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
    predictions, matched, skipped = predict_tflite(model_path, dataset, labels, num_threads, runtime)
    result = evaluate_map(dataset, predictions)
    return Evaluation(
        map50=float(result.map50), map=float(result.map), per_class_ap50=dict(result.per_class_ap50),
        num_images=result.num_images, num_detections=result.num_detections, matched_classes=matched,
        unmatched_dataset_classes=[name for name in dataset.labels if name not in matched],
        skipped_images=skipped + list(getattr(dataset, "skipped", [])), seconds=time.perf_counter() - start,
    )


def predict_keras(model, config, dataset, batch_size: int = 16, score_threshold: float = 0.01,
                  iou_threshold: float = 0.6, max_detections: int = 100):
    """Detections of a Keras SSD (``config``'s contract) on every readable image of ``dataset``.

    Returns ``(predictions, indices)``: ``predictions[j] = (boxes xyxy pixels of the original image,
    scores, class ids 0-based)`` for ``dataset.samples[indices[j]]`` (unreadable images are left out).
    Decoding uses the runtime's :class:`edge.contract.boxcoding.BoxDecoder`; NMS is per class.
    """
    from convert.pipeline import InputPipeline
    from convert.tf import import_tensorflow
    from edge.contract.anchors import generate_anchors
    from edge.contract.boxcoding import BoxDecoder

    tf = import_tensorflow()
    pipeline = InputPipeline(dataset, config, augment=False)
    decoder = BoxDecoder(generate_anchors(config.anchors), config.box_coder)
    num_anchors = decoder.num_anchors
    decoded = np.empty((num_anchors, 4), np.float32)
    predictions, indices = [], []
    for images, idx, ok in pipeline.eval_dataset(batch_size):
        box_enc, logits = model(images, training=False)
        logits = tf.cast(logits, tf.float32)
        if config.score_conversion == "softmax":
            scores = tf.nn.softmax(logits)[..., 1:]
        else:
            scores = tf.sigmoid(logits)[..., 1:]
        enc = box_enc.numpy()
        boxes = np.empty((enc.shape[0], num_anchors, 1, 4), np.float32)
        for b in range(enc.shape[0]):
            boxes[b, :, 0] = decoder.decode(enc[b], decoded)
        nms = tf.image.combined_non_max_suppression(
            boxes, scores, max_output_size_per_class=max_detections, max_total_size=max_detections,
            iou_threshold=iou_threshold, score_threshold=score_threshold, clip_boxes=True)
        nb, ns, nc, nv = (t.numpy() for t in nms)
        for b, (index, good) in enumerate(zip(idx.numpy(), ok.numpy())):
            if not good:
                continue
            sample = dataset.samples[int(index)]
            k = int(nv[b])
            yxyx = nb[b, :k]
            xyxy = np.stack([yxyx[:, 1] * sample.width, yxyx[:, 0] * sample.height,
                             yxyx[:, 3] * sample.width, yxyx[:, 2] * sample.height], axis=-1)
            predictions.append((xyxy.astype(np.float32), ns[b, :k].astype(np.float32), nc[b, :k].astype(np.int32)))
            indices.append(int(index))
    return predictions, indices


def evaluate_keras(model, config, dataset, batch_size: int = 16):
    """COCO mAP (a :class:`convert.metrics.MapResult`) of a Keras SSD on ``dataset`` (readable images only)."""
    from convert.metrics import evaluate_map

    predictions, indices = predict_keras(model, config, dataset, batch_size)
    return evaluate_map(dataset.subset(indices), predictions)
