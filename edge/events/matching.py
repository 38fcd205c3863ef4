"""Greedy, class-aware IoU matching of detections to tracks, in preallocated tiles.

Matching is class-aware (a track keeps the class it was born with and only matches detections of
that class) and greedy: the highest IoU pair is taken first, then the next among the rest, down to
``match_iou``. Greedy rather than Hungarian because with at most 64 tracks and an IoU gate of 0.3
against motion-predicted boxes, candidate pairs rarely compete (two same-class objects must overlap
both predictions by >= 0.3 at once), and there greedy and optimal assignment almost always agree;
an optimal solver would need scipy (excluded on the board) or ``lap`` (a compiled dependency) or an
O(n^3) pure-Python loop, all to change the outcome in those rare ties. The greedy pass is at most
``min(detections, tracks)`` argmax calls over a preallocated ``[max_detections, max_tracks]`` matrix.

:class:`IouMatcher` holds the ``[max_detections, max_tracks]`` float32 matrices (the bulk of the
tracker's memory: 160 KB for 100 x 64, 16 KB for the 10 rows of Google's SSD) and fills them in
place: numpy (2.x) makes a full-size copy of any broadcast operand of a ufunc, so a ``[d, 1] op
[1, m]`` call would allocate ``d * m`` floats per operand; :meth:`IouMatcher._tile` first spreads
both sides into same-shape tiles with ``np.copyto``, which does not.
"""

from __future__ import annotations

import numpy as np


class IouMatcher:
    """IoU of every detection row with every track slot's predicted box, and greedy matching over it.

    ``detection_capacity`` rows (the detector's ``Detections.capacity``), ``max_tracks`` columns,
    allocated once; :class:`~edge.events.tracker.Tracker` makes a new one only when detections with
    a larger capacity show up. :meth:`fill` computes the matrix once per frame, :meth:`match` runs
    one association stage over a selection of its rows and columns.
    """

    def __init__(self, detection_capacity: int, max_tracks: int) -> None:
        d, m = int(detection_capacity), int(max_tracks)
        self.max_tracks = m
        self.iou = np.zeros((d, m), np.float32)
        self._inter = np.zeros((d, m), np.float32)
        self._tmp = np.zeros((d, m), np.float32)
        self._work = np.zeros((d, m), np.float32)
        self._mask = np.zeros((d, m), bool)
        self._tile_a = np.zeros((d, m), np.float32)  # detection column spread across tracks
        self._tile_b = np.zeros((d, m), np.float32)  # track row spread across detections
        self._dnot = np.zeros(d, bool)
        self._dnot_col = self._dnot[:, None]
        self._dcls_f = np.zeros(d, np.float32)  # detection class ids as floats, to compare in float tiles
        self._dcls_f_col = self._dcls_f[:, None]
        self._tnot = np.zeros(m, bool)
        self._tnot_row = self._tnot[None, :]

    def fill(self, det_cols: tuple, det_area_col: np.ndarray, det_cls: np.ndarray, pred_rows: tuple,
             pred_area_row: np.ndarray, track_cls_row: np.ndarray, live: np.ndarray) -> None:
        """``iou[i, j]``: IoU of detection row ``i`` with slot ``j``'s predicted box, 0 where their
        classes differ or the slot is free.

        ``det_cols``: the detections' ``x0, y0, x1, y1`` as ``[d, 1]`` columns, ``det_area_col`` their
        areas ``[d, 1]``, ``det_cls`` their class ids ``[d]``; ``pred_rows``: the predicted boxes'
        ``x0, y0, x1, y1`` as ``[1, m]`` rows, ``pred_area_row`` their areas, ``track_cls_row`` the
        tracks' classes as float32 ``[1, m]``; ``live`` ``[m]``: slots holding a track.
        """
        iou, inter, tmp, a, b = self.iou, self._inter, self._tmp, self._tile_a, self._tile_b
        dx0, dy0, dx1, dy1 = det_cols
        px0, py0, px1, py1 = pred_rows
        self._tile(dx1, px1)
        np.minimum(a, b, out=inter)
        self._tile(dx0, px0)
        np.maximum(a, b, out=tmp)
        np.subtract(inter, tmp, out=inter)
        np.maximum(inter, 0.0, out=inter)  # intersection width
        self._tile(dy1, py1)
        np.minimum(a, b, out=tmp)
        self._tile(dy0, py0)
        np.maximum(a, b, out=a)
        np.subtract(tmp, a, out=tmp)
        np.maximum(tmp, 0.0, out=tmp)  # intersection height
        np.multiply(inter, tmp, out=inter)
        self._tile(det_area_col, pred_area_row)
        np.add(a, b, out=tmp)
        np.subtract(tmp, inter, out=tmp)  # union area
        np.maximum(tmp, 1e-6, out=tmp)
        np.divide(inter, tmp, out=iou)
        # class-aware (a track keeps its class), live slots only: zero elsewhere
        np.copyto(self._dcls_f, det_cls)
        self._tile(self._dcls_f_col, track_cls_row)
        np.not_equal(a, b, out=self._mask)
        np.copyto(iou, 0.0, where=self._mask)
        np.logical_not(live, out=self._tnot)
        np.copyto(iou, 0.0, where=self._tnot_row)

    def match(self, dsel: np.ndarray, tsel: np.ndarray, threshold: float, match_det: np.ndarray,
              dslot: np.ndarray, dused: np.ndarray, tused: np.ndarray) -> None:
        """Match the selected detections (``dsel`` ``[d]``) and tracks (``tsel`` ``[m]``): best IoU pair
        first, down to ``threshold``. Each pair sets ``match_det[j] = i``, ``dslot[i] = j`` and marks
        ``dused[i]`` and ``tused[j]``."""
        n_det = int(np.count_nonzero(dsel))
        if n_det == 0:
            return
        n_trk = int(np.count_nonzero(tsel))
        if n_trk == 0:
            return
        work, m = self._work, self.max_tracks
        np.copyto(work, self.iou)
        np.logical_not(dsel, out=self._dnot)
        np.copyto(work, 0.0, where=self._dnot_col)
        np.logical_not(tsel, out=self._tnot)
        np.copyto(work, 0.0, where=self._tnot_row)
        for _ in range(min(n_det, n_trk)):
            flat = int(work.argmax())
            i, j = divmod(flat, m)
            if work.item(flat) < threshold:
                break
            match_det[j] = i
            dslot[i] = j
            dused[i] = True
            tused[j] = True
            work[i].fill(0.0)
            work[:, j].fill(0.0)

    def _tile(self, column: np.ndarray, row: np.ndarray) -> None:
        """``column`` ([d, 1]) into every column of ``_tile_a``, ``row`` ([1, m]) into every row of
        ``_tile_b``."""
        np.copyto(self._tile_a, column)
        np.copyto(self._tile_b, row)
