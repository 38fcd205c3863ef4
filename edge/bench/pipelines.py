"""The three pipelines ``edge bench`` compares, each behind ``frame(times) -> bool`` (False: no frame came).

- :class:`OursLoop`: edgekit's pipeline as ``edge run`` runs it: the capture thread reads and resizes
  into its ring (:class:`~edge.live.capture.Capture`; on one usable core a source that is not live
  is read on the loop's thread, :mod:`edge.live.inline_capture`, as ``edge run`` does), and the frame goes through
  :func:`~edge.detector.step.run_frame`, the step ``edge run``'s loop uses, then the sinks;
- :class:`OursTurnsLoop`: the same with several detectors (``edge run --detectors K``): they take the
  frames in turn on threads of their own (:class:`~edge.live.turns.FrameTurns`), a chunk at a time
  (:meth:`OursTurnsLoop.frames`), waiting between chunks so the other pipelines' rounds run alone;
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


class OursTurnsLoop:
    """Several detectors of one model over a capture thread's frames, results in frame order, as
    ``edge run --detectors K`` runs them (the hand-on here is the sinks)."""

    def __init__(self, detectors: Sequence, source: Source, sinks: Sequence[Sink] = ()) -> None:
        from edge.live.capture import Capture
        from edge.live.turns import FrameTurns, ring_slots

        self.detector = detectors[0]
        self.sinks = list(sinks)
        self.capture_how = f"on a thread of its own, beside {len(detectors)} detectors taking the frames in turn"
        self.capture = Capture(source, prepare=self.detector.buffer.resize, slots=ring_slots(len(detectors)))
        if source.frame_shape:
            self.capture.presize(source.frame_shape)
            for detector in detectors:
                detector.buffer.presize(source.frame_shape)
        self._times: StageTimes | None = None
        self._each = None
        self.turns = FrameTurns(detectors, self.capture, self._hand_on, limit=0, name="edge-bench-detector")
        self.capture.start()
        self.turns.start()

    def _hand_on(self, frame: Frame, detections, bad, seconds) -> None:
        from edge.live.turns import FRAME_STAGES

        if detections is None:
            return
        times = self._times
        for i, stage in enumerate(FRAME_STAGES):
            times.record(stage, seconds[i])
        t0 = time.perf_counter()
        for sink in self.sinks:
            sink.write(frame, detections, None)
        times.record("sinks", time.perf_counter() - t0)
        if self._each is not None:
            self._each()

    def frames(self, count: int, times: StageTimes, each=None) -> int:
        """Run ``count`` more frames (``each()`` after each, in order); how many came before the
        source ended or stalled for :data:`GET_TIMEOUT` seconds."""
        turns = self.turns
        self._times, self._each = times, each
        before = turns.handed
        turns.set_limit(before + count)
        last, since = before, time.monotonic()
        while not turns.settled():
            turns.wait(0.25)
            if turns.handed != last:
                last, since = turns.handed, time.monotonic()
            elif time.monotonic() - since > GET_TIMEOUT:
                break
        if turns.error is not None:
            raise turns.error
        self._each = None
        return turns.handed - before

    def frame(self, times: StageTimes) -> bool:
        return self.frames(1, times) == 1

    @property
    def dropped(self) -> int:
        return self.capture.counters.frames_dropped

    def close(self) -> None:
        self.turns.stop()
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
