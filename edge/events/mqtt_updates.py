"""When an open zone event gets an ``update`` message, and the fixed-size state it keeps for that.

The rule
--------
An event is open from its zone ``enter`` until its ``leave`` / ``lost`` / ``stopped``. On every
frame its track is *seen* (matched to a detection, not coasting on a prediction) its current box,
score and anchor point are noted in place (:meth:`OpenEvent.observe`); an ``update`` is due when
the state differs *materially* from the state last published for the event (its ``new`` or its
last ``update``), and at least ``interval`` seconds (frame time) have passed since that message:

* **it moved**: the IoU of the box now with the box last published is below ``MOVE_IOU`` (0.6).
  For a box of the same size that is a shift of a quarter of its width or height; it also fires on
  a change of size (40% of the area: the object came nearer or went away). Relative to the box, so
  a big near object and a small far one move "far enough" alike; box jitter (a few pixels) never
  gets there, so an object standing still sends nothing, however long it stays;
* **it is seen better**: ``top_score`` rose by ``SCORE_STEP`` (0.05) or more over the
  ``top_score`` last published. ``top_score`` is the best *median of the last 3 scores* seen while
  the event is open (one frame's spike does not count, two frames of three do); 0.05 is above the
  frame-to-frame jitter of a detector's score and below any step a consumer would act on.
  ``top_score`` only grows and stays <= 1, so this fires at most 20 times in any event's life.

A change that comes sooner than ``interval`` after the last message waits: it goes out on the
first frame after the interval on which it still holds, compared then with what was last
published. So each event sends at most one update a second by default however busy the scene.
Frame time is ``Frame.stamp``; a clock set back by more than ``interval`` does not hold updates
back until the old time comes round again.

Why this shape (and what Frigate does)
--------------------------------------
Frigate (``frigate/camera/state.py``, ``frigate/track/tracked_object.py``) publishes ``update``
on a *significant change* at once (the set of zones changed; the object moved to a new position,
its tracker's IoU with the remembered position below 0.6; stationary <-> active; new attributes;
or a minute without an update) and on a better snapshot (score or size) at most every 5 s; its
``top_score`` is the best median of the last 10 scores, and ``before`` is the state last
published. Here: the same IoU 0.6 for "moved", the same ``before``, a median for ``top_score``
(3 scores: this tracker confirms after 3 frames, so the window is no longer than what confirmed
it). Unlike Frigate, every update is rate-limited, movement included (a crowd walking through a
zone would otherwise send one update per person every few frames); there is no minute heartbeat
(an event open without updates is unchanged: its ``end`` always comes, or ``P/availability``
says ``offline``); and a zone change is not an update: each zone has its own event.

Cost: per frame, one pass over the open events (objects inside zones), a few float operations
each, no JSON and nothing kept past the frame; the state of an open event is these slots and the
last published state dict (replaced, not grown, by each update).
"""

from __future__ import annotations

import numpy as np

UPDATE_INTERVAL = 1.0  # seconds (frame time) at least between two messages of one event
MOVE_IOU = 0.6  # box now vs box last published: below this the object has moved
SCORE_STEP = 0.05  # top_score rise over the one last published that is worth an update
_EPS = 1e-6  # float32 scores: 0.60 - 0.55 is 0.04999998


def find_row(ids: np.ndarray, track: int, hint: int = -1) -> int:
    """The row of ``track`` in a :class:`~edge.events.tracks.Tracks`' ``ids``, -1 when gone; ``hint``
    is the row it had last frame (rows shift only when other tracks end or start)."""
    if 0 <= hint < ids.size and ids[hint] == track:
        return hint
    rows = np.flatnonzero(ids == track)
    return int(rows[0]) if rows.size else -1


def _median3(a: float, b: float, c: float) -> float:
    return max(min(a, b), min(max(a, b), c))


def _iou(x0: float, y0: float, x1: float, y1: float, box) -> float:
    """IoU of ``(x0, y0, x1, y1)`` with ``box`` (a list of 4, as published)."""
    iw = min(x1, box[2]) - max(x0, box[0])
    ih = min(y1, box[3]) - max(y0, box[1])
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter / union if union > 0.0 else 0.0


class OpenEvent:
    """One open zone event: ``state`` is what was last published for it (``new`` or ``update``),
    the rest what was last seen of its track (fixed: these slots, refilled in place)."""

    __slots__ = ("state", "track", "fx", "fy", "row", "known", "x0", "y0", "x1", "y1", "score", "s1", "s2",
                 "top", "seq", "stamp", "next_at")

    def __init__(self, state: dict, anchor: tuple[float, float], seen, seq: int, stamp, interval: float) -> None:
        self.state, self.track = state, state["track"]
        self.fx, self.fy = anchor
        self.row, self.known = -1, seen is not None
        self.x0 = self.y0 = self.x1 = self.y1 = 0.0
        self.score = self.s1 = self.s2 = self.top = 0.0
        if seen is not None:
            self.row, (self.x0, self.y0, self.x1, self.y1, self.score) = seen[0], seen[1:]
            self.s1 = self.s2 = self.top = self.score
        self.seq, self.stamp = seq, stamp
        self.next_at = (stamp or 0.0) + interval

    def observe(self, ids, boxes, scores, missed, seq: int, stamp: float) -> bool:
        """Note this frame's box and score of the track; False when it was not seen this frame."""
        row = self.row = find_row(ids, self.track, self.row)
        if row < 0 or missed[row]:
            return False  # gone (the lost check ends it) or coasting: a prediction is no news
        self.x0, self.y0, self.x1, self.y1 = boxes[row].tolist()
        score = float(scores[row])
        median = _median3(self.s1, self.s2, score)
        self.s1, self.s2, self.score = self.s2, score, score
        if median > self.top:
            self.top = median
        self.seq, self.stamp, self.known = seq, stamp, True
        return True

    def due(self, stamp: float, interval: float) -> bool:
        """An update is allowed now and the state differs materially from the one last published."""
        if stamp < self.next_at and self.next_at - stamp <= interval:  # (more: the clock was set back)
            return False
        sent = self.state
        if sent.get("top_score") is None or sent.get("box") is None:
            return True
        if self.top >= sent["top_score"] + SCORE_STEP - _EPS:
            return True
        return _iou(self.x0, self.y0, self.x1, self.y1, sent["box"]) < MOVE_IOU

    def current(self) -> dict:
        """The state now: the one last published with the last seen box, score, point, frame and time."""
        if not self.known:
            return dict(self.state)
        x0, y0, x1, y1 = self.x0, self.y0, self.x1, self.y1
        return dict(self.state, frame=self.seq, time=self.stamp,
                    box=[round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)], score=round(self.score, 4),
                    top_score=round(self.top, 4),
                    point=[round(x0 + self.fx * (x1 - x0), 1), round(y0 + self.fy * (y1 - y0), 1)])


def seen_now(tracks, track: int):
    """``(row, x0, y0, x1, y1, score)`` of ``track`` in ``tracks`` (this frame's), or None."""
    if tracks is None:
        return None
    row = find_row(tracks.ids, track)
    if row < 0:
        return None
    x0, y0, x1, y1 = tracks.boxes[row].tolist()
    return row, x0, y0, x1, y1, float(tracks.scores[row])


def seen_fields(seen) -> dict:
    """The box and score fields of a ``new`` state from :func:`seen_now` (None: not known)."""
    if seen is None:
        return {"box": None, "score": None, "top_score": None}
    _, x0, y0, x1, y1, score = seen
    return {"box": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)], "score": round(score, 4),
            "top_score": round(score, 4)}
