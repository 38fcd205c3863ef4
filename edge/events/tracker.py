"""A ByteTrack-style multi-object tracker in numpy, with fixed-capacity, preallocated state.

Why this shape
--------------
The live loop runs for days on boards with a few hundred MB, so the tracker allocates every array
in its constructor and refills them frame after frame: steady state has zero net heap growth, and a
frame's transient allocations are a handful of small numpy views and index arrays (measured in
``tests/test_tracker.py``). Each track lives in one *slot* (row ``0 .. max_tracks-1`` of the state
arrays) from birth to end; the public :class:`Tracks` is a compacted, columnar copy of the live slots.

Association (ByteTrack, Zhang et al. 2022), per frame:

1. every live track predicts its box with constant velocity (centre and size, pixels per frame:
   :mod:`edge.events.motion`);
2. detections with ``score >= high_score`` are matched to confirmed tracks by IoU with the
   predicted boxes, then the high ones still free to tentative tracks;
3. detections with ``low_score <= score < high_score`` are matched to the confirmed tracks still
   free that were seen in the previous frame: an occluded or blurred object keeps its track
   through a weak detection, but a weak detection never starts a track or revives a lost one;
4. high-score detections left over start tentative tracks; a tentative track is confirmed (and only
   then gets a public id) after ``confirm_frames`` consecutive matched frames, and is dropped on its
   first miss; a confirmed track coasts on its prediction for up to ``max_missed`` frames unseen.

Matching is class-aware (a track keeps the class it was born with and only matches detections of
that class) and greedy, best IoU pair first, down to ``match_iou``: :mod:`edge.events.matching`
(and why greedy rather than Hungarian). The live tracks come out as
:class:`~edge.events.tracks.Tracks`.

Units: boxes are ``(x0, y0, x1, y1)`` in pixels of the frame the detector saw (as in
:class:`~edge.contract.detections.Detections`); velocities are pixels per source frame; ``hits``,
``age`` and ``missed`` count calls to :meth:`Tracker.update` (processed frames).
"""

from __future__ import annotations

import numpy as np

from edge.errors import EdgeError
from edge.events.matching import IouMatcher
from edge.events.motion import SlotMotion
from edge.events.tracks import Tracks


class Tracker:
    """ByteTrack-style tracker; ``update(detections) -> Tracks`` once per processed frame.

    ``max_tracks`` slots are allocated up front; a high-score detection that finds no free slot
    starts no track and is counted in :attr:`births_refused`. Scores are the detector's (0..1);
    ``match_iou`` is the least IoU between a detection and a predicted box to match them.
    Give the detector a ``score_threshold`` at or below ``low_score``, or the second (low-score)
    association never sees a detection.
    """

    def __init__(self, max_tracks: int = 64, high_score: float = 0.5, low_score: float = 0.1,
                 match_iou: float = 0.3, confirm_frames: int = 3, max_missed: int = 30, *,
                 labels: list[str] | None = None, max_detections: int | None = None) -> None:
        _check_int("max_tracks", max_tracks, 1)
        _check_int("confirm_frames", confirm_frames, 1)
        _check_int("max_missed", max_missed, 0)
        if max_detections is not None:
            _check_int("max_detections", max_detections, 1)
        for name, value in (("high_score", high_score), ("low_score", low_score), ("match_iou", match_iou)):
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise EdgeError(f"tracker {name} {value!r}: must be a number between 0 and 1")
        if low_score > high_score:
            raise EdgeError(f"tracker low_score {low_score} is above high_score {high_score}")
        if match_iou <= 0.0:
            raise EdgeError(f"tracker match_iou {match_iou}: must be above 0")
        self.max_tracks = int(max_tracks)
        self.high_score = float(high_score)
        self.low_score = float(low_score)
        self.match_iou = float(match_iou)
        self.confirm_frames = int(confirm_frames)
        self.max_missed = int(max_missed)
        self.births_refused = 0  # high-score detections that found every slot taken
        self._next_id = 1  # public ids count up from 1 and are never reused
        self._last_seq: int | None = None

        m = self.max_tracks
        # --- per-slot track state -------------------------------------------------------------
        self._live = np.zeros(m, bool)
        self._confirmed = np.zeros(m, bool)
        self._id = np.full(m, -1, np.int64)
        self._cls = np.zeros(m, np.int32)
        self._score = np.zeros(m, np.float32)
        self._hits = np.zeros(m, np.int32)
        self._age = np.zeros(m, np.int32)
        self._missed = np.zeros(m, np.int32)
        self._motion = SlotMotion(m)  # box state, velocity and prediction of every slot
        self._mscore = np.zeros(m, np.float32)
        self._match_det = np.full(m, -1, np.intp)  # detection row matched to each slot, -1 none
        self._tused = np.zeros(m, bool)  # matched this frame
        self._tsel = np.zeros(m, bool)  # tracks taking part in the current association stage
        self._tb1 = np.zeros(m, bool)
        self._tb2 = np.zeros(m, bool)
        self._cls_f = np.zeros(m, np.float32)  # class ids as floats, to compare in float tiles
        self._cls_f_row = self._cls_f[None, :]
        self._ibuf = np.zeros(m, np.int32)
        self._order = np.zeros(m, np.intp)
        # Views made once (a view is a new object: making them per frame allocates).
        self._tused_col = self._tused[:, None]
        self._live_col = self._live[:, None]
        self._tracks = Tracks(m, max_detections or 0, labels)
        self._det_capacity = 0
        if max_detections is not None:
            self._allocate_detection_buffers(int(max_detections))

    # ---- buffers ------------------------------------------------------------------------------

    def _allocate_detection_buffers(self, capacity: int) -> None:
        """Arrays sized by the detector's capacity (``Detections.capacity``): from the constructor
        with ``max_detections``, else on the first update, and again only if detections with a
        larger capacity show up. The :class:`~edge.events.matching.IouMatcher`'s ``[capacity,
        max_tracks]`` float32 matrices (6 of them plus a bool mask: 160 KB for 100 x 64, 16 KB for the
        10 rows of Google's SSD) are the bulk of the tracker's memory, so they follow the detector
        rather than a worst case."""
        d, m = capacity, self.max_tracks
        self._det_capacity = d
        self._dxyxy = np.zeros((d, 4), np.float32)
        self._dscore = np.zeros(d, np.float32)
        self._dcls = np.zeros(d, np.int32)
        self._darea = np.zeros(d, np.float32)
        self._dcxcywh = np.zeros((d, 4), np.float32)
        self._dhigh = np.zeros(d, bool)
        self._dlow = np.zeros(d, bool)
        self._dused = np.zeros(d, bool)
        self._dsel = np.zeros(d, bool)
        self._db1 = np.zeros(d, bool)
        self._dslot = np.full(d, -1, np.intp)  # slot of each detection's track, -1 none
        self._dneg = np.zeros(d, bool)
        self._dcols = tuple(self._dxyxy[:, c:c + 1] for c in range(4))  # [d, 1]: broadcast on rows
        self._dcols_flat = tuple(self._dxyxy[:, c] for c in range(4))
        self._dcxcywh_cols = tuple(self._dcxcywh[:, c] for c in range(4))
        self._darea_col = self._darea[:, None]
        self._matcher = IouMatcher(d, m)
        if self._tracks._detection_track_ids.size < d:
            self._tracks._detection_track_ids = np.full(d, -1, np.int64)

    # ---- public -------------------------------------------------------------------------------

    @property
    def tracks(self) -> Tracks:
        """The :class:`Tracks` the last :meth:`update` filled (the same object every frame)."""
        return self._tracks

    @property
    def next_id(self) -> int:
        """The id the next confirmed track will get; ``next_id - 1`` tracks have been confirmed."""
        return self._next_id

    def reset(self) -> None:
        """End every track (e.g. the source jumped: a reconnect, a new file). Ids keep counting up,
        so an id seen before the reset never means a different object after it."""
        self._live.fill(False)
        self._confirmed.fill(False)
        self._id.fill(-1)
        self._last_seq = None
        self._tracks.count = 0
        self._tracks.detection_count = 0

    def update(self, detections, seq: int | None = None) -> Tracks:
        """Associate this frame's ``detections`` with the tracks; returns the refilled :class:`Tracks`.

        ``detections`` is an :class:`~edge.contract.detections.Detections` (anything with
        ``boxes``, ``scores``, ``class_ids``, ``count`` and ``labels`` will do); it is read, not kept.
        ``seq`` is the source frame number (``Frame.seq``): when the loop skips frames, predictions
        step by the gap, so velocities stay in pixels per source frame. Without it, every update is
        one frame.
        """
        n = int(detections.count)
        capacity = int(getattr(detections, "capacity", n))
        if max(capacity, n) > self._det_capacity:
            self._allocate_detection_buffers(max(capacity, n))
        steps = 1
        if seq is not None:
            if self._last_seq is not None and seq > self._last_seq:
                steps = int(seq) - self._last_seq
            self._last_seq = int(seq)
        tracks = self._tracks
        tracks.frame += 1
        tracks.seq = int(seq) if seq is not None else tracks.frame
        labels = getattr(detections, "labels", None)
        if labels:
            tracks.labels = labels  # the detector's list (a reference, not a copy)

        self._load_detections(detections, n)
        self._predict(steps)
        self._associate()
        self._update_matched()
        self._end_lost()
        self._start_tracks()
        self._confirm()
        self._publish(n)
        return tracks

    # ---- per frame ----------------------------------------------------------------------------

    def _load_detections(self, detections, n: int) -> None:
        """Copy this frame's detections into the tracker's buffers; rows >= n are marked unusable."""
        self._dscore.fill(-1.0)
        if n:
            np.copyto(self._dxyxy[:n], detections.boxes)
            np.copyto(self._dscore[:n], detections.scores)
            np.copyto(self._dcls[:n], detections.class_ids, casting="unsafe")
        x0, y0, x1, y1 = self._dcols_flat
        cx, cy, w, h = self._dcxcywh_cols
        np.subtract(x1, x0, out=w)
        np.subtract(y1, y0, out=h)
        np.multiply(w, h, out=self._darea)
        np.add(x0, x1, out=cx)
        cx *= 0.5
        np.add(y0, y1, out=cy)
        cy *= 0.5
        np.greater_equal(self._dscore, self.high_score, out=self._dhigh)
        np.greater_equal(self._dscore, self.low_score, out=self._dlow)
        np.logical_xor(self._dlow, self._dhigh, out=self._dlow)  # low <= score < high
        self._dused.fill(False)
        self._dslot.fill(-1)

    def _predict(self, steps: int) -> None:
        """Every slot one update older, its box predicted ``steps`` source frames ahead."""
        self._age += 1  # free slots' counters are reset when a track is born there
        self._motion.predict(steps)

    def _associate(self) -> None:
        """IoU of every detection row with every predicted box (same class, live slots only, else 0),
        then the three ByteTrack stages over it."""
        motion = self._motion
        self._matcher.fill(self._dcols, self._darea_col, self._dcls, motion.pred_rows, motion.parea_row,
                           self._cls_f_row, self._live)

        self._match_det.fill(-1)
        self._tused.fill(False)
        live, confirmed, tsel, dsel = self._live, self._confirmed, self._tsel, self._dsel
        # 1a: high-score detections with confirmed tracks (seen last frame or coasting)
        np.logical_and(live, confirmed, out=tsel)
        np.copyto(dsel, self._dhigh)
        self._greedy()
        # 1b: high-score detections left with tentative tracks
        np.logical_not(confirmed, out=self._tb1)
        np.logical_and(live, self._tb1, out=tsel)
        np.logical_not(self._dused, out=self._db1)
        np.logical_and(self._dhigh, self._db1, out=dsel)
        self._greedy()
        # 2: low-score detections with confirmed tracks still unmatched that were seen last frame
        np.logical_and(live, confirmed, out=tsel)
        np.logical_not(self._tused, out=self._tb1)
        np.logical_and(tsel, self._tb1, out=tsel)
        np.equal(self._missed, 0, out=self._tb1)
        np.logical_and(tsel, self._tb1, out=tsel)
        np.logical_not(self._dused, out=self._db1)
        np.logical_and(self._dlow, self._db1, out=dsel)
        self._greedy()

    def _greedy(self) -> None:
        """Match the selected detections (``_dsel``) and tracks (``_tsel``): best IoU pair first."""
        self._matcher.match(self._dsel, self._tsel, self.match_iou, self._match_det, self._dslot, self._dused,
                            self._tused)

    def _update_matched(self) -> None:
        """Matched slots take their detection's box and score; the rest coast on their prediction."""
        matched, live = self._tused, self._live
        np.equal(self._hits, 1, out=self._tb1)  # matched once before: this match sets the velocity
        self._motion.correct(self._dcxcywh, self._match_det, matched, self._tused_col, self._live_col, self._tb1)
        np.take(self._dscore, self._match_det, out=self._mscore, mode="clip")
        np.copyto(self._score, self._mscore, where=matched)
        # (ufuncs with where= allocate a buffer; add then copy back where wanted does not)
        np.add(self._hits, 1, out=self._ibuf)
        np.copyto(self._hits, self._ibuf, where=matched)
        np.copyto(self._missed, 0, where=matched)
        np.logical_not(matched, out=self._tb1)
        np.logical_and(self._tb1, live, out=self._tb1)  # live and unmatched
        np.add(self._missed, 1, out=self._ibuf)
        np.copyto(self._missed, self._ibuf, where=self._tb1)

    def _end_lost(self) -> None:
        """Tentative tracks end on their first miss, confirmed ones after ``max_missed`` misses."""
        unmatched = self._tb1  # live and unmatched, from _update_matched
        np.greater(self._missed, self.max_missed, out=self._tb2)
        np.logical_not(self._confirmed, out=self._tsel)
        np.logical_or(self._tb2, self._tsel, out=self._tb2)
        np.logical_and(self._tb2, unmatched, out=self._tb2)
        if np.count_nonzero(self._tb2):  # (ndarray.any() allocates; count_nonzero does not)
            np.logical_not(self._tb2, out=self._tsel)
            np.logical_and(self._live, self._tsel, out=self._live)
            np.logical_and(self._confirmed, self._tsel, out=self._confirmed)

    def _start_tracks(self) -> None:
        """Every high-score detection still unmatched starts a tentative track in a free slot."""
        np.logical_not(self._dused, out=self._db1)
        np.logical_and(self._db1, self._dhigh, out=self._db1)
        if not np.count_nonzero(self._db1):
            return
        for i in np.flatnonzero(self._db1):  # allocates only when objects appear
            j = int(np.argmin(self._live))  # first free slot
            if self._live[j]:
                self.births_refused += 1
                continue
            self._live[j] = True
            self._confirmed[j] = False
            self._id[j] = -1
            self._cls[j] = self._dcls[i]
            self._cls_f[j] = self._dcls[i]
            self._score[j] = self._dscore[i]
            self._hits[j] = 1
            self._age[j] = 1
            self._missed[j] = 0
            self._motion.start(j, self._dcxcywh[i])
            self._dslot[i] = j

    def _confirm(self) -> None:
        """Tentative tracks with ``confirm_frames`` hits (consecutive: a miss ends them) get an id."""
        np.logical_not(self._confirmed, out=self._tb1)
        np.logical_and(self._tb1, self._live, out=self._tb1)
        np.greater_equal(self._hits, self.confirm_frames, out=self._tb2)
        np.logical_and(self._tb1, self._tb2, out=self._tb1)
        if not np.count_nonzero(self._tb1):
            return
        for j in np.flatnonzero(self._tb1):
            self._confirmed[j] = True
            self._id[j] = self._next_id
            self._next_id += 1

    def _publish(self, n: int) -> None:
        """Compact the live slots into :class:`Tracks` and map detection rows to public ids."""
        tracks = self._tracks
        out = self._motion.boxes_xyxy()
        # Live slots first (in slot order), then the free ones: ``slots`` is a permutation of all
        # slots, so per-track state elsewhere (zones) can gather and scatter all rows at once.
        live_slots = np.flatnonzero(self._live)  # <= max_tracks indices: the per-frame arrays
        k = live_slots.size
        np.logical_not(self._live, out=self._tb1)
        order = self._order
        order[:k] = live_slots
        order[k:] = np.flatnonzero(self._tb1)
        tracks.count = k
        np.take(self._id, order, out=tracks._ids, mode="clip")
        np.take(out, order, axis=0, out=tracks._boxes, mode="clip")
        np.take(self._cls, order, out=tracks._class_ids, mode="clip")
        np.take(self._score, order, out=tracks._scores, mode="clip")
        np.take(self._confirmed, order, out=tracks._confirmed, mode="clip")
        np.take(self._hits, order, out=tracks._hits, mode="clip")
        np.take(self._age, order, out=tracks._age, mode="clip")
        np.take(self._missed, order, out=tracks._missed, mode="clip")
        np.copyto(tracks._slots, order, casting="unsafe")
        ids = tracks._detection_track_ids
        tracks.detection_count = n
        if n:
            det_ids = ids[:n]
            slots = self._dslot[:n]
            np.take(self._id, slots, out=det_ids, mode="clip")  # tentative slots hold -1
            np.less(slots, 0, out=self._dneg[:n])
            np.copyto(det_ids, -1, where=self._dneg[:n])


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EdgeError(f"tracker {name} {value!r}: must be a whole number >= {minimum}")
