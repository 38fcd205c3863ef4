"""The fixed-size resize buffer: every frame goes straight into the interpreter's input tensor.

Made once per model. Per frame it does at most three OpenCV calls, each writing into memory that
already exists: ``cv2.resize`` into a preallocated buffer of the model's size, ``cv2.cvtColor``
into the input tensor (or into a preallocated RGB buffer), and, only for inputs that need it, one
``cv2.addWeighted`` that normalises or quantizes into the tensor. Nothing frame-sized is allocated
in steady state; a new frame size or channel count reallocates only the small resize buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from edge.errors import BadFrameError, EdgeError
from edge.contract.modelinfo import Normalization

STRETCH = "stretch"
LETTERBOX = "letterbox"
RESIZED_SHAPES_KEPT = 16  # resize buffers kept, one per fitted frame shape (a camera's aspect ratio)

_CV_DEPTH = {np.dtype(np.uint8): cv2.CV_8U, np.dtype(np.int8): cv2.CV_8S, np.dtype(np.float32): cv2.CV_32F}

# (channels of the frame, model colour order) -> cvtColor code; None: channels already match
_COLOR_CODES = {
    (1, "RGB"): cv2.COLOR_GRAY2RGB, (1, "BGR"): cv2.COLOR_GRAY2BGR,
    (3, "RGB"): cv2.COLOR_BGR2RGB, (3, "BGR"): None,
    (4, "RGB"): cv2.COLOR_BGRA2RGB, (4, "BGR"): cv2.COLOR_BGRA2BGR,
}


@dataclass(frozen=True)
class InputEncoding:
    """How RGB pixels 0..255 become tensor values: ``tensor = alpha * pixel + beta`` (saturated).

    ``kind`` is ``"raw"`` when the tensor takes the pixels unchanged (uint8 models whose
    quantization inverts the declared normalisation within 1 LSB, like TF OD API exports),
    ``"xor"`` when it takes ``pixel - 128`` as int8 (one in-place XOR), else ``"affine"``.
    """

    kind: str
    alpha: float
    beta: float
    dtype: np.dtype

    @classmethod
    def for_tensor(cls, dtype, quantization: tuple[float, int], normalization: Normalization) -> "InputEncoding":
        dtype = np.dtype(dtype)
        if dtype not in _CV_DEPTH:
            raise EdgeError(f"model input dtype {dtype} is not supported (uint8, int8 or float32)")
        scale, zero_point = quantization
        if dtype == np.float32:
            return cls("affine", 1.0 / normalization.std, -normalization.mean / normalization.std, dtype)
        if not scale:  # an unquantized integer input takes raw pixels
            return cls("raw" if dtype == np.uint8 else "xor", 1.0, 0.0 if dtype == np.uint8 else -128.0, dtype)
        alpha = 1.0 / (normalization.std * scale)
        beta = zero_point - normalization.mean * alpha
        offset = 0.0 if dtype == np.uint8 else -128.0
        worst_error = max(abs(beta - offset), abs((alpha - 1.0) * 255.0 + beta - offset))
        if worst_error <= 1.0 + 1e-6:
            return cls("raw" if dtype == np.uint8 else "xor", 1.0, offset, dtype)
        return cls("affine", alpha, beta, dtype)

    def encode_pixel(self, pixel: int) -> float:
        value = self.alpha * pixel + self.beta
        if self.dtype == np.uint8:
            return float(min(255, max(0, round(value))))
        if self.dtype == np.int8:
            return float(min(127, max(-128, round(value))))
        return value


class FrameBuffer:
    """Writes frames of any size (1, 3 or 4 channels, uint8, OpenCV BGR order) into a model input.

    ``tensor`` is the interpreter's ``tensor(input_index)`` function. It is called on every
    write and the view it returns is never kept, because LiteRT refuses to ``invoke()`` while a
    view of its buffers is alive.

    After :meth:`write`, :attr:`box_transform` maps normalised model coordinates back to frame
    pixels: ``x_frame = x_norm * mul_x + add_x`` (and likewise for y), undoing the letterbox.
    """

    def __init__(self, tensor: Callable[[], np.ndarray], shape, dtype, quantization=(0.0, 0),
                 normalization: Normalization | None = None, color: str = "RGB", mode: str = STRETCH,
                 pad_pixel: int = 0) -> None:
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise EdgeError(f"model input shape {list(shape)} is not an image [1, H, W, 3]")
        if mode not in (STRETCH, LETTERBOX):
            raise EdgeError(f"--resize {mode!r}: choose {STRETCH} or {LETTERBOX}")
        if color not in ("RGB", "BGR"):
            raise EdgeError(f"model colour order {color!r}: expected RGB or BGR")
        self._tensor = tensor
        self.height, self.width = int(shape[1]), int(shape[2])
        self.mode = mode
        self.color = color
        self.encoding = InputEncoding.for_tensor(dtype, quantization, normalization or Normalization())
        # The 'raw' and 'xor' encodings take pixels directly in the tensor; 'affine' needs a
        # uint8 RGB staging buffer that addWeighted then scales into the tensor.
        self._staging = (np.zeros((self.height, self.width, 3), np.uint8)
                         if self.encoding.kind == "affine" else None)
        self._pad_value = self.encoding.encode_pixel(pad_pixel)
        if self.encoding.kind == "xor":
            self._pad_value = float(int(self._pad_value) & 0xFF)  # as seen through the uint8 view
        self._frame_shape: tuple | None = None
        self._resized: np.ndarray | None = None
        # One resize buffer per fitted shape seen, so cameras of different aspect ratios taking turns
        # (letterbox mode) switch between buffers instead of allocating one per switch.
        self._resized_by_shape: dict[tuple, np.ndarray] = {}
        self._color_code: int | None = None
        self._fit = (0, 0, self.height, self.width)  # y0, x0, y1, x1 of the image in the input
        self.box_transform = (0.0, 0.0, 0.0, 0.0)  # mul_x, add_x, mul_y, add_y
        self.frame_size = (0, 0)  # (height, width) of the last frame written

    def _fit_for(self, frame_h: int, frame_w: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of a frame_h x frame_w frame inside the model input."""
        if self.mode == LETTERBOX:
            scale = min(self.width / frame_w, self.height / frame_h)
            fit_w = max(1, min(self.width, round(frame_w * scale)))
            fit_h = max(1, min(self.height, round(frame_h * scale)))
            y0, x0 = (self.height - fit_h) // 2, (self.width - fit_w) // 2
            return y0, x0, y0 + fit_h, x0 + fit_w
        return 0, 0, self.height, self.width

    def _configure(self, frame_shape: tuple) -> None:
        """Geometry and the resize buffer for a new frame size or channel count."""
        frame_h, frame_w = frame_shape[:2]
        channels = 1 if len(frame_shape) == 2 else frame_shape[2]
        y0, x0, y1, x1 = self._fit = self._fit_for(frame_h, frame_w)
        fit_h, fit_w = y1 - y0, x1 - x0
        self._color_code = _COLOR_CODES[(channels, self.color)]
        resized_shape = (fit_h, fit_w) if channels == 1 else (fit_h, fit_w, channels)
        if self._color_code is None:
            self._resized = None  # resize straight into the destination
        elif self._resized is None or self._resized.shape != resized_shape:
            buffer = self._resized_by_shape.get(resized_shape)
            if buffer is None:
                if len(self._resized_by_shape) >= RESIZED_SHAPES_KEPT:  # more sizes than cameras: drop the oldest
                    self._resized_by_shape.pop(next(iter(self._resized_by_shape)))
                buffer = self._resized_by_shape[resized_shape] = np.empty(resized_shape, np.uint8)
            self._resized = buffer
        # normalised model x -> frame x: (x * W - x0) * frame_w / fit_w
        self.box_transform = (
            self.width * frame_w / fit_w, -x0 * frame_w / fit_w,
            self.height * frame_h / fit_h, -y0 * frame_h / fit_h,
        )
        self.frame_size = (frame_h, frame_w)
        self._frame_shape = tuple(frame_shape)

    def rebind(self, tensor: Callable[[], np.ndarray]) -> None:
        """Write into another engine's input of the same shape (the detector changed backends)."""
        self._tensor = tensor

    def presize(self, frame_shape: tuple) -> None:
        """Size the geometry and resize buffer for frames of ``frame_shape`` before the first one."""
        frame_shape = tuple(frame_shape)
        if len(frame_shape) == 3 and frame_shape[2] == 1:
            frame_shape = frame_shape[:2]
        if frame_shape != self._frame_shape:
            self._configure(frame_shape)

    @staticmethod
    def _checked(frame: np.ndarray) -> np.ndarray:
        """``frame`` as HxW, HxWx3 or HxWx4 uint8, or BadFrameError."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
            raise BadFrameError("frame must be a non-empty uint8 image array")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame.reshape(frame.shape[:2]) if frame.flags.c_contiguous else frame[:, :, 0]
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
            raise BadFrameError(f"frame shape {frame.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
        return frame

    def write(self, frame: np.ndarray) -> None:
        """Resize, colour-convert and encode ``frame`` into the model input tensor."""
        frame = self._checked(frame)
        if frame.shape != self._frame_shape:
            self._configure(frame.shape)
        y0, x0, y1, x1 = self._fit
        if self._color_code is None and self.encoding.kind != "affine":
            # The frame's channels are the model's: resize straight into the tensor.
            tensor = self._tensor()[0]
            target = tensor.view(np.uint8) if self.encoding.kind == "xor" else tensor
            if self.mode == LETTERBOX:
                self._fill_padding(target)
            pixels = target[y0:y1, x0:x1]
            cv2.resize(frame, (x1 - x0, y1 - y0), dst=pixels, interpolation=cv2.INTER_LINEAR)
            if self.encoding.kind == "xor":
                np.bitwise_xor(pixels, 0x80, out=pixels)
            del tensor, target, pixels  # no view of the interpreter's memory may outlive this call
            return
        resized = self._resized if self._resized is not None else self._staging[y0:y1, x0:x1]
        cv2.resize(frame, (x1 - x0, y1 - y0), dst=resized, interpolation=cv2.INTER_LINEAR)
        self._commit(resized)

    def resize(self, frame: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        """``frame`` resized to the part of the input it will fill, still in its own channels.

        The first half of :meth:`write`, safe to run on another thread (it reads only settings
        fixed at construction): the capture thread calls it on each frame while the decoded frame is
        still in its CPU's cache, and :meth:`write_resized` finishes the job. ``dst`` is reused when
        its shape fits; a new array is returned only for a new frame size or channel count.
        """
        frame = self._checked(frame)
        y0, x0, y1, x1 = self._fit_for(frame.shape[0], frame.shape[1])
        shape = (y1 - y0, x1 - x0) + frame.shape[2:]
        if dst is None or dst.shape != shape or dst.dtype != np.uint8:
            dst = np.empty(shape, np.uint8)
        cv2.resize(frame, (x1 - x0, y1 - y0), dst=dst, interpolation=cv2.INTER_LINEAR)
        return dst

    def write_resized(self, resized: np.ndarray, frame_shape: tuple) -> None:
        """Colour-convert and encode the output of :meth:`resize` for a frame of ``frame_shape``.

        Leaves the tensor exactly as :meth:`write` on that frame would.
        """
        frame_shape = tuple(frame_shape)
        if len(frame_shape) == 3 and frame_shape[2] == 1:
            frame_shape = frame_shape[:2]
        if frame_shape != self._frame_shape:
            self._configure(frame_shape)
        y0, x0, y1, x1 = self._fit
        if resized.shape[:2] != (y1 - y0, x1 - x0) or resized.shape[2:] != frame_shape[2:]:
            raise BadFrameError(f"resized frame {resized.shape} does not fit a {frame_shape} frame "
                                f"in a {self.width}x{self.height} input")
        self._commit(resized)

    def _commit(self, resized: np.ndarray) -> None:
        """Resized pixels (frame channel order) -> the input tensor: colour order, padding, encoding."""
        y0, x0, y1, x1 = self._fit
        tensor = self._tensor()[0]
        target = tensor.view(np.uint8) if self.encoding.kind == "xor" else tensor
        if self.mode == LETTERBOX:
            self._fill_padding(target)
        pixels = self._staging if self._staging is not None else target
        pixels = pixels[y0:y1, x0:x1]
        if self._color_code is None:
            if not np.may_share_memory(resized, pixels):  # else write() resized into place
                np.copyto(pixels, resized)
        else:
            cv2.cvtColor(resized, self._color_code, dst=pixels)
        if self.encoding.kind == "xor":
            np.bitwise_xor(pixels, 0x80, out=pixels)
        elif self.encoding.kind == "affine":
            enc = self.encoding
            cv2.addWeighted(pixels, enc.alpha, pixels, 0.0, enc.beta, dst=target[y0:y1, x0:x1],
                            dtype=_CV_DEPTH[enc.dtype])
        del tensor, target, pixels  # no view of the interpreter's memory may outlive this call

    def _fill_padding(self, target: np.ndarray) -> None:
        y0, x0, y1, x1 = self._fit
        if y0 > 0:
            target[:y0].fill(self._pad_value)
        if y1 < self.height:
            target[y1:].fill(self._pad_value)
        if x0 > 0:
            target[y0:y1, :x0].fill(self._pad_value)
        if x1 < self.width:
            target[y0:y1, x1:].fill(self._pad_value)
