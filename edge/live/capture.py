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
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge.live.sources import Source

RING_SLOTS = 4  # latest + held by the detector + being written + one spare for an abandoned reader
BACKOFF_START, BACKOFF_MAX = 0.25, 8.0  # seconds between reconnect attempts
MAX_ABANDONED = 3  # readers left blocked in a dead source; beyond this, wait for one to return
GIVE_UP_AFTER = 5  # consecutive failed reads after which a file/folder/synthetic source ends the run

FREE, WRITING, READY, HELD = 0, 1, 2, 3


@dataclass
class CaptureCounters:
    frames_read: int = 0  # frames delivered by the source
    frames_dropped: int = 0  # read but never given to the detector (newer frame won)
    read_errors: int = 0  # reads that raised, or live streams that ended
    reconnects: int = 0  # successful reopenings
    stalls: int = 0  # reads or opens abandoned after stall_timeout


class FrameRing:
    """``RING_SLOTS`` frames, each FREE, WRITING (reader), READY (newest) or HELD (detector).

    ``resized[i]`` is frame ``i`` already resized to the model input (when the capture was given a
    ``prepare`` function), valid when ``resized_ok[i]``.
    """

    def __init__(self, slots: int = RING_SLOTS) -> None:
        self.frames: list[np.ndarray | None] = [None] * slots
        self.resized: list[np.ndarray | None] = [None] * slots
        self.resized_ok = [False] * slots
        self.state = [FREE] * slots
        self.seq = [0] * slots
        self.stamp = [0.0] * slots


class Capture:
    """Runs ``source.read()`` on a thread; :meth:`get` returns the newest unseen frame.

    ``log`` receives one-line messages about stalls and reconnects (the CLI prints them).
    ``prepare(frame, previous) -> resized`` (e.g. ``FrameBuffer.resize``) runs on the capture thread
    right after each frame is read, while the frame is still in that CPU's cache; the detector then
    finds the result through :meth:`resized` and only colour-converts it into its input tensor.
    """

    def __init__(self, source: Source, *, stall_timeout: float = 5.0, log: Callable[[str], None] | None = None,
                 backoff: tuple[float, float] = (BACKOFF_START, BACKOFF_MAX),
                 prepare: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None) -> None:
        self.source = source
        self._prepare = prepare
        self.live = bool(source.live)
        self.stall_timeout = float(stall_timeout)
        self.counters = CaptureCounters()
        self._log = log or (lambda message: None)
        self._backoff = backoff
        self._ring = FrameRing()
        self._cond = threading.Condition(threading.Lock())
        self._latest = -1  # slot index of the newest READY frame, -1 if none
        self._held = -1
        self._seq = 0
        self._ended = False
        self._stop = threading.Event()
        self._generation = 0
        self._busy_since = 0.0  # monotonic start of the reader's current blocking call, 0 when idle
        self._busy_what = ""
        self._last_frame_time = time.monotonic()
        self._thread: threading.Thread | None = None
        self._abandoned: list[threading.Thread] = []
        self._stall_delay = backoff[0]  # grows with each stall in a row, reset by a frame
        self.error: BaseException | None = None  # set when the reader gave up (non-reconnectable source)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "Capture":
        self._last_frame_time = time.monotonic()
        self._spawn(reopen_first=False)
        return self

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

    def get(self, timeout: float) -> tuple[int, np.ndarray, int, float] | None:
        """``(slot, frame, seq, time)`` of the newest frame not yet taken, or ``None`` after ``timeout``.

        The frame stays valid until :meth:`release`. ``seq`` counts frames read from the source
        (0-based), so gaps show dropped frames; ``time`` is the wall-clock capture time.
        Returns ``None`` at once when the source has ended.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest < 0:
                if self._ended or self._stop.is_set():
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.2))
                if self._latest < 0:
                    self._check_stall()
            slot = self._latest
            ring = self._ring
            ring.state[slot] = HELD
            self._held = slot
            self._latest = -1
            self._cond.notify_all()  # a non-live reader may be waiting for the frame to be taken
            return slot, ring.frames[slot], ring.seq[slot], ring.stamp[slot]

    def resized(self, slot: int) -> np.ndarray | None:
        """The held frame's ``prepare`` output, or None (no ``prepare``, or it refused the frame:
        the detector's own path then meets the frame and reports what is wrong with it)."""
        return self._ring.resized[slot] if self._ring.resized_ok[slot] else None

    def release(self, slot: int) -> None:
        with self._cond:
            if self._ring.state[slot] == HELD:
                self._ring.state[slot] = FREE
            self._held = -1
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
        self.counters.stalls += 1
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
                    self._log(f"source {source.spec}: reconnect failed ({_one_line(exc)}); retrying in "
                              f"{min(delay * 2, self._backoff[1]):.1f} s")
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self._idle(generation)
                if not self._current(generation):
                    return
                self.counters.reconnects += 1
                self._log(f"source {source.spec}: reconnected")
                must_reopen = False
                delay = self._backoff[0]
            self._blocking(generation, "read")
            try:
                frame = source.read()
            except Exception as exc:
                self._idle(generation)
                if not self._current(generation):
                    return
                self.counters.read_errors += 1
                failures += 1
                if not source.reconnectable and failures >= GIVE_UP_AFTER:
                    self._log(f"source {source.spec}: {failures} reads in a row failed ({_one_line(exc)}); giving up")
                    with self._cond:
                        self.error = exc
                        self._ended = True
                        self._cond.notify_all()
                    return
                self._log(f"source {source.spec}: read failed ({_one_line(exc)}); reopening")
                must_reopen = True
                continue
            self._idle(generation)
            if not self._current(generation):
                return  # abandoned while blocked: this frame belongs to nobody
            if frame is None:
                if source.reconnectable:
                    self.counters.read_errors += 1
                    self._log(f"source {source.spec}: stream ended; reopening")
                    must_reopen = True
                    continue
                with self._cond:
                    self._ended = True
                    self._cond.notify_all()
                return
            failures = 0
            self._stall_delay = self._backoff[0]
            self.counters.frames_read += 1
            self._publish(generation, frame)

    def _publish(self, generation: int, frame: np.ndarray) -> None:
        ring = self._ring
        with self._cond:
            if not self.live:
                # Lossless: wait until the detector took the previous frame.
                while self._latest >= 0 and self._current(generation):
                    self._cond.wait(0.2)
                if not self._current(generation):
                    return
            slot = next((i for i, s in enumerate(ring.state) if s == FREE), -1)
            if slot < 0:  # every slot busy (an abandoned reader mid-copy): drop this one
                self.counters.frames_dropped += 1
                return
            ring.state[slot] = WRITING
        target = ring.frames[slot]
        if target is None or target.shape != frame.shape or target.dtype != frame.dtype:
            # Only on the first frame or a frame-size change.
            target = ring.frames[slot] = np.empty(frame.shape, frame.dtype)
        np.copyto(target, frame)
        resized_ok = False
        if self._prepare is not None:
            try:
                ring.resized[slot] = self._prepare(target, ring.resized[slot])
                resized_ok = True
            except Exception:  # a bad frame: the detector thread counts it when it gets there
                pass
        with self._cond:
            if not self._current(generation):
                ring.state[slot] = FREE
                return
            ring.resized_ok[slot] = resized_ok
            if self._latest >= 0:  # the detector never took it: a newer frame wins
                ring.state[self._latest] = FREE
                self.counters.frames_dropped += 1
            ring.state[slot] = READY
            ring.seq[slot] = self._seq
            ring.stamp[slot] = time.time()
            self._seq += 1
            self._latest = slot
            self._last_frame_time = time.monotonic()
            self._cond.notify_all()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
