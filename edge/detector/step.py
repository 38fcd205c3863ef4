"""One frame through a pipeline: preprocess -> invoke -> postprocess, each stage timed.

``edge run``'s loop and every pipeline ``edge bench`` compares go through :func:`run_frame`, so the
benchmark measures the step users run, not a copy of it. A :class:`Frame` is one slot of the
capture ring: the image, the capture thread's resize of it for the model (when it made one), and
where it came from; it is reused frame after frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.detector.stages import StageTimes


@dataclass(eq=False)
class Frame:
    """A captured frame. ``image`` is BGR uint8 (reused while its size stays); ``resized`` is the
    image already resized to the model input (``None``: not done, the detector resizes); ``seq``
    counts frames read from the source (gaps are drops); ``stamp`` is the capture time (Unix
    seconds); ``name`` is the file an image source read it from; ``error`` says why a source
    skipped this input (then ``image`` is ``None``)."""

    image: np.ndarray | None = None
    resized: np.ndarray | None = None
    seq: int = 0
    stamp: float = 0.0
    name: str | None = None
    error: str | None = None
    slot: int = -1

    @classmethod
    def of(cls, image: np.ndarray, seq: int = 0, stamp: float | None = None) -> "Frame":
        return cls(image, None, seq, time.time() if stamp is None else stamp)


class FramePipeline(Protocol):
    """Anything :func:`run_frame` can drive: :class:`~edge.detector.detector.Detector` and bench's baseline."""

    def preprocess(self, frame: Frame) -> None: ...

    def invoke(self) -> None: ...

    def postprocess(self) -> Any: ...


def run_frame(pipeline: FramePipeline, frame: Frame, times: StageTimes, waited_since: float) -> Any:
    """Run ``frame`` through ``pipeline``; record ``capture_wait`` (from ``waited_since``, a
    ``perf_counter`` time), ``preprocess``, ``invoke`` and ``postprocess`` in ``times``.

    A frame the pipeline refuses raises from ``preprocess`` (:class:`~edge.errors.BadFrameError`)
    after ``capture_wait`` is recorded. The caller times what it does with the results.
    """
    clock = time.perf_counter
    t0 = clock()
    times.record("capture_wait", t0 - waited_since)
    pipeline.preprocess(frame)
    t1 = clock()
    pipeline.invoke()
    t2 = clock()
    results = pipeline.postprocess()
    t3 = clock()
    times.record("preprocess", t1 - t0)
    times.record("invoke", t2 - t1)
    times.record("postprocess", t3 - t2)
    return results
