"""Detections from a live source as a Python iterator, read the way ``edge run`` reads::

    import edge
    for frame, detections in edge.stream("rtsp://camera/stream", "model.tflite"):
        print(frame.seq, detections.count, detections.boxes)   # views: valid until the next step

The capture thread reads, decodes and resizes the next frame while the detector runs, into the same
ring of preallocated frames ``edge run`` uses (latest frame wins for live sources; every frame for
files; on one usable core a source that is not live is read in the step itself, as ``edge run``
does: :mod:`edge.live.inline_capture`, ``capture=`` to choose). Each step yields the :class:`~edge.detector.step.Frame` (``frame.image`` is the BGR pixels)
and the detector's one preallocated :class:`~edge.contract.detections.Detections`: both are reused,
so copy (``detections.copy()``, ``frame.image.copy()``) whatever you keep. Nothing frame-sized is
allocated per step. Leaving the loop (``break``, an exception, garbage collection) stops the
capture thread and closes the source.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from edge.contract.detections import Detections
from edge.detector.detector import Detector
from edge.detector.stages import STAGES, StageTimes
from edge.detector.step import Frame, run_frame
from edge.errors import BadFrameError
from edge.live.inline_capture import CAPTURE_AUTO, choose_capture
from edge.live.sources import Source, open_source


def stream(source: str | Source = "synthetic", model: str | Path | Detector | None = None, *,
           score_threshold: float = 0.5, max_frames: int | None = None, timeout: float = 10.0,
           times: StageTimes | None = None, capture: str = CAPTURE_AUTO,
           **source_options) -> Iterator[tuple[Frame, Detections]]:
    """Yield ``(frame, detections)`` for each processed frame of ``source`` (a ``--source`` string
    or a :class:`~edge.live.sources.Source`), with ``model`` (a path, a :class:`Detector`, or None
    for the bundled demo). Stops at the end of a finite source, after ``max_frames``, or when no
    frame came for ``timeout`` seconds from a source that is still open (then it raises). Frames the
    detector cannot use are skipped; ``times`` (a :class:`StageTimes`) receives the stage timings.
    ``capture``: where frames are read, ``auto``, ``thread`` or ``inline``, as ``edge run --capture``.
    """
    detector = model if isinstance(model, Detector) else Detector(model, score_threshold=score_threshold)
    source = source if isinstance(source, Source) else open_source(str(source), **source_options)
    times = times if times is not None else StageTimes(STAGES)
    capture_class, _how = choose_capture(source, capture)
    capture = capture_class(source, prepare=detector.buffer.resize)
    if source.frame_shape:
        capture.presize(source.frame_shape)
        detector.buffer.presize(source.frame_shape)
    capture.start()
    done = 0
    try:
        waited = time.perf_counter()
        while max_frames is None or done < max_frames:
            frame = capture.get(timeout)
            if frame is None:
                if capture.ended:
                    if capture.error is not None:
                        raise capture.error
                    return
                raise TimeoutError(f"no frame from {source.spec} in {timeout:g} s")
            try:
                if frame.error is not None:
                    continue
                try:
                    detections = run_frame(detector, frame, times, waited)
                except BadFrameError:
                    continue
                done += 1
                yield frame, detections
            finally:
                capture.release(frame)
                waited = time.perf_counter()
    finally:
        capture.stop()
