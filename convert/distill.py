"""Knowledge distillation: a trained teacher's outputs as extra targets for the student, and their loss.

The teacher is any SSD of this project with the student's labels (same names, same order) and the
same score conversion (sigmoid for the focal loss, softmax for hard-negative mining): a larger run
(``edge train --teacher RUN_DIR``) or the unpruned model during channel pruning. It runs in
inference mode (``training=False``: BatchNorm uses its moving statistics) on the student's batch,
and no gradient flows into it.

Teacher images. A teacher with another input size sees its own view of each training image: the
data pipeline (:class:`convert.pipeline.InputPipeline` with ``teacher_config``) resizes the same
crop from the source pixels to the teacher's input, flips and jitters it as the student's and
normalises it the teacher's way (``targets["teacher_images"]``). A 320 px teacher of a 160 px
student thus sees the detail it learned from, which is what it knows more than the student; fed the
student's batch upsampled, it would see no more than the student does. Without that view (a caller's
own batches), the student's batch is resized bilinearly (``tf.image.resize``) to the teacher's size
and renormalised if the normalisations differ. A same-size teacher always takes the student's batch.

Anchor mapping (computed once, in numpy, when the teacher is built):

- identical anchor layouts (same :class:`edge.contract.anchors.AnchorConfig`, hence the same anchors
  in the same order): the identity. Teacher outputs are used as they are -- exact, no re-encoding
  (unless the box coders' scales differ, see below).
- other layouts (input size, feature maps, scales): each student anchor takes the teacher anchor
  with the highest IoU (normalised corners, :func:`convert.targets.iou_matrix`; ties go to the
  lower index). Class soft targets are the teacher's logits gathered through that index. Box
  targets are the teacher's box at that index, decoded with the teacher's anchor and box coder
  (:mod:`edge.contract.boxcoding`), then encoded against the student anchor with the student's box
  coder. For two fixed anchors decode-then-encode is affine in the encoding (centres shift and
  scale, log-sizes shift), so it is precomputed as ``enc * scale + offset``: ``offset`` is
  ``encode_boxes(decode_boxes(0, teacher anchor), student anchor)`` and ``scale`` the ratio of anchor
  sizes and coder scales. This is exact (tests check it against the contract's own functions) and
  cannot overflow in ``exp`` as a literal decode could for a wild teacher encoding.

Loss (:func:`distillation_loss`), float32 throughout, ``T`` = temperature:

- class, sigmoid models: per anchor, the sum over all columns (background included) of the binary
  cross-entropy between ``sigmoid(student/T)`` and the soft target ``sigmoid(teacher/T)``, minus
  the teacher's own entropy (a constant, so the gradients are the BCE's; the term is then the
  Bernoulli KL divergence and reads 0 when the student matches). Softmax models: the KL divergence
  of ``softmax(student/T)`` from ``softmax(teacher/T)``. Both are multiplied by ``T**2`` (Hinton et
  al.: the gradients of soft targets shrink as ``1/T**2``; this keeps the term's weight independent
  of ``T``), summed over anchors and divided by the teacher's soft count of objects (the sum of its
  foreground probabilities, at least 1), as the detection loss divides by its positives. A plain
  mean over anchors was measured first (tests/test_distill.py: 128 px student of a 160 px teacher,
  30 steps): the agreed-on background anchors diluted it until its pull on the student's scores was
  0.1% (held-out |sigmoid| distance 0.0650 -> 0.0649). The Bernoulli KL of a background anchor the
  student already matches is ~0, so the sum is carried by the anchors where the two disagree.
  ``weight`` scales both.
- box imitation: Huber (the detection loss's delta) between the student's encodings and the
  teacher's (mapped) encodings, summed over the four coordinates, on the anchors where the
  teacher's largest foreground probability (at temperature 1) exceeds ``box_confidence``,
  normalised by the count of such anchors (at least 1) -- the detection box loss's normalisation
  with the teacher's confident anchors as positives.
- total = detection loss + ``weight * (class + box)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.config import CHECKPOINT_DIR, CONFIG_NAME, SSDConfig
from convert.targets import anchor_corners, iou_matrix
from edge.contract.anchors import generate_anchors
from edge.contract.boxcoding import BoxCoderScales, decode_boxes, encode_boxes
from edge.errors import EdgeError

IDENTITY = "identity"
MAX_IOU = "max-IoU anchor match"
_IOU_CHUNK = 512  # student anchors per IoU block: keeps the [chunk, A_teacher] matrices a few MB


@dataclass
class DistillConfig:
    weight: float = 1.0  # of the distillation terms against the ground-truth detection loss
    temperature: float = 2.0
    box_confidence: float = 0.5  # teacher foreground probability above which its boxes are imitated

    def validate(self) -> "DistillConfig":
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise EdgeError(f"--distill-weight {self.weight:g}: must be 0 or more")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise EdgeError(f"--temperature {self.temperature:g}: must be above 0")
        if not 0.0 <= self.box_confidence < 1.0:
            raise EdgeError(f"box_confidence {self.box_confidence:g}: expected 0 <= p < 1")
        return self


def max_iou_mapping(student_anchors: np.ndarray, teacher_anchors: np.ndarray) -> np.ndarray:
    """For every student anchor ``[A_s, 4]`` (yc, xc, h, w), the index of the teacher anchor with the
    highest IoU -> int32 ``[A_s]``."""
    student = anchor_corners(student_anchors)
    teacher = anchor_corners(teacher_anchors)
    index = np.empty(len(student), np.int32)
    for start in range(0, len(student), _IOU_CHUNK):
        index[start:start + _IOU_CHUNK] = iou_matrix(student[start:start + _IOU_CHUNK], teacher).argmax(axis=1)
    return index


def box_reencoding(student_anchors: np.ndarray, matched_teacher_anchors: np.ndarray,
                   student_scales: BoxCoderScales, teacher_scales: BoxCoderScales):
    """``(scale, offset)`` float32 ``[A_s, 4]`` such that ``teacher_encoding * scale + offset`` is the
    teacher's box (decoded against its matched anchor) encoded against the student anchor."""
    student = np.asarray(student_anchors, np.float32)
    teacher = np.asarray(matched_teacher_anchors, np.float32)
    # A zero encoding decodes to the anchor itself: its re-encoding is the constant part.
    offset = encode_boxes(decode_boxes(np.zeros_like(teacher), teacher, teacher_scales), student, student_scales)
    eps = 1e-8
    scale = np.stack([
        teacher[:, 2] / np.maximum(student[:, 2], eps) * (student_scales.y / teacher_scales.y),
        teacher[:, 3] / np.maximum(student[:, 3], eps) * (student_scales.x / teacher_scales.x),
        np.full(len(student), student_scales.h / teacher_scales.h),
        np.full(len(student), student_scales.w / teacher_scales.w),
    ], axis=-1)
    return scale.astype(np.float32), offset.astype(np.float32)


def check_teacher_dir(run_dir) -> SSDConfig:
    """The teacher run directory's config, or one line naming ``--teacher``. Pure Python (no
    TensorFlow): the CLI calls it before anything starts."""
    path = Path(run_dir)
    where = f"--teacher {path}"
    if not path.exists():
        raise EdgeError(f"{where}: no such directory")
    if not path.is_dir():
        raise EdgeError(f"{where}: not a directory (expected an edge train run directory)")
    if not (path / CONFIG_NAME).is_file():
        raise EdgeError(f"{where}: not a training run directory (no {CONFIG_NAME})")
    if not (path / CHECKPOINT_DIR / "checkpoint").is_file():
        raise EdgeError(f"{where}: no checkpoint under {CHECKPOINT_DIR}/ (train the teacher first)")
    try:
        return SSDConfig.load(path)
    except EdgeError as exc:
        raise EdgeError(f"{where}: {exc}") from None


def check_compatible(teacher: SSDConfig, student: SSDConfig, where: str = "teacher") -> None:
    """Labels (names and order) and score conversion must agree, or soft targets mean other classes."""
    if list(teacher.labels) != list(student.labels):
        raise EdgeError(f"{where}: labels {list(teacher.labels)} differ from the student's {list(student.labels)}")
    if teacher.score_conversion != student.score_conversion:
        losses = {"sigmoid": "focal", "softmax": "hard_negatives"}
        raise EdgeError(f"{where}: the teacher scores classes with {teacher.score_conversion} "
                        f"(--loss {losses.get(teacher.score_conversion, '?')}), the student with "
                        f"{student.score_conversion} (--loss {losses.get(student.score_conversion, '?')}); "
                        "train the student with the teacher's --loss")


class Teacher:
    """A frozen teacher model and how its outputs map onto the student's anchors.

    ``Teacher(model, teacher_config, student_config)`` takes an in-memory tf-keras model (channel
    pruning: the unpruned model, a separate object from the one being tuned, with the same anchors);
    :meth:`from_run` restores a run directory. :meth:`targets` is called inside the train step.
    """

    def __init__(self, model, teacher_config: SSDConfig, student_config: SSDConfig, source=None) -> None:
        where = f"--teacher {source}" if source is not None else "teacher"
        check_compatible(teacher_config, student_config, where)
        # Left as given (not set trainable=False): that flag is part of each layer's config, and a
        # model cloned from the teacher afterwards (pruning wrappers) would inherit frozen layers.
        # Nothing trains it anyway: the step differentiates the student's variables only.
        self.model = model
        self.config = teacher_config
        self.student_config = student_config
        self.source = None if source is None else str(source)
        self.score_conversion = teacher_config.score_conversion  # the student's too (checked above)
        student_anchors = generate_anchors(student_config.anchors)
        teacher_anchors = generate_anchors(teacher_config.anchors)
        num_teacher = int(model.outputs[0].shape[1])
        if num_teacher != len(teacher_anchors):
            raise EdgeError(f"{where}: the model predicts {num_teacher} boxes but its anchor config has "
                            f"{len(teacher_anchors)}")
        same_layout = teacher_config.anchors.to_dict() == student_config.anchors.to_dict()
        self.mapping = IDENTITY if same_layout else MAX_IOU
        self.index = None if same_layout else max_iou_mapping(student_anchors, teacher_anchors)
        matched = teacher_anchors if same_layout else teacher_anchors[self.index]
        self.reencode = not same_layout or teacher_config.box_coder != student_config.box_coder
        self.box_scale, self.box_offset = (box_reencoding(student_anchors, matched, student_config.box_coder,
                                                          teacher_config.box_coder) if self.reencode else (None, None))
        self.student_size = student_config.architecture.input_size
        self.input_size = teacher_config.architecture.input_size
        # The training pipeline then supplies the teacher's own view of each image (module docstring).
        self.sees_own_view = self.input_size != self.student_size
        ns, nt = student_config.normalization, teacher_config.normalization
        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t
        self._renormalise = (ns.mean, ns.std) != (nt.mean, nt.std)
        self._norm = (ns.std / nt.std, (ns.mean - nt.mean) / nt.std)

    @classmethod
    def from_run(cls, run_dir, student_config: SSDConfig) -> "Teacher":
        """Rebuild the run's model from its config.json and restore its latest checkpoint."""
        from convert.checkpoints import load_trained_model

        run_dir = Path(run_dir)
        config = check_teacher_dir(run_dir)
        check_compatible(config, student_config, f"--teacher {run_dir}")  # before the model is built
        try:
            model, config = load_trained_model(run_dir)
        except EdgeError as exc:
            text = str(exc)
            raise EdgeError(text if text.startswith("--teacher") else f"--teacher {text}") from None
        except (IndexError, OSError, RuntimeError) as exc:  # truncated data files, as convert.inputs
            from edge.errors import first_line

            raise EdgeError(f"--teacher {run_dir}: unreadable checkpoint ({first_line(exc)})") from None
        return cls(model, config, student_config, source=run_dir)

    def describe(self) -> dict:
        """Provenance for config.training."""
        return {"teacher": self.source or "in-memory model", "mapping": self.mapping,
                "teacher_input_size": self.input_size, "teacher_width": self.config.architecture.width,
                "teacher_anchors": int(self.model.outputs[0].shape[1])}

    def targets(self, images, teacher_images=None):
        """Teacher ``(box encodings, class logits)`` on the student's anchors for a student batch,
        float32, gradient-free. Inside a tf.function. ``teacher_images``: the teacher's own view of
        the batch (its size, its normalisation), when the pipeline made one."""
        from convert.tf import import_tensorflow

        tf = import_tensorflow()
        if teacher_images is not None:
            x = tf.cast(teacher_images, tf.float32)
        else:
            x = tf.cast(images, tf.float32)
            if self._renormalise:
                x = x * self._norm[0] + self._norm[1]
            if self.input_size != self.student_size:
                x = tf.image.resize(x, (self.input_size, self.input_size), method="bilinear")
        box, logits = self.model(x, training=False)
        box, logits = tf.cast(box, tf.float32), tf.cast(logits, tf.float32)
        if self.index is not None:
            index = tf.constant(self.index)
            box, logits = tf.gather(box, index, axis=1), tf.gather(logits, index, axis=1)
        if self.reencode:
            box = box * tf.constant(self.box_scale) + tf.constant(self.box_offset)
        return tf.stop_gradient(box), tf.stop_gradient(logits)


def foreground_probability(logits, score_conversion: str):
    """Largest foreground probability per anchor ``[B, A]`` (temperature 1)."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    probs = tf.nn.softmax(logits) if score_conversion == "softmax" else tf.sigmoid(logits)
    return tf.reduce_max(probs[..., 1:], axis=-1)


def distillation_loss(student_box, student_logits, teacher_box, teacher_logits, config: DistillConfig,
                      score_conversion: str = "sigmoid", huber_delta: float = 1.0):
    """``(class_distill, box_distill)`` scalars for one batch (one replica); see the module docstring."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    student_box = tf.cast(student_box, tf.float32)
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_box = tf.stop_gradient(tf.cast(teacher_box, tf.float32))
    teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    t = float(config.temperature)
    zs, zt = student_logits / t, teacher_logits / t
    if score_conversion == "softmax":
        p_t = tf.nn.softmax(zt)
        per_anchor = tf.reduce_sum(p_t * (tf.nn.log_softmax(zt) - tf.nn.log_softmax(zs)), -1)
    else:
        p_t = tf.sigmoid(zt)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=p_t, logits=zs)
        entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=p_t, logits=zt)
        per_anchor = tf.reduce_sum(bce - entropy, -1)
    foreground = foreground_probability(teacher_logits, score_conversion)
    # Summed over anchors and divided by the teacher's soft count of objects, as the detection loss
    # divides by its positives: a mean over every anchor lets the thousands of agreed-on background
    # anchors dilute the few that carry the teacher's knowledge (measured: 0.1% score change).
    soft_positives = tf.maximum(tf.reduce_sum(tf.stop_gradient(foreground)), 1.0)
    class_distill = (t * t) * tf.reduce_sum(per_anchor) / soft_positives

    confident = tf.cast(foreground > config.box_confidence, tf.float32)
    err = tf.abs(teacher_box - student_box)
    huber = tf.where(err < huber_delta, 0.5 * tf.square(err), huber_delta * (err - 0.5 * huber_delta))
    box_distill = tf.reduce_sum(tf.reduce_sum(huber, -1) * confident) / tf.maximum(tf.reduce_sum(confident), 1.0)
    return class_distill, box_distill
