"""Constant-velocity motion of every track slot's box, predicted and corrected in place.

:class:`SlotMotion` holds each slot's state, its box centre and size ``(cx, cy, w, h)`` in pixels,
and that state's velocity in pixels per source frame. :meth:`SlotMotion.predict` steps every slot
ahead by the source frames since the last update, :meth:`SlotMotion.correct` moves the matched slots
onto their detections and their velocities toward the motion seen, and the rest coast on their
prediction. :class:`~edge.events.tracker.Tracker` decides which slots are live and which detection
each one matched; this module only moves boxes.

All arrays are allocated in the constructor and refilled in place, like the tracker's (no per-frame
allocation).
"""

from __future__ import annotations

import numpy as np


class SlotMotion:
    """Box state, velocity and prediction of ``max_tracks`` slots (free slots are computed too and
    ignored by the tracker: one fixed-size pass instead of indexing the live ones)."""

    #: Fraction of the prediction error added to a track's velocity on each match (an alpha-beta
    #: filter with alpha 1: the box jumps to the detection, the velocity follows smoothly, so one
    #: jittery box does not throw the prediction). The second match sets the velocity outright.
    VELOCITY_GAIN = 0.4
    MIN_SIZE = 1.0  # pixels: a predicted box never shrinks below this (size velocity can be negative)

    def __init__(self, max_tracks: int) -> None:
        m = int(max_tracks)
        # Everything float32, like the detector's boxes: mixing dtypes in a ufunc makes numpy
        # allocate cast buffers, and float32 resolves 0.001 px at 4K, far below detector jitter.
        self._since = np.ones(m, np.float32)  # source frames since the last match (velocity divisor)
        self._state = np.zeros((m, 4), np.float32)  # cx, cy, w, h (pixels)
        self._vel = np.zeros((m, 4), np.float32)  # d(cx, cy, w, h) per source frame
        self._pred = np.zeros((m, 4), np.float32)  # the state predicted for this frame
        self._pred_xyxy = np.zeros((m, 4), np.float32)
        self._parea = np.zeros(m, np.float32)
        self._meas = np.zeros((m, 4), np.float32)  # each slot's matched detection, cx cy w h
        self._resid = np.zeros((m, 4), np.float32)
        self._gain = np.zeros(m, np.float32)
        self._gain4 = np.zeros((m, 4), np.float32)
        self._out_xyxy = np.zeros((m, 4), np.float32)
        # Column and row views made once (a view is a new object: making them per frame allocates).
        self._gain_col = self._gain[:, None]
        self._pred_cols = tuple(self._pred_xyxy[:, c] for c in range(4))
        self._pred_state_cols = tuple(self._pred[:, c] for c in range(4))
        self._state_cols = tuple(self._state[:, c] for c in range(4))
        self._out_cols = tuple(self._out_xyxy[:, c] for c in range(4))
        #: The predicted boxes as ``[1, max_tracks]`` corner rows and their areas as a ``[1, max_tracks]``
        #: row, what :meth:`~edge.events.matching.IouMatcher.fill` takes.
        self.pred_rows = tuple(col[None, :] for col in self._pred_cols)
        self.parea_row = self._parea[None, :]

    def predict(self, steps: int) -> None:
        """Every slot's box ``steps`` source frames ahead, at its velocity, into the prediction."""
        self._since += steps
        if steps == 1:
            np.add(self._state, self._vel, out=self._pred)
        else:
            np.multiply(self._vel, steps, out=self._pred)
            np.add(self._pred, self._state, out=self._pred)
        cx, cy, w, h = self._pred_state_cols
        np.maximum(w, self.MIN_SIZE, out=w)
        np.maximum(h, self.MIN_SIZE, out=h)
        _cxcywh_to_xyxy(self._pred_state_cols, self._pred_cols)
        np.multiply(w, h, out=self._parea)

    def correct(self, det_cxcywh: np.ndarray, match_det: np.ndarray, matched: np.ndarray, matched_col: np.ndarray,
                live_col: np.ndarray, second_match: np.ndarray) -> None:
        """Matched slots take their detection's box (``det_cxcywh[match_det]``) and move their velocity
        toward the error of the prediction; other live slots keep the prediction as their state.

        ``matched`` is the per-slot mask of this frame's matches, ``matched_col`` and ``live_col`` its
        and the live mask's ``[max_tracks, 1]`` views; ``second_match`` marks slots matched once
        before (their velocity is set outright).
        """
        np.take(det_cxcywh, match_det, axis=0, out=self._meas, mode="clip")
        np.subtract(self._meas, self._pred, out=self._resid)
        # gain / frames since the last match: the error built up over a gap is spread over it
        self._gain.fill(self.VELOCITY_GAIN)
        np.copyto(self._gain, 1.0, where=second_match)
        np.divide(self._gain, self._since, out=self._gain)
        np.copyto(self._gain4, self._gain_col)
        np.multiply(self._resid, self._gain4, out=self._resid)
        np.add(self._vel, self._resid, out=self._resid)
        np.copyto(self._vel, self._resid, where=matched_col)
        np.copyto(self._state, self._pred, where=live_col)
        np.copyto(self._state, self._meas, where=matched_col)
        np.copyto(self._since, 0.0, where=matched)

    def start(self, slot: int, cxcywh: np.ndarray) -> None:
        """A track born in ``slot`` at the detection box ``cxcywh``, at rest."""
        self._state[slot] = cxcywh
        self._vel[slot] = 0.0
        self._since[slot] = 0.0

    def boxes_xyxy(self) -> np.ndarray:
        """Every slot's state as ``(x0, y0, x1, y1)`` corners, ``[max_tracks, 4]`` (refilled per call)."""
        _cxcywh_to_xyxy(self._state_cols, self._out_cols)
        return self._out_xyxy


def _cxcywh_to_xyxy(src: tuple, dst: tuple) -> None:
    """Centre/size columns to corner columns, into preallocated ``dst`` (no temporaries)."""
    cx, cy, w, h = src
    x0, y0, x1, y1 = dst
    np.multiply(w, -0.5, out=x0)
    np.add(x0, cx, out=x0)
    np.multiply(w, 0.5, out=x1)
    np.add(x1, cx, out=x1)
    np.multiply(h, -0.5, out=y0)
    np.add(y0, cy, out=y0)
    np.multiply(h, 0.5, out=y1)
    np.add(y1, cy, out=y1)
