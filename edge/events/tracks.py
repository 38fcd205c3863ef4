"""The live tracks after one :meth:`~edge.events.tracker.Tracker.update`: :class:`Tracks`, columnar.

One instance per tracker, refilled in place every update (the tracker allocates it with its own
state: no per-frame allocation). Units as in :mod:`edge.events.tracker`: boxes ``(x0, y0, x1, y1)``
in pixels of the frame the detector saw; ``hits``, ``age`` and ``missed`` count updates.
"""

from __future__ import annotations

import numpy as np


class Tracks:
    """The live tracks after one :meth:`~edge.events.tracker.Tracker.update`, columnar, ``count`` rows.

    One instance per tracker, refilled every update: the properties are views valid until the
    next update (copy what you keep). Rows are in slot order, not id order.

    ============================  =============================================================
    ``ids``                       int64, the public track id; -1 while tentative (unconfirmed)
    ``boxes``                     float32 ``[count, 4]`` ``(x0, y0, x1, y1)`` pixels: the matched
                                  detection's box when seen this frame, else the prediction
    ``class_ids``                 int32, the class the track was born with (never changes)
    ``scores``                    float32, score of the last detection matched to it
    ``confirmed``                 bool, confirmed after ``confirm_frames`` consecutive hits
    ``hits``                      int32, updates in which it was matched (birth frame included)
    ``age``                       int32, updates since birth (1 on the birth frame)
    ``missed``                    int32, consecutive updates without a match (0: seen now)
    ``slots``                     intp, the tracker slot of each row: stable for a track's life
                                  (reused after it ends), to index per-track state arrays
    ``detection_track_ids``       int64 ``[detection_count]``: per row of the Detections given to
                                  ``update``, the public id of its track, -1 when the detection
                                  matched a tentative track or none (below ``low_score``, refused)
    ============================  =============================================================

    ``seq`` is the frame number given to ``update`` (else the update count), ``frame`` the update
    count, ``labels`` the detector's label list (``label(i)`` names row ``i``'s class).

    The underlying arrays (``_ids`` ... ``_slots``) have ``capacity`` rows: rows past ``count``
    describe free slots and mean nothing, but ``_slots`` is always a permutation of every slot,
    which lets :class:`~edge.events.zones.Zones` work on whole arrays without slicing.
    """

    def __init__(self, capacity: int, detection_capacity: int, labels: list[str] | None = None) -> None:
        self.capacity = int(capacity)
        self.labels: list[str] = list(labels or [])
        self.count = 0
        self.detection_count = 0
        self.frame = 0
        self.seq = 0
        m = self.capacity
        self._ids = np.full(m, -1, np.int64)
        self._boxes = np.zeros((m, 4), np.float32)
        self._class_ids = np.zeros(m, np.int32)
        self._scores = np.zeros(m, np.float32)
        self._confirmed = np.zeros(m, bool)
        self._hits = np.zeros(m, np.int32)
        self._age = np.zeros(m, np.int32)
        self._missed = np.zeros(m, np.int32)
        self._slots = np.zeros(m, np.intp)
        self._detection_track_ids = np.full(int(detection_capacity), -1, np.int64)

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.count]

    @property
    def boxes(self) -> np.ndarray:
        return self._boxes[: self.count]

    @property
    def class_ids(self) -> np.ndarray:
        return self._class_ids[: self.count]

    @property
    def scores(self) -> np.ndarray:
        return self._scores[: self.count]

    @property
    def confirmed(self) -> np.ndarray:
        return self._confirmed[: self.count]

    @property
    def hits(self) -> np.ndarray:
        return self._hits[: self.count]

    @property
    def age(self) -> np.ndarray:
        return self._age[: self.count]

    @property
    def missed(self) -> np.ndarray:
        return self._missed[: self.count]

    @property
    def slots(self) -> np.ndarray:
        return self._slots[: self.count]

    @property
    def detection_track_ids(self) -> np.ndarray:
        return self._detection_track_ids[: self.detection_count]

    def __len__(self) -> int:
        return self.count

    def label(self, i: int) -> str:
        class_id = int(self._class_ids[i])
        if 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return str(class_id)

    def track_id(self, detection_row: int) -> int | None:
        """The public track id of detection row ``detection_row``, or ``None`` (for JSON ``"track"``)."""
        value = int(self._detection_track_ids[detection_row])
        return value if value >= 0 else None

    def to_list(self, decimals: int = 1, confirmed_only: bool = True) -> list[dict]:
        """Plain dicts for JSON (allocates; call it when writing, not every frame for nothing)."""
        rows = []
        for i in range(self.count):
            if confirmed_only and not self._confirmed[i]:
                continue
            rows.append({
                "id": int(self._ids[i]), "label": self.label(i), "class_id": int(self._class_ids[i]),
                "score": round(float(self._scores[i]), 4),
                "box": [round(float(v), decimals) for v in self._boxes[i]],
                "hits": int(self._hits[i]), "age": int(self._age[i]), "missed": int(self._missed[i]),
            })
        return rows

    def __repr__(self) -> str:
        confirmed = int(np.count_nonzero(self.confirmed))
        return f"Tracks({self.count} live, {confirmed} confirmed, frame {self.frame})"
