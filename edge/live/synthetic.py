"""Synthetic scenes: coloured shapes with exact boxes, for the training set and the live ``synthetic`` source.

Both draw with the same code, so the bundled demo model (trained on these shapes) detects what
``edge run --source synthetic`` shows. All drawing is in place, into a caller's frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.live.sources import SYNTHETIC_FPS, SYNTHETIC_SIZE, Source, SourceError, _Pacer

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated BGR colours that stay distinct from each other and from most photo backgrounds.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (40, 40, 230), (40, 200, 40), (230, 80, 30), (30, 220, 230), (220, 40, 220), (240, 240, 240),
)


def draw_shape(frame: np.ndarray, kind: str, cx: float, cy: float, size: float,
               color: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Draw a filled ``kind`` centred at (cx, cy) pixels, ``size`` pixels across.

    Returns the shape's tight box in pixels ``(x0, y0, x1, y1)``, clipped to the frame.
    """
    half = size / 2.0
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    if kind == "circle":
        cv2.circle(frame, (int(round(cx)), int(round(cy))), int(round(half)), color, -1, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(frame, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), color, -1)
    elif kind == "triangle":
        pts = np.array([[cx, y0], [x1, y1], [x0, y1]], dtype=np.int32)
        cv2.fillConvexPoly(frame, pts, color, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPE_CLASSES}")
    h, w = frame.shape[:2]
    return (max(0, int(round(x0))), max(0, int(round(y0))), min(w, int(round(x1))), min(h, int(round(y1))))


class SyntheticSource(Source):
    """1-4 coloured shapes moving over a fixed background, drawn into one preallocated frame.

    The look follows :func:`draw_shape` and the training data (shapes 8-45% of the shorter side,
    palette colours), so the bundled demo model detects them. Deterministic for a given ``seed``.
    ``truth`` holds the current ``(class_id, x0, y0, x1, y1)`` pixel boxes, for tests.
    """

    MIN_FRACTION, MAX_FRACTION = 0.08, 0.45
    RESPAWN_EVERY = 90  # frames between one shape being replaced, so scenes change
    #: A memory trace should start after a few respawns, whose shapes' drawing caches then exist.
    warmup_hint = 4 * RESPAWN_EVERY + 40

    def __init__(self, spec: str = "synthetic", width: int = SYNTHETIC_SIZE[0], height: int = SYNTHETIC_SIZE[1],
                 *, fps: float = SYNTHETIC_FPS, realtime: bool = False, seed: int = 0,
                 max_frames: int | None = None) -> None:
        super().__init__(spec)
        if not (16 <= width <= 8192 and 16 <= height <= 8192):
            raise SourceError(f"--source {spec}: synthetic size must be between 16 and 8192 pixels a side")
        self.width, self.height = width, height
        self.frame_shape = (height, width, 3)
        self.fps = fps
        self.live = realtime
        self._pacer = _Pacer(fps) if realtime else None
        self.max_frames = max_frames
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._background = self._make_background()
        self._frame = np.empty_like(self._background)
        self._shapes = [self._spawn() for _ in range(int(self._rng.integers(1, 5)))]
        self.truth: list[tuple[int, int, int, int, int]] = []

    def _make_background(self) -> np.ndarray:
        """A noisy horizontal gradient, built in bands of rows so that a large frame never has a
        float copy of its own size (8192 x 8192 would need 1.6 GB per float64 array)."""
        rng, h, w = self._rng, self.height, self.width
        c0, c1 = rng.integers(40, 200, 3), rng.integers(40, 200, 3)
        t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        row = c0 + (c1 - c0) * t  # [1, w, 3] float64
        image = np.empty((h, w, 3), np.uint8)
        band = max(1, (1 << 20) // max(1, w * 3))  # ~1 M values (8 MB of float64) per band
        for y0 in range(0, h, band):
            y1 = min(h, y0 + band)
            noisy = row + rng.normal(0, 6, (y1 - y0, w, 3))
            np.clip(noisy, 0, 255, out=noisy)
            image[y0:y1] = noisy
        return image

    def _spawn(self) -> list:
        rng, side = self._rng, min(self.width, self.height)
        size = float(rng.uniform(self.MIN_FRACTION, self.MAX_FRACTION) * side)
        cx = float(rng.uniform(size / 2, self.width - size / 2))
        cy = float(rng.uniform(size / 2, self.height - size / 2))
        speed = side * float(rng.uniform(0.003, 0.012))
        angle = float(rng.uniform(0, 2 * math.pi))
        kind = int(rng.integers(len(SHAPE_CLASSES)))
        color = tuple(int(c) for c in PALETTE[int(rng.integers(len(PALETTE)))])
        return [kind, cx, cy, size, speed * math.cos(angle), speed * math.sin(angle), color]

    def _read(self) -> np.ndarray | None:
        if self.max_frames is not None and self.frames_read >= self.max_frames:
            return None
        if self._pacer is not None:
            self._pacer.wait()
        n = self.frames_read
        if n and n % self.RESPAWN_EVERY == 0:
            self._shapes[n // self.RESPAWN_EVERY % len(self._shapes)] = self._spawn()
        frame = self._frame
        np.copyto(frame, self._background)
        self.truth.clear()
        for shape in self._shapes:
            kind, cx, cy, size, vx, vy, color = shape
            half = size / 2
            # Bounce off the edges so shapes stay whole, as in the training images.
            if not half <= cx + vx <= self.width - half:
                vx = shape[4] = -vx
            if not half <= cy + vy <= self.height - half:
                vy = shape[5] = -vy
            shape[1], shape[2] = cx + vx, cy + vy
            box = draw_shape(frame, SHAPE_CLASSES[kind], shape[1], shape[2], size, color)
            self.truth.append((kind, *box))
        return frame

    def describe(self) -> str:
        return f"synthetic {self.width}x{self.height}, {len(self._shapes)} shapes, seed {self.seed}"
