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
        self._track_ids = np.full(self.capacity, -1, np.int64)
        self.tracked = False  # set by a tracker: track_ids hold ids (-1: no confirmed track)
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

    @property
    def track_ids(self) -> np.ndarray:
        """``[count]`` int64 track ids when a tracker ran (-1 for rows without a confirmed track)."""
        return self._track_ids[: self.count]

    def set_track_ids(self, ids: np.ndarray) -> None:
        """Record each row's track id (``ids`` has ``count`` entries)."""
        np.copyto(self._track_ids[: self.count], ids)
        self.tracked = True

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the rows where ``mask`` (``[count]`` bool) is true, in order, in place."""
        rows = np.flatnonzero(mask)
        n = rows.size
        if n == self.count:
            return
        for column in (self._xyxy, self._scores, self._class_ids, self._track_ids):
            column[:n] = column[rows]
        self.count = n

    def __len__(self) -> int:
        return self.count

    def label(self, i: int) -> str:
        class_id = int(self._class_ids[i])
        if 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return str(class_id)

    def copy(self) -> "Detections":
        other = Detections(self.capacity, self.labels)
        other.copy_from(self)
        return other

    def copy_from(self, other: "Detections") -> None:
        """Take ``other``'s rows into this object's own arrays (same capacity; allocates nothing)."""
        n = other.count
        np.copyto(self._xyxy[:n], other._xyxy[:n])
        np.copyto(self._scores[:n], other._scores[:n])
        np.copyto(self._class_ids[:n], other._class_ids[:n])
        np.copyto(self._track_ids[:n], other._track_ids[:n])
        self.count, self.tracked = n, other.tracked

    def to_list(self, decimals: int = 1) -> list[dict]:
        """Plain dicts for JSON: label, class id, score, box ``[x0, y0, x1, y1]`` in pixels, and
        ``track`` (an id, or None for a row without a confirmed track) when a tracker ran."""
        rows = []
        for i in range(self.count):
            row = {"label": self.label(i), "class_id": int(self._class_ids[i]),
                   "score": round(float(self._scores[i]), 4),
                   "box": [round(float(v), decimals) for v in self._xyxy[i]]}
            if self.tracked:
                track = int(self._track_ids[i])
                row["track"] = track if track >= 0 else None
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        items = ", ".join(f"{self.label(i)} {self._scores[i]:.2f}" for i in range(min(self.count, 5)))
        more = ", ..." if self.count > 5 else ""
        return f"Detections({self.count}: {items}{more})"
