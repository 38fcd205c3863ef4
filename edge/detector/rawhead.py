"""Decoding raw SSD heads (box encodings + class scores) into detections, for models without the
``TFLite_Detection_PostProcess`` op: TF OD API graphs cut before post-processing, or heads exported
raw on purpose.

Anchor decoding and score conversion reuse preallocated arrays; only the candidate set above the
score threshold (small, bounded by ``max_candidates``) is allocated per frame. NMS is OpenCV's
per-class ``NMSBoxesBatched``, as the OD API's multiclass NMS.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.contract.anchors import generate_anchors
from edge.contract.boxcoding import BoxDecoder
from edge.contract.modelinfo import ModelInfo


class RawHeadDecoder:
    def __init__(self, info: ModelInfo, num_classes_with_background: int, iou_threshold: float | None = None,
                 max_candidates: int = 2000) -> None:
        anchors = generate_anchors(info.anchors)
        self.num_anchors = anchors.shape[0]
        self._decoder = BoxDecoder(anchors, info.box_coder)
        self._boxes = np.zeros((self.num_anchors, 4), np.float32)  # yxyx normalised
        self._scores = np.zeros((self.num_anchors, num_classes_with_background), np.float32)
        self._first_class = 1 if info.has_background else 0
        self._conversion = info.score_conversion
        self.iou_threshold = info.nms_iou_threshold if iou_threshold is None else iou_threshold
        self.max_candidates = max_candidates
        self._xywh = np.zeros((max_candidates, 4), np.float32)

    def _convert_scores(self, logits: np.ndarray) -> np.ndarray:
        scores = self._scores
        if self._conversion == "sigmoid":
            np.negative(logits, out=scores)
            np.exp(scores, out=scores)
            scores += 1.0
            np.reciprocal(scores, out=scores)
        elif self._conversion == "softmax":
            np.copyto(scores, logits)
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
        else:
            np.copyto(scores, logits)
        return scores[:, self._first_class:]

    def decode(self, encodings: np.ndarray, logits: np.ndarray, score_threshold: float,
               out_yxyx: np.ndarray, out_scores: np.ndarray, out_classes: np.ndarray) -> int:
        """Fill the ``out_*`` arrays (capacity K) best-first; return how many are valid.

        ``encodings`` ``[A, 4]`` and ``logits`` ``[A, C]`` are float views of the model outputs.
        """
        scores = self._convert_scores(logits)
        anchor_idx, class_idx = np.nonzero(scores > score_threshold)
        if anchor_idx.size == 0:
            return 0
        cand_scores = scores[anchor_idx, class_idx]
        if cand_scores.size > self.max_candidates:
            keep = np.argpartition(-cand_scores, self.max_candidates - 1)[: self.max_candidates]
            anchor_idx, class_idx, cand_scores = anchor_idx[keep], class_idx[keep], cand_scores[keep]
        self._decoder.decode(encodings, self._boxes)
        boxes = self._boxes[anchor_idx]
        n = boxes.shape[0]
        xywh = self._xywh[:n]
        xywh[:, 0] = boxes[:, 1]
        xywh[:, 1] = boxes[:, 0]
        xywh[:, 2] = boxes[:, 3] - boxes[:, 1]
        xywh[:, 3] = boxes[:, 2] - boxes[:, 0]
        keep = cv2.dnn.NMSBoxesBatched(xywh, cand_scores, class_idx.astype(np.int32), float(score_threshold),
                                       float(self.iou_threshold))
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        if keep.size == 0:
            return 0
        keep = keep[np.argsort(-cand_scores[keep], kind="stable")][: out_scores.shape[0]]
        count = keep.size
        out_yxyx[:count] = boxes[keep]
        out_scores[:count] = cand_scores[keep]
        out_classes[:count] = class_idx[keep]
        return count
