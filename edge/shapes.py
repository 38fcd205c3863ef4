"""Coloured shapes with exact boxes: the synthetic training set and the live ``synthetic`` source.

Both draw with the same code, so the bundled demo model (trained on these shapes) detects what
``edge run --source synthetic`` shows. All drawing is in place, into a caller's frame.
"""

from __future__ import annotations

import cv2
import numpy as np

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
