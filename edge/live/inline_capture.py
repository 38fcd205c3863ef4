"""Reading on the loop's own thread, for a source that is not live on a board with one usable core.

The capture thread (:mod:`edge.live.capture`) pays when a core is free to decode the next frame
while ``invoke()`` runs. With one usable core there is none: the reader can only take turns with
``invoke()`` on that core, and each turn costs thread switches and the cache the other had filled.
A source that is not live (a video file, an image folder, the synthetic source) loses nothing by
waiting, so :class:`InlineCapture` reads it in :meth:`~InlineCapture.get`, on the caller's thread,
with the same ring interface the loop uses: ``get`` / ``release`` / ``ended`` / ``error`` /
``counters``. The frame handed out *is* the source's own reused buffer (no ring copy): the next read
happens only after the loop released it.

What it gives up: a read that blocks holds up the loop (the capture thread would abandon a reader
stalled past ``stall_timeout``). Local files and the synthetic source do not block; for a file on
a network mount, ``--capture thread`` keeps the thread. :func:`choose_capture` is the rule.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from edge.detector.step import Frame
from edge.errors import BadFrameError, EdgeError, first_line
from edge.live.capture import BACKOFF_MAX, BACKOFF_START, GIVE_UP_AFTER, Capture
from edge.live.sources import FrameCounters, SkippedInput, Source

CAPTURE_AUTO, CAPTURE_THREAD, CAPTURE_INLINE = "auto", "thread", "inline"
CAPTURE_MODES = (CAPTURE_AUTO, CAPTURE_THREAD, CAPTURE_INLINE)


class InlineCapture:
    """Reads ``source`` (not live) when the loop asks for a frame; ``prepare`` as :class:`Capture`'s."""

    def __init__(self, source: Source, *, log: Callable[[str], None] | None = None,
                 prepare: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None, **_ignored) -> None:
        if source.live:
            raise EdgeError(f"--source {source.spec} is live: its stale frames are dropped on a thread of its own")
        self.source = source
        self.live = False
        self.stall_timeout = float(source.stall_timeout)
        self.counters: FrameCounters = source.counters
        self._prepare = prepare
        self._log = log or (lambda message: None)
        self._frame = Frame(slot=0)
        self._resized: np.ndarray | None = None
        self._held = False
        self._seq = 0
        self._bad_logged = 0
        self._ended = False
        self._stop = threading.Event()
        self.error: BaseException | None = None

    # ---- lifecycle (as Capture's) -------------------------------------------------------------

    def start(self) -> "InlineCapture":
        return self

    def presize(self, shape: tuple[int, ...] | None = None) -> None:
        """The resize buffer now, for frames of ``shape``; the frame itself is the source's buffer."""
        shape = shape or self.source.frame_shape
        if shape and self._prepare is not None:
            self._resized = self._prepare(np.zeros(shape, np.uint8), None)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        try:
            self.source.close()
        except Exception:
            pass

    @property
    def ended(self) -> bool:
        return self._ended

    def ring_bytes(self) -> int:
        return self._resized.nbytes if self._resized is not None else 0

    # ---- the loop's side ----------------------------------------------------------------------

    def get(self, timeout: float) -> Frame | None:
        """The next frame, read now; ``None`` at the end of the source (``timeout`` is not needed:
        the read is the wait)."""
        if self._ended or self._stop.is_set():
            return None
        frame = self._frame
        failures = 0
        while True:
            try:
                image = self.source.read()
            except SkippedInput as skipped:  # one bad input, in order with the frames so sinks can name it
                self._log_bad(f"skipped {skipped}")
                frame.image, frame.resized, frame.error, frame.name = None, None, skipped.reason, skipped.name
                return self._hand_out(frame)
            except Exception as exc:  # as the capture thread does: reopen with backoff, give up after a few
                self.counters.add("read_errors")
                failures += 1
                if failures >= GIVE_UP_AFTER:
                    self._log(f"source {self.source.spec}: {failures} reads in a row failed "
                              f"({first_line(exc, with_type=True)}); giving up")
                    self.error, self._ended = exc, True
                    return None
                self._log(f"source {self.source.spec}: read failed ({first_line(exc, with_type=True)}); reopening")
                if self._stop.wait(min(BACKOFF_START * 2 ** (failures - 1), BACKOFF_MAX)):
                    return None
                try:
                    self.source.reopen()
                    self.counters.add("reconnects")
                except Exception as reopen_error:
                    self._log(f"source {self.source.spec}: reopen failed ({first_line(reopen_error, with_type=True)})")
                continue
            if image is None:
                self._ended = True
                return None
            frame.image, frame.error, frame.name, frame.resized = image, None, self.source.frame_name, None
            if self._prepare is not None:
                try:
                    frame.resized = self._resized = self._prepare(image, self._resized)
                except BadFrameError as exc:
                    self.counters.add("bad_frames")
                    self._log_bad(f"frame {self._seq}: skipped ({exc})")
                    self._seq += 1
                    continue
            return self._hand_out(frame)

    def release(self, frame: Frame) -> None:
        self._held = False

    def _hand_out(self, frame: Frame) -> Frame:
        frame.seq = self._seq
        frame.stamp = time.time()
        self._seq += 1
        self._held = True
        return frame

    def _log_bad(self, message: str) -> None:
        self._bad_logged += 1
        n = self._bad_logged
        if n <= 3 or n % 100 == 0:
            self._log(message + (f" ({n} so far)" if n > 1 else ""))


def choose_capture(source: Source, mode: str = CAPTURE_AUTO, cores: int | None = None) -> tuple[type, str]:
    """The capture class for ``source`` under ``mode`` and why: :class:`InlineCapture` when asked,
    or under ``auto`` for a source that is not live on one usable core; :class:`Capture` otherwise."""
    if mode not in CAPTURE_MODES:
        raise EdgeError(f"--capture {mode}: choose one of {', '.join(CAPTURE_MODES)}")
    if mode == CAPTURE_INLINE and source.live:
        raise EdgeError(f"--capture inline: --source {source.spec} is live; its stale frames are dropped on a "
                        "capture thread, which --capture auto or thread keeps")
    if mode == CAPTURE_INLINE or (mode == CAPTURE_AUTO and not source.live and _cores(cores) == 1):
        why = "asked" if mode == CAPTURE_INLINE else "one usable core and a source that is not live"
        return InlineCapture, f"on the loop's thread ({why})"
    return Capture, "on a thread of its own, beside invoke()"


def _cores(cores: int | None) -> int:
    if cores is not None:
        return cores
    from edge.provenance import usable_cores

    return usable_cores()
