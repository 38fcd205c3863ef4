"""The hysteresis behind zone and line events: per (track slot, region), a confirmed side and a
candidate side with its streak.

:class:`_Sides` holds that state for one kind of region (zones or lines) of a
:class:`~edge.events.zones.Zones`, ``[max_tracks, regions]``, with its work arrays, and advances it
one observed frame at a time: an event fires where the candidate side has lasted ``min_frames``
observed frames (why: :mod:`edge.events.zones`).
"""

from __future__ import annotations

import numpy as np


class _Sides:
    """Hysteresis state of every (slot, region) pair of one kind (zones or lines), ``[m, n]``.

    ``side`` is the confirmed side (+1 inside / right of the line, -1 outside / left, 0 not yet
    known), ``cand`` the side the anchor has been seen on since and ``streak`` for how many
    observed frames; ``extra`` arrays (the lines' last point and crossing flag) are reset with them.
    """

    def __init__(self, m: int, n: int, min_frames: np.ndarray, extra: tuple[np.ndarray, ...] = ()) -> None:
        self.n = n
        self.side = np.zeros((m, n), np.int8)
        self.cand = np.zeros((m, n), np.int8)
        self.streak = np.zeros((m, n), np.int32)
        self.extra = extra
        self.min_frames = np.ascontiguousarray(np.broadcast_to(min_frames[None, :], (m, n)), np.int32)
        self.obs = np.zeros((m, n), np.int8)  # this frame: +1 / -1, 0 where not observed
        self.relevant = np.zeros((m, n), bool)  # confirmed, live, a class the region counts
        self.observing = np.zeros((m, n), bool)  # ... and seen this frame
        self.ax = np.zeros((m, n), np.float64)  # anchor, pixels
        self.ay = np.zeros((m, n), np.float64)
        self.fx = np.zeros((m, n), np.float64)  # anchor fractions of the box, tiled
        self.fy = np.zeros((m, n), np.float64)
        self.tile = np.zeros((m, n), np.float64)
        self.known, self.agree, self.differ, self.same, self.new, self.fire, self.no = (
            np.zeros((m, n), bool) for _ in range(7))
        self.ibuf = np.zeros((m, n), np.int32)

    def reset(self, stale_col: np.ndarray) -> None:
        for array in (self.side, self.cand, self.streak) + self.extra:
            np.copyto(array, 0, where=stale_col, casting="unsafe")

    def anchors(self, x0_col, y0_col, w_col, h_col) -> None:
        """``ax = x0 + fx * w``, ``ay = y0 + fy * h`` per (slot, region)."""
        np.copyto(self.tile, w_col)
        np.multiply(self.fx, self.tile, out=self.ax)
        np.copyto(self.tile, x0_col)
        np.add(self.ax, self.tile, out=self.ax)
        np.copyto(self.tile, h_col)
        np.multiply(self.fy, self.tile, out=self.ay)
        np.copyto(self.tile, y0_col)
        np.add(self.ay, self.tile, out=self.ay)

    def select(self, table: np.ndarray, cls_idx: np.ndarray, not_counted_col, not_seen_col) -> None:
        np.take(table, cls_idx, axis=0, out=self.relevant, mode="clip")
        np.copyto(self.relevant, False, where=not_counted_col)
        np.copyto(self.observing, self.relevant)
        np.copyto(self.observing, False, where=not_seen_col)

    def advance(self) -> int:
        """One observed frame (``obs``, already zeroed where not observing); fills ``fire`` where
        the candidate side has lasted ``min_frames``; returns how many fired."""
        obs, side, cand, streak = self.obs, self.side, self.cand, self.streak
        known, agree, differ, same, new = self.known, self.agree, self.differ, self.same, self.new
        np.not_equal(obs, 0, out=known)
        np.equal(obs, side, out=agree)
        np.logical_and(agree, known, out=agree)
        np.logical_not(agree, out=differ)
        np.logical_and(differ, known, out=differ)
        # Back on (or still on) the confirmed side: a candidate was a flicker; forget it.
        np.copyto(cand, 0, where=agree)
        np.copyto(streak, 0, where=agree)
        # On the other side: the same candidate again extends its streak, a new one starts at 1.
        np.equal(cand, obs, out=same)
        np.logical_and(same, differ, out=same)
        np.logical_not(same, out=new)
        np.logical_and(new, differ, out=new)
        np.add(streak, 1, out=self.ibuf)
        np.copyto(streak, self.ibuf, where=same)
        np.copyto(streak, 1, where=new)
        np.copyto(cand, obs, where=new)
        np.greater_equal(streak, self.min_frames, out=self.fire)
        np.logical_and(self.fire, differ, out=self.fire)
        return int(np.count_nonzero(self.fire))

    def settle(self) -> None:
        """Where ``fire``: the candidate becomes the confirmed side."""
        np.copyto(self.side, self.obs, where=self.fire)
        np.copyto(self.cand, 0, where=self.fire)
        np.copyto(self.streak, 0, where=self.fire)
