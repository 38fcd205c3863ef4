"""Detections as columnar arrays of fixed capacity (the supervision ``Detections`` idea).

One instance is made per detector and refilled every frame, so steady state allocates nothing.
Accessors return views ``[:count]``: copy (:meth:`Detections.copy`) to keep them past the next frame.
"""

from __future__ import annotations

import numpy as np


class Detections:
    """Up to ``capacity`` boxes: ``xyxy`` in frame pixels (float32), scores, 0-based class ids."""

    def __init__(self, capacity: int, labels: list[str] | None = None) -> None:
        self.capacity = int(capacity)
        self.labels = list(labels or [])
        self._xyxy = np.zeros((self.capacity, 4), np.float32)
        self._scores = np.zeros(self.capacity, np.float32)
        self._class_ids = np.zeros(self.capacity, np.int32)
        self.count = 0

    @property
    def boxes(self) -> np.ndarray:
        """``[count, 4]`` float32 ``(x0, y0, x1, y1)`` in pixels of the frame given to ``detect``."""
        return self._xyxy[: self.count]

    @property
    def scores(self) -> np.ndarray:
        return self._scores[: self.count]

    @property
    def class_ids(self) -> np.ndarray:
        return self._class_ids[: self.count]

    def __len__(self) -> int:
        return self.count

    def label(self, i: int) -> str:
        class_id = int(self._class_ids[i])
        if 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return str(class_id)

    def copy(self) -> "Detections":
        other = Detections(self.capacity, self.labels)
        other.count = self.count
        np.copyto(other._xyxy, self._xyxy)
        np.copyto(other._scores, self._scores)
        np.copyto(other._class_ids, self._class_ids)
        return other

    def to_list(self, decimals: int = 1) -> list[dict]:
        """Plain dicts for JSON: label, class id, score, box ``[x0, y0, x1, y1]`` in pixels."""
        return [
            {
                "label": self.label(i),
                "class_id": int(self._class_ids[i]),
                "score": round(float(self._scores[i]), 4),
                "box": [round(float(v), decimals) for v in self._xyxy[i]],
            }
            for i in range(self.count)
        ]

    def __repr__(self) -> str:
        items = ", ".join(f"{self.label(i)} {self._scores[i]:.2f}" for i in range(min(self.count, 5)))
        more = ", ..." if self.count > 5 else ""
        return f"Detections({self.count}: {items}{more})"
