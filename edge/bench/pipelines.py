"""The three pipelines ``edge bench`` compares, each behind ``frame(times) -> bool`` (False: no frame came).

- :class:`OursLoop`: edgekit's pipeline as ``edge run`` runs it: the capture thread reads and resizes
  into its ring (:class:`~edge.live.capture.Capture`; on one usable core a source that is not live
  is read on the loop's thread, :mod:`edge.live.inline_capture`, as ``edge run`` does), and the frame goes through
  :func:`~edge.detector.step.run_frame`, the step ``edge run``'s loop uses, then the sinks;
- :class:`BaselineLoop`: the usual pipeline (:mod:`edge.bench.baseline`) reading the same source
  synchronously on the one thread, through the same :func:`~edge.detector.step.run_frame`;
- :class:`BareLoop`: ``invoke()`` alone on a second backend of the same model whose input holds a
  real frame: the ceiling any pipeline can reach with this model and thread count.

Sinks are :class:`~edge.live.sinks.Sink` objects, as in ``edge run``; a bench has none, and the
``sinks`` stage then times the empty fan-out.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from edge.backends.base import Backend
from edge.detector.stages import StageTimes
from edge.detector.step import Frame, FramePipeline, run_frame
from edge.live.sinks import Sink
from edge.live.sources import SkippedInput, Source

GET_TIMEOUT = 10.0  # seconds to wait for a frame before a run is declared stalled


def step_and_sinks(pipeline: FramePipeline, frame: Frame, sinks: Sequence[Sink], times: StageTimes,
                   waited_since: float) -> None:
    """One frame through :func:`run_frame`, then the sinks (timed as the ``sinks`` stage)."""
    results = run_frame(pipeline, frame, times, waited_since)
    t0 = time.perf_counter()
    for sink in sinks:
        sink.write(frame, results, None)
    times.record("sinks", time.perf_counter() - t0)


class OursLoop:
    """Capture thread + :class:`~edge.detector.detector.Detector`, buffers sized before the first frame
    where the source knows its frame size, as in ``edge run``."""

    def __init__(self, detector, source: Source, sinks: Sequence[Sink] = (), capture: str = "auto") -> None:
        from edge.live.inline_capture import choose_capture

        self.detector = detector
        self.sinks = list(sinks)
        capture_class, self.capture_how = choose_capture(source, capture)
        self.capture = capture_class(source, prepare=detector.buffer.resize)
        if source.frame_shape:
            self.capture.presize(source.frame_shape)
            detector.buffer.presize(source.frame_shape)
        self.capture.start()

    def frame(self, times: StageTimes) -> bool:
        capture = self.capture
        t0 = time.perf_counter()
        while True:
            frame = capture.get(GET_TIMEOUT)
            if frame is None:
                return False
            if frame.error is None:
                break
            capture.release(frame)  # an input the source skipped (counted by the source)
        try:
            step_and_sinks(self.detector, frame, self.sinks, times, t0)
        finally:
            capture.release(frame)
        return True

    @property
    def dropped(self) -> int:
        return self.capture.counters.frames_dropped

    def close(self) -> None:
        self.capture.stop()


class BaselineLoop:
    """Read a frame, then the baseline's per-frame code, all on one thread (as the examples do)."""

    dropped = 0  # a synchronous reader never drops

    def __init__(self, baseline: FramePipeline, source: Source, sinks: Sequence[Sink] = ()) -> None:
        self.baseline = baseline
        self.source = source
        self.sinks = list(sinks)
        self._frame = Frame()

    def frame(self, times: StageTimes) -> bool:
        t0 = time.perf_counter()
        while True:
            try:
                image = self.source.read()
                break
            except SkippedInput:
                continue  # an unusable input (counted by the source); the next read goes on
        if image is None:
            return False
        frame = self._frame
        frame.image = image
        frame.seq += 1
        step_and_sinks(self.baseline, frame, self.sinks, times, t0)
        return True

    def close(self) -> None:
        self.source.close()


class BareLoop:
    """``backend.invoke()`` alone. :meth:`hold_input_of` copies a real frame's input tensor in first
    (post-process work such as NMS depends on what the image shows)."""

    dropped = 0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def hold_input_of(self, other: Backend) -> None:
        """Copy ``other``'s image input (same model, holding a real frame) into this backend's."""
        np.copyto(self.backend.view(self.backend.image)(), other.view(other.image)())

    def frame(self, times: StageTimes) -> bool:
        clock = time.perf_counter
        t0 = clock()
        self.backend.invoke()
        times.record("invoke", clock() - t0)
        return True

    def close(self) -> None:
        pass
