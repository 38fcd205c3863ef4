"""SSD target assignment: match ground-truth boxes to anchors by IoU and encode them.

Pure numpy (run inside tf.data through ``tf.numpy_function``), so the encoding is the exact
:func:`edge.contract.boxcoding.encode_boxes` the runtime decodes with. Follows the OD API ``argmax_matcher``:
an anchor is positive when its best IoU >= ``positive_iou``, background below ``negative_iou``,
ignored in between; every ground-truth box also claims its best anchor so small objects are never
left without a positive.
"""

from __future__ import annotations

import numpy as np

from edge.contract.boxcoding import BoxCoderScales, encode_boxes

IGNORE = -1  # class target of anchors that take no part in the classification loss
BACKGROUND = 0


def anchor_corners(anchors: np.ndarray) -> np.ndarray:
    """``[A, 4]`` (ycenter, xcenter, h, w) -> ``[A, 4]`` (ymin, xmin, ymax, xmax), normalised."""
    yc, xc, h, w = np.moveaxis(np.asarray(anchors, np.float32), -1, 0)
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def iou_matrix(boxes: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """IoU of every box ``[N, 4]`` with every anchor ``[A, 4]`` (both yxyx) -> ``[N, A]``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ymin = np.maximum(boxes[:, None, 0], corners[None, :, 0])
    xmin = np.maximum(boxes[:, None, 1], corners[None, :, 1])
    ymax = np.minimum(boxes[:, None, 2], corners[None, :, 2])
    xmax = np.minimum(boxes[:, None, 3], corners[None, :, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_a = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    return inter / np.maximum(area_b[:, None] + area_a[None, :] - inter, 1e-8)


def assign_targets(boxes_yxyx: np.ndarray, class_ids: np.ndarray, anchors: np.ndarray,
                   scales: BoxCoderScales = BoxCoderScales(), positive_iou: float = 0.5,
                   negative_iou: float = 0.4, corners: np.ndarray | None = None):
    """Targets for one image.

    ``boxes_yxyx``: ground truth ``[N, 4]`` normalised (ymin, xmin, ymax, xmax); ``class_ids``
    ``[N]`` 0-based (no background); ``anchors`` ``[A, 4]`` from :func:`edge.contract.anchors.generate_anchors`.
    Returns ``box_targets`` float32 ``[A, 4]`` (encodings; zero where not positive) and
    ``class_targets`` int32 ``[A]``: ``class_id + 1`` for positives, 0 background, -1 ignored.
    """
    anchors = np.asarray(anchors, np.float32)
    num_anchors = anchors.shape[0]
    box_targets = np.zeros((num_anchors, 4), np.float32)
    class_targets = np.zeros(num_anchors, np.int32)
    boxes = np.asarray(boxes_yxyx, np.float32).reshape(-1, 4)
    class_ids = np.asarray(class_ids, np.int32).reshape(-1)
    if len(boxes) == 0:
        return box_targets, class_targets
    if corners is None:
        corners = anchor_corners(anchors)
    iou = iou_matrix(boxes, corners)  # [N, A]
    best_box = iou.argmax(axis=0)
    best_iou = iou[best_box, np.arange(num_anchors)]
    class_targets[(best_iou >= negative_iou) & (best_iou < positive_iou)] = IGNORE
    positive = best_iou >= positive_iou
    # Each box claims its best anchor (in box order; a later box wins a shared anchor).
    forced = iou.argmax(axis=1)
    for n, a in enumerate(forced):
        if iou[n, a] > 0:
            best_box[a] = n
            positive[a] = True
    class_targets[positive] = class_ids[best_box[positive]] + 1
    box_targets[positive] = encode_boxes(boxes[best_box[positive]], anchors[positive], scales)
    return box_targets, class_targets
