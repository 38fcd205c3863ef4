"""The capture thread: reads a :class:`~edge.live.sources.Source` into a small ring of preallocated frames.

The detector always takes the newest frame. For live sources (cameras, streams, realtime files)
a frame that is overwritten before the detector took it is *dropped* and counted; nothing queues.
For other sources (files, folders, synthetic) the reader waits for the detector, so every frame is
processed. Frame-sized memory is allocated only when the frame size changes.

Faults are handled here so the loop keeps running: a read that raises or a live stream that ends
reopens the source with exponential backoff; a read or open that blocks for longer than
``stall_timeout`` is abandoned (the thread is left to die when the call returns; its frame is never
published) and a fresh reader reopens the source.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from edge.detector.step import Frame
from edge.errors import BadFrameError, first_line
from edge.live.sources import FrameCounters, SkippedInput, Source

RING_SLOTS = 4  # latest + held by the detector + being written + one spare for an abandoned reader
BACKOFF_START, BACKOFF_MAX = 0.25, 8.0  # seconds between reconnect attempts
MAX_ABANDONED = 3  # readers left blocked in a dead source; beyond this, wait for one to return
GIVE_UP_AFTER = 5  # consecutive failed reads after which a file/folder/synthetic source ends the run

FREE, WRITING, READY, HELD = 0, 1, 2, 3


class FrameRing:
    """``RING_SLOTS`` reused :class:`Frame` objects, each FREE, WRITING (reader), READY (newest) or
    HELD (detector). A slot keeps its image and resize buffers from frame to frame."""

    def __init__(self, slots: int = RING_SLOTS) -> None:
        self.frames = [Frame(slot=i) for i in range(slots)]
        self.state = [FREE] * slots
        # The resize buffer a slot owns: Frame.resized points at it only while it holds this frame's resize.
        self.resize_buffers: list[np.ndarray | None] = [None] * slots


class Capture:
    """Runs ``source.read()`` on a thread; :meth:`get` returns the newest unseen frame.

    ``log`` receives one-line messages about stalls and reconnects (the CLI prints them).
    ``prepare(frame, previous) -> resized`` (e.g. ``FrameBuffer.resize``) runs on the capture thread
    right after each frame is read, while the frame is still in that CPU's cache; the detector then
    finds the result in ``Frame.resized`` and only colour-converts it into its input tensor. A frame
    ``prepare`` refuses (:class:`~edge.errors.BadFrameError`) is counted bad and not published; any
    other exception is a bug and ends the capture with :attr:`error` set.
    ``stall_timeout`` defaults to the source's own (the one it bounds network reads with).
    ``slots``: frames in the ring (more where several detectors hold frames at once, see
    :func:`edge.live.turns.ring_slots`).
    """

    def __init__(self, source: Source, *, stall_timeout: float | None = None,
                 log: Callable[[str], None] | None = None,
                 backoff: tuple[float, float] = (BACKOFF_START, BACKOFF_MAX),
                 prepare: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None,
                 slots: int = RING_SLOTS) -> None:
        self.source = source
        self._prepare = prepare
        self.live = bool(source.live)
        self.stall_timeout = float(stall_timeout if stall_timeout is not None else source.stall_timeout)
        self.counters: FrameCounters = source.counters
        self._log = log or (lambda message: None)
        self._backoff = backoff
        self._ring = FrameRing(slots)
        self._cond = threading.Condition(threading.Lock())
        self._latest = -1  # slot index of the newest READY frame, -1 if none
        self._seq = 0
        self._bad_logged = 0
        self._ended = False
        self._stop = threading.Event()
        self._generation = 0
        self._busy_since = 0.0  # monotonic start of the reader's current blocking call, 0 when idle
        self._busy_what = ""
        self._thread: threading.Thread | None = None
        self._abandoned: list[threading.Thread] = []
        self._stall_delay = backoff[0]  # grows with each stall in a row, reset by a frame
        self.error: BaseException | None = None  # set when the reader gave up (non-reconnectable source)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "Capture":
        self._spawn(reopen_first=False)
        return self

    def presize(self, shape: tuple[int, ...] | None = None) -> None:
        """Allocate every slot's image and resize buffer now, for frames of ``shape`` (default: the
        source's :attr:`~edge.live.sources.Source.frame_shape`); no-op when the shape is unknown."""
        shape = shape or self.source.frame_shape
        if not shape:
            return
        ring = self._ring
        for i, frame in enumerate(ring.frames):
            frame.image = np.zeros(shape, np.uint8)
            if self._prepare is not None:
                ring.resize_buffers[i] = self._prepare(frame.image, None)

    def _spawn(self, reopen_first: bool, delay: float | None = None) -> None:
        self._generation += 1
        self._thread = threading.Thread(target=self._reader, args=(self._generation, reopen_first, delay),
                                        name=f"edge-capture-{self._generation}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop reading and close the source. A reader stuck in a blocking call is left behind."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # stuck in a read: closing under it could crash the backend; it is a daemon
        try:
            self.source.close()
        except Exception:
            pass

    @property
    def ended(self) -> bool:
        """The source reached its end (files without loop) or gave up; no more frames will come."""
        return self._ended

    # ---- consumer side ------------------------------------------------------------------------

    def get(self, timeout: float) -> Frame | None:
        """The newest :class:`Frame` not yet taken, or ``None`` after ``timeout`` (at once when the
        source has ended). It stays valid until :meth:`release`. ``seq`` counts frames read from
        the source (0-based), so gaps show dropped frames; ``stamp`` is the wall-clock capture time.
        A frame whose ``error`` is set is an input the source skipped (its ``name`` says which).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest < 0:
                if self._ended or self._stop.is_set():
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._check_stall()  # a zero-timeout poll must still notice a stalled reader
                    return None
                self._cond.wait(min(remaining, 0.2))
                if self._latest < 0:
                    self._check_stall()
            slot = self._latest
            self._ring.state[slot] = HELD
            self._latest = -1
            self._cond.notify_all()  # a non-live reader may be waiting for the frame to be taken
            return self._ring.frames[slot]

    def release(self, frame: Frame) -> None:
        with self._cond:
            if self._ring.state[frame.slot] == HELD:
                self._ring.state[frame.slot] = FREE
            self._cond.notify_all()

    def _check_stall(self) -> None:
        """Called with the lock held: abandon a reader whose call has blocked past stall_timeout."""
        since = self._busy_since
        if not since or self._stop.is_set():
            return
        blocked = time.monotonic() - since
        if blocked < self.stall_timeout:
            return
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        if len(self._abandoned) >= MAX_ABANDONED:
            return  # the backend is wedged: more threads would not help; check again later
        self.counters.add("stalls")
        self._log(f"source {self.source.spec}: no frame for {blocked:.1f} s ({self._busy_what} stalled); reopening")
        self._busy_since = 0.0
        if self._thread is not None:
            self._abandoned.append(self._thread)
        self._spawn(reopen_first=True, delay=self._stall_delay)
        self._stall_delay = min(self._stall_delay * 2, self._backoff[1])

    # ---- reader side --------------------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _blocking(self, generation: int, what: str) -> None:
        if generation == self._generation:
            self._busy_what = what
            self._busy_since = time.monotonic()

    def _idle(self, generation: int) -> None:
        if generation == self._generation:
            self._busy_since = 0.0

    def _reader(self, generation: int, reopen_first: bool, delay: float | None = None) -> None:
        try:
            self._read_until_stopped(generation, reopen_first, delay)
        except Exception as exc:  # a bug, not a source fault: end the run and say so rather than die silently
            self._log(f"source {self.source.spec}: capture failed ({first_line(exc, with_type=True)})")
            self._end(generation, exc)

    def _end(self, generation: int, error: BaseException | None = None) -> None:
        with self._cond:
            if generation != self._generation:
                return
            if error is not None:
                self.error = error
            self._ended = True
            self._cond.notify_all()

    def _read_until_stopped(self, generation: int, reopen_first: bool, delay: float | None) -> None:
        source = self.source
        delay = delay or self._backoff[0]
        must_reopen = reopen_first
        failures = 0  # consecutive failed reads; a finite source that keeps failing is given up
        while self._current(generation):
            if must_reopen:
                if self._stop.wait(delay) or not self._current(generation):
                    return
                self._blocking(generation, "open")
                try:
                    source.reopen()
                except Exception as exc:  # SourceError, or whatever a backend raises
                    self._idle(generation)
                    if not self._current(generation):
                        return
                    self._log(f"source {source.spec}: reconnect failed ({first_line(exc, with_type=True)}); "
                              f"retrying in {min(delay * 2, self._backoff[1]):.1f} s")
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self._idle(generation)
                if not self._current(generation):
                    return
                self.counters.add("reconnects")
                self._log(f"source {source.spec}: reconnected")
                must_reopen = False
                delay = self._backoff[0]
            self._blocking(generation, "read")
            try:
                image = source.read()
            except SkippedInput as skipped:  # one bad input (the source counted it): go on with the next
                self._idle(generation)
                if not self._current(generation):
                    return
                self._log_bad(f"skipped {skipped}")
                if not self.live:  # in order with the frames, so sinks can name it
                    self._publish(generation, None, skipped)
                continue
            except Exception as exc:
                self._idle(generation)
                if not self._current(generation):
                    return
                self.counters.add("read_errors")
                failures += 1
                if not source.reconnectable and failures >= GIVE_UP_AFTER:
                    self._log(f"source {source.spec}: {failures} reads in a row failed "
                              f"({first_line(exc, with_type=True)}); giving up")
                    self._end(generation, exc)
                    return
                self._log(f"source {source.spec}: read failed ({first_line(exc, with_type=True)}); reopening")
                must_reopen = True
                continue
            self._idle(generation)
            if not self._current(generation):
                return  # abandoned while blocked: this frame belongs to nobody
            if image is None:
                if source.reconnectable:
                    self.counters.add("read_errors")
                    self._log(f"source {source.spec}: stream ended; reopening")
                    must_reopen = True
                    continue
                self._end(generation)
                return
            failures = 0
            self._stall_delay = self._backoff[0]
            self._publish(generation, image)

    def _log_bad(self, message: str) -> None:
        self._bad_logged += 1
        n = self._bad_logged
        if n <= 3 or n % 100 == 0:
            self._log(message + (f" ({n} so far)" if n > 1 else ""))

    def _take_slot(self, generation: int) -> int:
        """A FREE slot marked WRITING, or -1 (stopped, or every slot busy: the frame is dropped)."""
        ring = self._ring
        with self._cond:
            if not self.live:
                # Lossless: wait until the detector took the previous frame.
                while self._latest >= 0 and self._current(generation):
                    self._cond.wait(0.2)
                if not self._current(generation):
                    return -1
            slot = next((i for i, s in enumerate(ring.state) if s == FREE), -1)
            if slot < 0:  # every slot busy (an abandoned reader mid-copy): drop this one
                self.counters.add("frames_dropped")
                return -1
            ring.state[slot] = WRITING
            return slot

    def _publish(self, generation: int, image: np.ndarray | None, skipped: SkippedInput | None = None) -> None:
        slot = self._take_slot(generation)
        if slot < 0:
            return
        ring = self._ring
        frame = ring.frames[slot]
        frame.error, frame.name, frame.resized = None, self.source.frame_name, None
        if skipped is not None:
            frame.error, frame.name = skipped.reason, skipped.name
        else:
            if frame.image is None or frame.image.shape != image.shape or frame.image.dtype != image.dtype:
                frame.image = np.empty(image.shape, image.dtype)  # first frame, or a size change
            np.copyto(frame.image, image)
            if self._prepare is not None:
                try:
                    frame.resized = ring.resize_buffers[slot] = self._prepare(frame.image, ring.resize_buffers[slot])
                except BadFrameError as exc:
                    self.counters.add("bad_frames")
                    self._log_bad(f"frame {self._seq}: skipped ({exc})")
                    with self._cond:
                        ring.state[slot] = FREE
                    return
        with self._cond:
            if not self._current(generation):
                ring.state[slot] = FREE
                return
            if self._latest >= 0:  # the detector never took it: a newer frame wins
                ring.state[self._latest] = FREE
                self.counters.add("frames_dropped")
            ring.state[slot] = READY
            frame.seq = self._seq
            frame.stamp = time.time()
            self._seq += 1
            self._latest = slot
            self._cond.notify_all()
