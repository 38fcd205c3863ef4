"""Drawing detections onto a preallocated copy of the frame (for the video and preview sinks).

The source frame is never drawn on: it belongs to the capture ring. The copy is made into one
buffer that is reallocated only when the frame size changes.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.contract.detections import Detections

# BGR, distinct on most scenes; class id picks one.
COLORS: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class Annotator:
    """``draw(frame, detections)`` -> the annotated copy (BGR uint8, same size as ``frame``)."""

    def __init__(self, thickness: int | None = None) -> None:
        self.thickness = thickness
        self._canvas: np.ndarray | None = None
        self._scale = 0.5
        self._line = 2

    def presize(self, frame_shape: tuple) -> None:
        """Allocate the canvas for frames of ``frame_shape`` before the first one."""
        self._prepare(np.zeros(frame_shape[:2], np.uint8))

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        canvas = self._canvas
        if canvas is None or canvas.shape[:2] != (h, w):
            canvas = self._canvas = np.empty((h, w, 3), np.uint8)
            side = min(h, w)
            self._scale = max(0.35, side / 900.0)
            self._line = self.thickness or max(1, round(side / 300))
        if frame.ndim == 2 or frame.shape[2] == 1:
            cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR, dst=canvas)
        elif frame.shape[2] == 4:
            cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR, dst=canvas)
        else:
            np.copyto(canvas, frame)
        return canvas

    def draw(self, frame: np.ndarray, detections: Detections, status: str | None = None) -> np.ndarray:
        """Boxes with ``label score`` tags, and an optional status line (top left)."""
        canvas = self._prepare(frame)
        line, scale = self._line, self._scale
        boxes, scores, ids = detections.boxes, detections.scores, detections.class_ids
        for i in range(detections.count):
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            color = COLORS[int(ids[i]) % len(COLORS)]
            cv2.rectangle(canvas, (x0, y0), (x1, y1), color, line)
            text = f"{detections.label(i)} {scores[i]:.2f}"
            if detections.tracked and detections._track_ids[i] >= 0:
                text = f"#{detections._track_ids[i]} {text}"
            (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
            ty = y0 - 2 if y0 - th - base - 2 >= 0 else y0 + th + base + 2
            cv2.rectangle(canvas, (x0, ty - th - base), (x0 + tw + 2, ty + 1), color, -1)
            cv2.putText(canvas, text, (x0 + 1, ty - base + 1), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
        if status:
            (tw, th), base = cv2.getTextSize(status, _FONT, scale, 1)
            cv2.rectangle(canvas, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
            cv2.putText(canvas, status, (4, th + 4), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return canvas
