"""tf.data input pipeline: read -> (box-safe crop) -> resize to the model size -> flip -> targets
-> photometric -> normalise -> batch -> prefetch.

With a distillation teacher of another input size, the same crop is also resized from the source
pixels to the teacher's input (then flipped, jittered and normalised as the student's, with the same
draws): a teacher at 320 px of a 160 px student sees the detail it was trained on, not the
student's image upsampled. That image travels in the targets as ``teacher_images``.

Memory: every image is resized to the fixed ``S x S`` model input right after decoding, before any
batching or augmentation (the lever that keeps a batch of 12-megapixel photos from costing
gigabytes); parallel reads and prefetch are bounded (``parallel`` and 2 batches), nothing is cached.
Images are read with :func:`edge.images.read_image`. Bad images (missing, not a regular file,
truncated, refused by the decoder, declaring absurd sizes, size not matching the annotation) are
skipped, named (one warning line each) and listed in :attr:`InputPipeline.skipped`; the run goes on
(a bad file never raises inside the tf.data map function, which would end the epoch).
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from convert.config import SSDConfig
from convert.targets import anchor_corners, assign_targets
from convert.tf import import_tensorflow
from edge.contract.anchors import generate_anchors
from edge.errors import first_line
from edge.images import DEFAULT_MAX_PIXELS, ImageError, read_image

log = logging.getLogger(__name__)

MIN_CROP_FRACTION = 0.3  # of each image side; crops never cut through a box


class InputPipeline:
    """Builds tf.data datasets for one :class:`~convert.data.Dataset` and one model config."""

    def __init__(self, dataset, config: SSDConfig, augment: bool = False, parallel: int = 2,
                 crop_probability: float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS,
                 teacher_config: SSDConfig | None = None) -> None:
        self.dataset = dataset
        self.config = config
        self.augment = augment
        self.parallel = max(1, int(parallel))
        self.crop_probability = crop_probability
        self.size = config.architecture.input_size
        self.max_pixels = max_pixels
        teacher_size = None if teacher_config is None else teacher_config.architecture.input_size
        # A same-size teacher takes the student's batch itself (renormalised if need be).
        self.teacher_size = teacher_size if teacher_size not in (None, self.size) else None
        self.teacher_normalization = None if self.teacher_size is None else teacher_config.normalization
        self.anchors = generate_anchors(config.anchors)
        self._corners = anchor_corners(self.anchors)
        self._skipped: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) of every image this pipeline had to leave out so far."""
        with self._lock:
            return sorted(self._skipped.items())

    def _skip(self, path: str, reason: str) -> None:
        with self._lock:
            if path not in self._skipped:
                self._skipped[path] = reason
                log.warning("skipped %s: %s", path, reason)

    def read(self, index: int, rng: np.random.Generator | None = None):
        """Image ``index`` as RGB uint8 ``[S, S, 3]`` plus its boxes (normalised yxyx), class ids and
        the teacher's view of the same crop (``[T, T, 3]``, or None without a teacher of another size).

        Returns None (and records why) when the image cannot be used.
        """
        sample = self.dataset.samples[index]
        path = str(sample.image_path)
        try:
            image = read_image(path, max_pixels=self.max_pixels)
        except ImageError as exc:
            self._skip(path, exc.reason)
            return None
        h, w = image.shape[:2]
        if (w, h) != (sample.width, sample.height):
            self._skip(path, f"image is {w}x{h} but its annotation says {sample.width}x{sample.height}")
            return None
        boxes = sample.boxes.copy()  # xyxy pixels
        if rng is not None and rng.random() < self.crop_probability:
            image, boxes = _box_safe_crop(image, boxes, rng)
            h, w = image.shape[:2]
        # Resize first: everything after this point costs S*S*3 bytes per image, whatever the photo.
        teacher_view = None if self.teacher_size is None else _resized_rgb(image, self.teacher_size)
        image = _resized_rgb(image, self.size)
        norm = np.empty_like(boxes)
        norm[:, 0], norm[:, 1] = boxes[:, 1] / h, boxes[:, 0] / w
        norm[:, 2], norm[:, 3] = boxes[:, 3] / h, boxes[:, 2] / w
        if rng is not None and rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            if teacher_view is not None:
                teacher_view = np.ascontiguousarray(teacher_view[:, ::-1])
            norm[:, 1], norm[:, 3] = 1.0 - norm[:, 3], 1.0 - norm[:, 1]
        return image, np.clip(norm, 0.0, 1.0), sample.class_ids, teacher_view

    def _load(self, index, seed):
        rng = np.random.default_rng(int(seed)) if self.augment else None
        try:
            loaded = self.read(int(index), rng)
        except (cv2.error, ValueError, MemoryError) as exc:  # one odd file must not end the epoch
            self._skip(str(self.dataset.samples[int(index)].image_path),
                       f"cannot be used ({first_line(exc, 160, with_type=True)})")
            loaded = None
        num_anchors = self.anchors.shape[0]
        teacher_side = self.teacher_size or 1  # a 1x1 placeholder when there is no teacher view
        if loaded is None:
            return (np.zeros((self.size, self.size, 3), np.uint8), np.zeros((num_anchors, 4), np.float32),
                    np.zeros(num_anchors, np.int32), False, np.zeros((teacher_side, teacher_side, 3), np.uint8))
        image, boxes, ids, teacher_view = loaded
        box_targets, class_targets = assign_targets(boxes, ids, self.anchors, self.config.box_coder,
                                                    corners=self._corners)
        if teacher_view is None:
            teacher_view = np.zeros((teacher_side, teacher_side, 3), np.uint8)
        return image, box_targets, class_targets, True, teacher_view

    def training_dataset(self, batch_size: int, seed: int = 0, repeat: bool = True):
        """Shuffled, augmented batches ``(images, {"box_targets", "class_targets"})``, forever."""
        tf = import_tensorflow()
        n = len(self.dataset.samples)
        indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            indices = indices.repeat()
        seeds = tf.data.Dataset.random(seed=seed)
        return self._batched(tf.data.Dataset.zip((indices, seeds)), batch_size, drop_remainder=True,
                             photometric=self.augment, seed=seed)

    def eval_dataset(self, batch_size: int):
        """Unaugmented batches in sample order, with their indices: ``(images, indices, ok)``."""
        tf = import_tensorflow()
        n = len(self.dataset.samples)
        pairs = tf.data.Dataset.zip((tf.data.Dataset.range(n), tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat(n)))
        size, norm = self.size, self.config.normalization

        def load(index, seed):
            image, _, _, ok, _ = tf.numpy_function(self._load, [index, seed],
                                                   [tf.uint8, tf.float32, tf.int32, tf.bool, tf.uint8])
            image.set_shape((size, size, 3))
            image = (tf.cast(image, tf.float32) - norm.mean) / norm.std
            return image, index, tf.reshape(ok, ())

        return pairs.map(load, num_parallel_calls=self.parallel).batch(batch_size).prefetch(2)

    def _batched(self, pairs, batch_size: int, drop_remainder: bool, photometric: bool, seed: int):
        tf = import_tensorflow()
        size, num_anchors = self.size, self.anchors.shape[0]
        teacher_size = self.teacher_size

        def load(index, element_seed):
            image, box_t, cls_t, ok, teacher_view = tf.numpy_function(
                self._load, [index, element_seed], [tf.uint8, tf.float32, tf.int32, tf.bool, tf.uint8])
            image.set_shape((size, size, 3))
            box_t.set_shape((num_anchors, 4))
            cls_t.set_shape((num_anchors,))
            teacher_view.set_shape((teacher_size or 1, teacher_size or 1, 3))
            return image, box_t, cls_t, tf.reshape(ok, ()), element_seed, teacher_view

        def normalised(image, element_seed, norm):
            image = tf.cast(image, tf.float32)
            if photometric:  # stateless, seeded per element: the teacher's view gets the same jitter
                image = _photometric(tf, image, element_seed)
            return (image - norm.mean) / norm.std

        def finish(image, box_t, cls_t, ok, element_seed, teacher_view):
            targets = {"box_targets": box_t, "class_targets": cls_t}
            if teacher_size is not None:
                targets["teacher_images"] = normalised(teacher_view, element_seed, self.teacher_normalization)
            return normalised(image, element_seed, self.config.normalization), targets

        ds = pairs.map(load, num_parallel_calls=self.parallel)
        ds = ds.filter(lambda image, b, c, ok, s, t: ok)
        ds = ds.map(finish, num_parallel_calls=self.parallel)
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(2)


def _resized_rgb(image: np.ndarray, side: int) -> np.ndarray:
    """BGR ``image`` -> RGB ``[side, side, 3]`` (area filter when shrinking)."""
    h, w = image.shape[:2]
    out = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if max(h, w) > side else cv2.INTER_LINEAR)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB, dst=out)


def _photometric(tf, image, element_seed):
    """Brightness, contrast, saturation and hue jitter on RGB 0..255 float, stateless (seeded)."""
    seed = tf.stack([tf.cast(element_seed % 2147483647, tf.int32), 7])
    image = image / 255.0
    image = tf.image.stateless_random_brightness(image, 0.15, seed)
    image = tf.image.stateless_random_contrast(image, 0.7, 1.3, seed + 1)
    image = tf.image.stateless_random_saturation(image, 0.7, 1.3, seed + 2)
    image = tf.image.stateless_random_hue(image, 0.04, seed + 3)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def _box_safe_crop(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """Random crop (any aspect ratio) that keeps every box whole; boxes xyxy pixels."""
    h, w = image.shape[:2]
    if len(boxes):
        bx0, by0 = boxes[:, 0].min(), boxes[:, 1].min()
        bx1, by1 = boxes[:, 2].max(), boxes[:, 3].max()
    else:
        bx0, by0, bx1, by1 = w / 2, h / 2, w / 2, h / 2
    # Each side is drawn between the image edge and the boxes' union, no smaller than the minimum.
    x0 = rng.uniform(0, max(0.0, min(bx0, w * (1 - MIN_CROP_FRACTION))))
    y0 = rng.uniform(0, max(0.0, min(by0, h * (1 - MIN_CROP_FRACTION))))
    x1 = rng.uniform(min(w, max(bx1, x0 + w * MIN_CROP_FRACTION)), w)
    y1 = rng.uniform(min(h, max(by1, y0 + h * MIN_CROP_FRACTION)), h)
    x0, y0, x1, y1 = int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return image, boxes
    cropped = image[y0:y1, x0:x1]
    shifted = boxes - np.array([x0, y0, x0, y0], np.float32)
    return cropped, shifted
