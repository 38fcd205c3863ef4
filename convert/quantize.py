"""Calibration data for int8 post-training quantization, and quantization-aware fine-tuning.

Calibration images go through :class:`edge.detector.buffer.FrameBuffer` -- the exact resize and colour
conversion the board applies to camera frames -- into a float32 ``[1, H, W, 3]`` array of raw
pixels 0..255 (the exported model normalises internally, see :mod:`convert.export`).

Exact input quantization: the quantizer sets the uint8 input's scale and zero point from the
smallest and largest pixel it sees. Natural photos rarely contain both 0 and 255 in the calibration
set (one measured set gave scale 0.9989 instead of 1.0), which would make the board rescale every
pixel. The first calibration image therefore gets one black and one white pixel in its corner, so
the input range is exactly [0, 255] -> scale 1.0, zero point 0, and raw camera pixels go in as they
are. Two pixels of one image do not move any other tensor's range measurably.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge.detector.buffer import STRETCH, FrameBuffer
from edge.errors import EdgeError
from edge.contract.modelinfo import Normalization
from edge.images import IMAGE_EXTENSIONS, ImageError, is_glob, read_image
from edge.images import list_images as find_images

DEFAULT_CALIBRATION_IMAGES = 100
log = logging.getLogger(__name__)


def list_images(folder: str | Path, option: str = "--calib") -> list[Path]:
    """Calibration images: those :func:`edge.images.list_images` finds in ``folder`` (or a glob), else in
    its ``JPEGImages/`` (VOC layout); EdgeError naming ``option`` when there are none."""
    folder = Path(folder)
    if not is_glob(folder):
        if not folder.exists():
            raise EdgeError(f"{option} {folder}: no such directory")
        if not folder.is_dir():
            raise EdgeError(f"{option} {folder}: not a directory of images")
    paths = find_images(folder)
    if not paths and (folder / "JPEGImages").is_dir():
        paths = find_images(folder / "JPEGImages")
    if not paths:
        raise EdgeError(f"{option} {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) to calibrate with")
    return paths


class PixelBuffer:
    """A FrameBuffer writing raw RGB pixels (float32, 0..255) of the model's size into one array."""

    def __init__(self, height: int, width: int, resize: str = STRETCH) -> None:
        self.array = np.zeros((1, height, width, 3), np.float32)
        self._buffer = FrameBuffer(lambda: self.array, self.array.shape, np.float32,
                                   normalization=Normalization(0.0, 1.0), mode=resize)

    def write(self, frame_bgr: np.ndarray) -> np.ndarray:
        self._buffer.write(frame_bgr)
        return self.array


def load_calibration_frames(paths: list[Path], height: int, width: int, limit: int = DEFAULT_CALIBRATION_IMAGES,
                            resize: str = STRETCH, option: str = "--calib") -> list[np.ndarray]:
    """Up to ``limit`` images as float32 ``[1, H, W, 3]`` raw RGB pixels, evenly spread over ``paths``.

    Unreadable files (see :func:`edge.images.read_image`) are skipped with a warning naming each;
    none readable at all is an EdgeError quoting the first reason.
    """
    if limit < 1:
        raise EdgeError(f"{option}: calibration image count must be at least 1")
    step = max(1, len(paths) // limit)
    chosen = paths[::step][:limit]
    pixels = PixelBuffer(height, width, resize)
    frames, first_error = [], None
    for path in chosen:
        try:
            image = read_image(path)
        except ImageError as exc:
            log.warning("%s: skipped calibration image %s", option, exc)
            first_error = first_error or exc
            continue
        frames.append(pixels.write(image).copy())
    if not frames:
        folder = paths[0].parent if paths else "?"
        why = f" (first: {first_error})" if first_error else ""
        raise EdgeError(f"{option} {folder}: none of the {len(chosen)} images could be read{why}")
    frames[0][0, 0, 0, :] = 0.0  # exact [0, 255] input range, see the module docstring
    frames[0][0, 0, 1, :] = 255.0
    return frames


def representative_dataset(frames: list[np.ndarray]) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's ``representative_dataset``: one ``[pixels]`` list per calibration image."""

    def generate():
        for frame in frames:
            yield [frame]

    return generate


def quantize_aware(model, preserve_sparsity: bool):
    """A QAT copy of ``model`` (tf-keras): fake-quant wrappers, 8-bit default scheme.

    ``preserve_sparsity``: TFMOT's pruning-preserving QAT scheme (PQAT), which keeps the pruned
    zeros through fine-tuning; plain QAT on a pruned model fills them back in.
    """
    from convert.tf import import_tfmot

    tfmot = import_tfmot()
    quant = tfmot.quantization.keras
    annotated = quant.quantize_annotate_model(model)
    if preserve_sparsity:
        from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
            default_8bit_prune_preserve_quantize_scheme,
        )

        scheme = default_8bit_prune_preserve_quantize_scheme.Default8BitPrunePreserveQuantizeScheme()
        return quant.quantize_apply(annotated, scheme)
    return quant.quantize_apply(annotated)
