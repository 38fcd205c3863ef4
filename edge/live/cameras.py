"""One camera of a multi-camera run: its polled capture, its handle on shared sinks, its numbers.

Each :class:`Camera` has its own :class:`~edge.live.sources.Source`, capture thread and ring of
preallocated frames, its own sinks, optional :class:`~edge.events.stage.EventStage`, counters
and stage times; :class:`~edge.live.multiloop.MultiLoop` runs the one detector over them::

    cameras = [Camera("door", open_source("rtsp://door/stream")), Camera("yard", open_source("1"))]
    summary = MultiLoop(Detector(model), cameras, duration=60).run()

Memory per camera is fixed and known before the first frame when the source knows its frame size
(:attr:`Camera.preallocated_bytes`): the capture ring (``RING_SLOTS`` frames and as many resize
buffers of the model input), the annotated copy when a sink wants one, stage-time rings, and what
its sinks preallocate (a clip ring, say). The detector, its input tensor and its detections are
shared. The detector's :class:`~edge.detector.buffer.FrameBuffer` re-derives its geometry
whenever the frame size changes from one turn to the next; in letterbox mode it keeps a resize
buffer per fitted shape (per aspect ratio, up to 16), so cameras taking turns allocate nothing.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable, Iterable

import numpy as np

from edge.detector.stages import STAGES, StageTimes
from edge.detector.step import Frame
from edge.errors import EdgeError
from edge.live.annotate import Annotator
from edge.live.capture import HELD, Capture
from edge.live.sinks import Sink
from edge.live.sources import Source

UP, DOWN, ENDED, FAILED, STARTING = "up", "down", "ended", "failed", "starting"
_CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a camera's name: it names files


class CameraCapture(Capture):
    """A :class:`Capture` that can be polled without blocking and wakes a shared event.

    ``Capture.get(0)`` also returns at once, but never checks for a stalled reader (it does that
    only after waiting), so a stalled source polled with it would never be reopened. :meth:`poll`
    does the check. ``wake`` is set whenever a frame is published or the capture ends.
    """

    def __init__(self, source: Source, *, wake: threading.Event, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self._wake = wake

    def poll(self) -> Frame | None:
        """The newest frame not yet taken, or ``None`` at once (after checking for a stalled reader)."""
        with self._cond:
            if self._latest < 0:
                if not self._ended and not self._stop.is_set():
                    self._check_stall()
                return None
            slot = self._latest
            self._ring.state[slot] = HELD
            self._latest = -1
            self._cond.notify_all()  # a non-live reader waits for its frame to be taken
            return self._ring.frames[slot]

    def request_stop(self) -> None:
        """Ask the reader to stop without waiting for it (stop several captures at once)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def ring_bytes(self) -> int:
        """Bytes of the ring's images and resize buffers as allocated now."""
        total = 0
        for frame, resized in zip(self._ring.frames, self._ring.resize_buffers):
            total += frame.image.nbytes if frame.image is not None else 0
            total += resized.nbytes if resized is not None else 0
        return total

    def _publish(self, generation: int, image: np.ndarray | None, skipped=None) -> None:
        super()._publish(generation, image, skipped)
        self._wake.set()

    def _end(self, generation: int, error: BaseException | None = None) -> None:
        super()._end(generation, error)
        self._wake.set()


class CameraSink(Sink):
    """One camera's handle on a sink shared by several cameras (one JSON lines stream for all).

    Before each call it sets ``inner.camera`` to this camera's name when the inner sink has that
    attribute (:class:`~edge.live.sinks.JsonLinesSink` does), then delegates.
    :class:`~edge.live.multiloop.MultiLoop` starts, closes and reports each shared inner sink once.
    """

    def __init__(self, inner: Sink, camera: str) -> None:
        self.inner = inner
        self.camera = camera
        self.needs_annotation = inner.needs_annotation
        self._tags = hasattr(inner, "camera")

    def _tag(self) -> None:
        if self._tags:
            self.inner.camera = self.camera

    def start(self, stats) -> None:
        self.inner.start(stats)

    def wants_frame(self) -> bool:
        return self.inner.wants_frame()

    def write(self, frame, detections, annotated) -> None:
        self._tag()
        self.inner.write(frame, detections, annotated)

    def skipped(self, frame) -> None:
        self._tag()
        self.inner.skipped(frame)

    def events(self, frame, events) -> None:
        self._tag()
        self.inner.events(frame, events)

    def close(self) -> None:
        self.inner.close()

    def report(self) -> str | None:
        return self.inner.report()


class SerializedSink(Sink):
    """A sink that several detector threads reach, called under ``lock`` (one lock per sink: a
    :class:`CameraSink`'s tag and call happen together, so no line is written under another camera's
    name). A :class:`~edge.live.multiloop.MultiLoop` with several detectors wraps every sink that
    more than one camera's frames go to; the loop still starts, closes and reports the sink itself."""

    def __init__(self, sink: Sink, lock: threading.Lock) -> None:
        self.sink = sink
        self.lock = lock
        self.needs_annotation = sink.needs_annotation

    def wants_frame(self) -> bool:
        with self.lock:
            return self.sink.wants_frame()

    def write(self, frame, detections, annotated) -> None:
        with self.lock:
            self.sink.write(frame, detections, annotated)

    def skipped(self, frame) -> None:
        with self.lock:
            self.sink.skipped(frame)

    def events(self, frame, events) -> None:
        with self.lock:
            self.sink.events(frame, events)


def serialize_shared_sinks(cameras: list["Camera"]) -> None:
    """Wrap each sink that more than one of ``cameras`` sends frames to (a loop-wide sink, or a
    :class:`CameraSink` on a shared one) in a :class:`SerializedSink`, one lock per shared sink."""
    reach: dict[int, int] = {}
    for camera in cameras:
        for target in {id(getattr(sink, "inner", sink)) for sink in camera._all_sinks}:
            reach[target] = reach.get(target, 0) + 1
    locks: dict[int, threading.Lock] = {}
    for camera in cameras:
        wrapped = []
        for sink in camera._all_sinks:
            target = id(getattr(sink, "inner", sink))
            if reach[target] > 1:
                sink = SerializedSink(sink, locks.setdefault(target, threading.Lock()))
            wrapped.append(sink)
        camera._all_sinks = wrapped
        camera._annotating = [s for s in wrapped if s.needs_annotation]


def distinct_sinks(cameras: list["Camera"], loop_sinks: list[Sink],
                   loop_stats: Callable[[], dict]) -> list[tuple[Sink, Callable[[], dict]]]:
    """Every distinct sink of ``cameras`` and ``loop_sinks`` once (a shared one behind
    :class:`CameraSink` wrappers too), with the stats it is started with: its camera's for a
    camera's own sink, ``loop_stats`` otherwise."""
    seen, out = set(), []
    for camera in cameras:
        for sink in camera.sinks:
            target = getattr(sink, "inner", sink)
            if id(target) not in seen:
                seen.add(id(target))
                out.append((target, loop_stats if target is not sink else camera.stats))
    for sink in loop_sinks:
        target = getattr(sink, "inner", sink)
        if id(target) not in seen:
            seen.add(id(target))
            out.append((target, loop_stats))
    return out


class Camera:
    """One camera of a :class:`~edge.live.multiloop.MultiLoop`: a name, a source and what is done with its frames.

    ``sinks`` get only this camera's frames; ``events`` is this camera's own
    :class:`~edge.events.stage.EventStage` (tracks and zones are per camera). ``stall_timeout``
    defaults to the source's; ``backoff`` (first, max seconds between reconnects) to the capture's.
    The capture is made when the camera joins a loop (it needs the detector's resize).
    """

    def __init__(self, name: str, source: Source, sinks: Iterable[Sink] = (), *, events=None,
                 stall_timeout: float | None = None, backoff: tuple[float, float] | None = None) -> None:
        if not _CAMERA_NAME.match(name or ""):
            raise EdgeError(f"camera name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names files)")
        self.name = name
        self.source = source
        self.sinks = list(sinks)
        self.events = events
        self.stall_timeout = stall_timeout
        self.backoff = backoff
        self.counters = source.counters
        self.times = StageTimes(STAGES + (("events",) if events is not None else ()))
        self.capture: CameraCapture | None = None
        self.annotator: Annotator | None = None
        self._annotating: list[Sink] = []
        self._all_sinks: list[Sink] = []
        self.processed = 0
        self.detections_total = 0
        self.fps_recent = 0.0
        self.state = STARTING
        self.last_frame_at = 0.0  # monotonic time of the last frame served, 0 before the first
        self._fps_n0 = 0
        self._bad_logged = 0
        self._label_counts: np.ndarray | None = None

    # ---- set up by the loop -------------------------------------------------------------------

    def _attach(self, detector, log: Callable[[str], None], wake: threading.Event, loop_sinks: list[Sink]) -> None:
        kwargs = {}
        if self.backoff is not None:
            kwargs["backoff"] = tuple(self.backoff)
        self.capture = CameraCapture(self.source, wake=wake, stall_timeout=self.stall_timeout,
                                     log=lambda message: log(f"camera {self.name}: {message}"),
                                     prepare=detector.buffer.resize, **kwargs)
        self._all_sinks = self.sinks + list(loop_sinks)  # what each of its frames goes to
        self._annotating = [s for s in self._all_sinks if s.needs_annotation]
        if self._annotating:
            self.annotator = Annotator()
        self._label_counts = np.zeros(len(detector.labels) + 1, np.int64)

    def presize(self) -> None:
        """Allocate this camera's frame-sized buffers now, when the source knows its frame size."""
        shape = self.source.frame_shape
        if not shape:
            return
        first = self.capture._ring.frames[0].image
        if first is None or first.shape != tuple(shape):  # once: presizing again would reallocate
            self.capture.presize(shape)
        if self.annotator is not None:
            self.annotator.presize(shape)
        if self.events is not None:
            self.events.presize(shape)
        for sink in self.sinks:
            target = getattr(sink, "inner", sink)
            presize = getattr(target, "presize", None)
            if callable(presize):
                presize(shape)

    @property
    def preallocated_bytes(self) -> int:
        """Frame-sized memory this camera holds: capture ring and resize buffers, the annotated
        copy, its stage-time rings and its sinks' own buffers (``ring_bytes`` of a clip sink)."""
        total = self.capture.ring_bytes() if self.capture is not None else 0
        canvas = getattr(self.annotator, "_canvas", None) if self.annotator is not None else None
        total += canvas.nbytes if canvas is not None else 0
        total += self.times._values.nbytes
        for sink in self.sinks:
            total += int(getattr(getattr(sink, "inner", sink), "ring_bytes", 0) or 0)
        return total

    def wants_annotation(self) -> bool:
        return any(sink.wants_frame() for sink in self._annotating)

    def stats(self, now: float | None = None) -> dict:
        """This camera's live numbers (safe to read from another thread)."""
        capture = self.capture
        return {
            **self.counters.to_dict(),
            "source": self.source.spec,
            "state": self.state,
            "frames_processed": self.processed,
            "fps": round(self.fps_recent, 2),
            "detections": self.detections_total,
            "invoke_ms_p50": round(self.times.percentiles("invoke")["p50"] * 1e3, 2),
            "seconds_since_frame": (round((now or time.monotonic()) - self.last_frame_at, 1)
                                    if self.last_frame_at else None),
            "error": str(capture.error) if capture is not None and capture.error is not None else None,
            "preallocated_bytes": self.preallocated_bytes,
        }
