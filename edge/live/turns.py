"""Several detectors of one model taking one source's frames in turn, results handed on in frame order.

Why: one interpreter given every core is not the fastest way through a stream of frames. Its
threads meet at the end of every operator, so when the capture thread's decode preempts one of
them the others wait; K interpreters with fewer threads each, on threads of their own, each taking
the next frame when it is free, keep the cores on useful work (fixture SSD on 2 x86 cores: two
1-thread interpreters run ~1.09x the invokes a second of one 2-thread interpreter, and end to end,
capture included, ``benchmarks/bench_fixture.py --detectors 2`` measures it). The cost is memory:
a further interpreter and its tensors per detector (14.8 MB for the fixture SSD,
``benchmarks/results/detectors_throughput.md``) and two ring slots per detector.

Order: claims are serialized, so each claimed frame's ticket follows the capture's sequence; the
results of ticket n are handed on (events, annotation, sinks: ``hand_on``) only after those of
n - 1, by whichever worker finishes the frame that is due, under one lock, so the hand-on sees one
frame at a time, in order, as with one detector. A worker that finishes out of turn parks its
results (copied into a spare :class:`~edge.contract.detections.Detections` of its own, made once)
and goes on with the next frame; with its spare still taken it waits. So a worker holds at most
two frames of the capture ring, which :func:`ring_slots` sizes for. Per frame nothing is allocated
that outlives it.

``limit`` caps the frames handed on with detections (``--max-frames``; ``edge bench``'s chunks):
workers stop claiming when the frames handed on plus those in flight reach it, and wait for it to
be raised or for :meth:`FrameTurns.stop`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from edge.detector.stages import StageTimes
from edge.detector.step import Frame, run_frame
from edge.errors import BadFrameError, EdgeError
from edge.live.capture import RING_SLOTS

#: What :func:`~edge.detector.step.run_frame` records, in this order, into the ``seconds`` handed on.
FRAME_STAGES = ("capture_wait", "preprocess", "invoke", "postprocess")
CLAIM_WAIT = 0.25  # seconds a claim waits for a frame before checking for a stop again
JOIN_TIMEOUT = 30.0  # seconds for the workers to finish their frames at the end

#: ``hand_on(frame, detections, bad, seconds)``: ``detections`` is ``None`` for a frame the source
#: skipped (``frame.error`` set) or the detector refused (``bad``); ``seconds`` as :data:`FRAME_STAGES`.
HandOn = Callable[[Frame, object, "BadFrameError | None", np.ndarray], None]


def require_one_model(detectors: Sequence) -> None:
    """Raise :class:`EdgeError` unless every detector takes the same input (copies of one model)."""
    sizes = {tuple(d.input_size) for d in detectors}
    if len(sizes) > 1:
        raise EdgeError(f"the detectors take different inputs ({', '.join(map(str, sorted(sizes)))}): "
                        "give detectors of one model")


def ring_slots(detectors: int) -> int:
    """Capture ring slots for ``detectors`` workers: each holds its frame and at most one parked."""
    return RING_SLOTS + 2 * (max(1, detectors) - 1)


class _Parked:
    """A worker's finished frame waiting for its turn to be handed on."""

    __slots__ = ("ticket", "frame", "detections", "has_detections", "bad", "seconds")

    def __init__(self, detections) -> None:
        self.ticket = -1  # -1: empty
        self.frame: Frame | None = None
        self.detections = detections
        self.has_detections = False
        self.bad: BadFrameError | None = None
        self.seconds = np.zeros(len(FRAME_STAGES), np.float64)


class FrameTurns:
    """``detectors`` (two or more, one model) on threads of their own over ``capture``'s frames.

    :meth:`start` starts the workers; :meth:`stop` lets each finish and hand on its frame, then
    joins them. :attr:`handed` counts frames handed on with detections; :attr:`ended` is set when
    the source ended (every claimed frame is handed on before the workers return); :attr:`error`
    holds an exception a worker or ``hand_on`` raised (the turns then stop).
    """

    def __init__(self, detectors: Sequence, capture, hand_on: HandOn, *, limit: int | None = None,
                 name: str = "edge-detector") -> None:
        if len(detectors) < 2:
            raise EdgeError("FrameTurns takes two or more detectors (one runs on the loop's own thread)")
        require_one_model(detectors)
        self.detectors = list(detectors)
        self.capture = capture
        self.hand_on = hand_on
        self.limit = limit
        self.name = name
        self.handed = 0  # frames handed on with detections
        self.handed_by = [0] * len(self.detectors)  # of those, how many each detector ran
        self.ended = False
        self.error: BaseException | None = None
        self._tickets = 0  # claimed so far (under _claim_lock)
        self._next = 0  # the ticket due to be handed on (under _order)
        self._stopping = False
        self._held = False
        self._claim_lock = threading.Lock()
        self._order = threading.Condition(threading.Lock())
        self._parked = [_Parked(d.detections.copy()) for d in self.detectors]
        self._times = [StageTimes(FRAME_STAGES + ("sinks",), capacity=2) for _ in self.detectors]
        self._seconds = [np.zeros(len(FRAME_STAGES), np.float64) for _ in self.detectors]
        self._workers: list[threading.Thread] = []

    # ---- control ------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Frames claimed and not yet handed on."""
        return self._tickets - self._next

    @property
    def running(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def start(self) -> "FrameTurns":
        self._workers = [threading.Thread(target=self._work, args=(i,), name=f"{self.name}-{i}", daemon=True)
                         for i in range(len(self.detectors))]
        for worker in self._workers:
            worker.start()
        return self

    def set_limit(self, limit: int | None) -> None:
        """Frames to hand on with detections in all (``None``: no cap); waiting workers go on."""
        with self._order:
            self.limit = limit
            self._order.notify_all()

    def hold(self) -> None:
        """Claim no more frames (those in flight are handed on); callable from ``hand_on``."""
        self._held = True

    def wait(self, timeout: float) -> None:
        """Sleep until a frame is handed on, the turns end or stop, or ``timeout`` seconds."""
        with self._order:
            self._order.wait(timeout)

    def settled(self) -> bool:
        """Nothing in flight and no worker will claim more: the limit reached, the source ended, stopped."""
        with self._order:
            if self.in_flight:
                return False
            return self._stopping or self.ended or self.error is not None or self._at_limit()

    def stop(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Claim no more; each worker finishes its frame, which is handed on in order; join them."""
        with self._order:
            self._stopping = True
            self._order.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._order:  # a worker that died mid-frame left its successors parked: let their frames go
            for parked in self._parked:
                if parked.ticket >= 0:
                    self._release(parked.frame)
                    parked.ticket, parked.frame = -1, None

    # ---- workers ------------------------------------------------------------------------------

    def _at_limit(self) -> bool:
        return self._held or (self.limit is not None and self.handed + self.in_flight >= self.limit)

    def _work(self, index: int) -> None:
        detector, times, seconds = self.detectors[index], self._times[index], self._seconds[index]
        try:
            while True:
                claimed = self._claim()
                if claimed is None:
                    return
                frame, ticket, waited_since = claimed
                bad = None
                detections = None
                try:
                    if frame.error is None:
                        detections = run_frame(detector, frame, times, waited_since)
                        for i, stage in enumerate(FRAME_STAGES):
                            seconds[i] = times.last(stage)
                    else:
                        seconds.fill(0.0)
                        seconds[0] = time.perf_counter() - waited_since
                except BadFrameError as exc:
                    bad, detections = exc, None
                    seconds.fill(0.0)
                    seconds[0] = times.last("capture_wait")
                self._complete(index, ticket, frame, detections, bad, seconds)
        except BaseException as exc:  # a bug in a detector or a sink: end the turns and let the loop say so
            with self._order:
                if self.error is None:
                    self.error = exc
                self._stopping = True
                self._order.notify_all()

    def _claim(self) -> tuple[Frame, int, float] | None:
        """The next frame, its ticket and when the wait for it began (not counting a wait at the
        limit), or ``None`` when this worker should return."""
        while True:
            with self._order:
                while not self._stopping and not self.ended and self._at_limit():
                    self._order.wait(CLAIM_WAIT)
                if self._stopping or self.ended:
                    return None
            waited_since = time.perf_counter()
            with self._claim_lock:
                if self._stopping or self.ended or self._at_limit():
                    continue  # another worker took the last frame the limit allowed
                frame = self.capture.get(CLAIM_WAIT)
                if frame is None:
                    if self.capture.ended:
                        with self._order:
                            self.ended = True
                            self._order.notify_all()
                    continue
                ticket = self._tickets
                self._tickets += 1
                return frame, ticket, waited_since

    def _complete(self, index: int, ticket: int, frame: Frame, detections, bad, seconds: np.ndarray) -> None:
        with self._order:
            parked = self._parked[index]
            while parked.ticket >= 0 and self.error is None:  # this worker's spare is still waiting its turn
                self._order.wait(CLAIM_WAIT)
            if ticket != self._next:
                parked.frame, parked.bad = frame, bad
                parked.has_detections = detections is not None
                if detections is not None:
                    parked.detections.copy_from(detections)
                np.copyto(parked.seconds, seconds)
                parked.ticket = ticket
                return
            self._hand(index, frame, detections, bad, seconds)
            progressed = True
            while progressed:
                progressed = False
                for owner, other in enumerate(self._parked):
                    if other.ticket == self._next:
                        frame, other.frame, other.ticket = other.frame, None, -1
                        self._hand(owner, frame, other.detections if other.has_detections else None, other.bad,
                                   other.seconds)
                        progressed = True
            self._order.notify_all()

    def _hand(self, index: int, frame: Frame, detections, bad, seconds: np.ndarray) -> None:
        """Called with ``_order`` held: hand ticket ``_next`` on and give its frame back to the ring."""
        self._next += 1
        if detections is not None:
            self.handed += 1
            self.handed_by[index] += 1
        try:
            self.hand_on(frame, detections, bad, seconds)
        finally:
            self._release(frame)

    def _release(self, frame: Frame | None) -> None:
        if frame is not None:
            self.capture.release(frame)
