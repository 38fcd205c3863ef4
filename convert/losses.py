"""SSD losses: Huber (smooth-L1) on box encodings, focal or hard-negative-mined CE on classes.

Targets come from :func:`convert.targets.assign_targets`: ``class_targets`` is ``class + 1`` for
positives, 0 for background, -1 for ignored anchors. Both terms are normalised by the number of
positive anchors in the batch, as the OD API does, so the loss scale does not depend on batch size
or anchor count. All maths in float32 (logits arrive float32 even under mixed precision).
"""

from __future__ import annotations

from dataclasses import dataclass

from convert.tf import import_tensorflow

FOCAL = "focal"  # sigmoid focal loss over all columns (background included): score_conversion sigmoid
HARD_NEGATIVES = "hard_negatives"  # softmax CE with 3:1 hard-negative mining: score_conversion softmax
CLASS_LOSSES = (FOCAL, HARD_NEGATIVES)


@dataclass
class LossConfig:
    classification: str = FOCAL
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    negatives_per_positive: int = 3
    huber_delta: float = 1.0
    box_weight: float = 1.0


def score_conversion_for(classification: str) -> str:
    """How the exported head turns logits into scores for a model trained with this loss."""
    return "softmax" if classification == HARD_NEGATIVES else "sigmoid"


def detection_loss(box_targets, class_targets, box_pred, class_logits, config: LossConfig = LossConfig()):
    """Returns ``(total, box_loss, class_loss)`` scalars for one batch (one replica)."""
    tf = import_tensorflow()
    box_pred = tf.cast(box_pred, tf.float32)
    class_logits = tf.cast(class_logits, tf.float32)
    class_targets = tf.cast(class_targets, tf.int32)
    positive = class_targets > 0
    pos_f = tf.cast(positive, tf.float32)
    num_pos = tf.maximum(tf.reduce_sum(pos_f), 1.0)

    err = tf.abs(tf.cast(box_targets, tf.float32) - box_pred)  # [B, A, 4]
    delta = config.huber_delta
    per_anchor_box = tf.where(err < delta, 0.5 * tf.square(err), delta * (err - 0.5 * delta))
    box_loss = tf.reduce_sum(tf.reduce_sum(per_anchor_box, -1) * pos_f) / num_pos

    columns = tf.shape(class_logits)[-1]
    onehot = tf.one_hot(tf.maximum(class_targets, 0), columns, dtype=tf.float32)
    valid = tf.cast(class_targets >= 0, tf.float32)
    if config.classification == FOCAL:
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=class_logits)
        p = tf.sigmoid(class_logits)
        p_t = p * onehot + (1 - p) * (1 - onehot)
        alpha_t = config.focal_alpha * onehot + (1 - config.focal_alpha) * (1 - onehot)
        focal = alpha_t * tf.pow(1 - p_t, config.focal_gamma) * ce
        class_loss = tf.reduce_sum(tf.reduce_sum(focal, -1) * valid) / num_pos
    elif config.classification == HARD_NEGATIVES:
        ce = tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=class_logits)  # [B, A]
        negative = tf.cast(class_targets == 0, tf.float32)
        # Keep the k hardest negatives per image, k = ratio * positives in that image (at least 1).
        neg_ce = ce * negative
        k = tf.cast(tf.reduce_sum(pos_f, -1) * config.negatives_per_positive, tf.int32)
        k = tf.maximum(k, 1)
        ranks = tf.argsort(tf.argsort(neg_ce, axis=-1, direction="DESCENDING"), axis=-1)
        hard = tf.cast(ranks < k[:, None], tf.float32) * negative
        class_loss = tf.reduce_sum(ce * (pos_f + hard)) / num_pos
    else:
        raise ValueError(f"classification loss {config.classification!r}; expected one of {CLASS_LOSSES}")
    total = config.box_weight * box_loss + class_loss
    return total, box_loss, class_loss
