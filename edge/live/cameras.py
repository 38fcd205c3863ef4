"""Several cameras in one process sharing one detector: a fair, latest-frame-wins scheduler.

Each :class:`Camera` has its own :class:`~edge.live.sources.Source`, capture thread and ring of
preallocated frames, its own sinks, optional :class:`~edge.events.stage.EventStage`, counters
and stage times. :class:`MultiLoop` runs the one detector on one frame at a time::

    cameras = [Camera("door", open_source("rtsp://door/stream")), Camera("yard", open_source("1"))]
    summary = MultiLoop(Detector(model), cameras, duration=60).run()

The scheduler
-------------
Each turn takes the newest ready frame of the camera served least recently among the cameras that
have one: the cameras sit in a queue in the order they were last served, the scheduler polls them
from the front and serves the first with a ready frame, which then goes to the back. With the
detector saturated every camera that keeps a frame ready is served once every N turns, so each of
N cameras gets 1/N of the invokes; a camera with fewer frames than its share gives its turns to
the others. Live cameras drop what the detector did not take in time (latest frame wins, counted in
``frames_dropped``); files and synthetic sources wait for their turn, so none of their frames is lost.

Polling never blocks: :meth:`CameraCapture.poll` returns at once. When no camera has a frame the
scheduler sleeps on one event that every capture thread sets when it publishes a frame (or ends),
at most ``idle_wait`` seconds, and polls again. So a camera whose source raised, stalled, ended
or gave up never delays the others by more than a lock acquisition per turn; its capture thread
reconnects on its own, and its stalls are detected by the polls (see :meth:`CameraCapture.poll`).
The run ends at ``max_frames`` (all cameras together), ``duration``, :meth:`MultiLoop.stop`, or
when every camera's source has ended.

Memory per camera is fixed and known before the first frame when the source knows its frame size
(:attr:`Camera.preallocated_bytes`): the capture ring (``RING_SLOTS`` frames and as many resize
buffers of the model input), the annotated copy when a sink wants one, stage-time rings, and what
its sinks preallocate (a clip ring, say). The detector, its input tensor and its detections are
shared. One caveat: the detector's :class:`~edge.detector.buffer.FrameBuffer` re-derives its
geometry whenever the frame size changes from one turn to the next, which costs nothing in stretch
mode but reallocates a model-sized colour buffer per switch in letterbox mode when the cameras'
aspect ratios differ.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edge.detector.stages import STAGES, StageTimes
from edge.detector.step import Frame, run_frame
from edge.errors import BadFrameError, EdgeError
from edge.live.annotate import Annotator
from edge.live.capture import HELD, Capture
from edge.live.sinks import JsonLinesSink, Sink, SinkError
from edge.live.sources import DEFAULT_STALL_TIMEOUT, Source, SourceUnavailable, open_source
from edge.memory import RssSampler, peak_rss_bytes, rss_bytes, rss_slope

STOP_TIMEOUT = 2.0  # seconds, all cameras together, for capture threads to return at the end
IDLE_WAIT = 0.05  # seconds the scheduler sleeps when no camera has a frame (a publish wakes it at once)
RSS_SAMPLE_CAPACITY = 4096
WARMUP_FRAMES = 200  # RSS drift is measured after this many frames (all cameras together)
UP, DOWN, ENDED, FAILED, STARTING = "up", "down", "ended", "failed", "starting"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    attribute (:class:`CameraJsonLinesSink` does), then delegates. :class:`MultiLoop` starts,
    closes and reports each shared inner sink once.
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


class CameraJsonLinesSink(JsonLinesSink):
    """:class:`~edge.live.sinks.JsonLinesSink` whose every line starts with ``"camera": NAME``
    (frames, skipped inputs and events alike). ``camera`` may be changed between calls (by
    :class:`CameraSink`), so one file or stdout serves every camera."""

    def __init__(self, target, camera: str | None = None, *, stream=None) -> None:
        super().__init__(target, stream=stream)
        self.camera = camera

    def _write(self, record: dict) -> None:
        if self.camera is not None:
            record = {"camera": self.camera, **record}
        super()._write(record)


class Camera:
    """One camera of a :class:`MultiLoop`: a name, a source and what is done with its frames.

    ``sinks`` get only this camera's frames; ``events`` is this camera's own
    :class:`~edge.events.stage.EventStage` (tracks and zones are per camera). ``stall_timeout``
    defaults to the source's; ``backoff`` (first, max seconds between reconnects) to the capture's.
    The capture is made when the camera joins a loop (it needs the detector's resize).
    """

    def __init__(self, name: str, source: Source, sinks: Iterable[Sink] = (), *, events=None,
                 stall_timeout: float | None = None, backoff: tuple[float, float] | None = None) -> None:
        if not _NAME.match(name or ""):
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


@dataclass
class CameraSummary:
    """One camera's part of a run. ``share`` is its fraction of all frames processed."""

    name: str
    source: str
    state: str
    frames_read: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    bad_frames: int = 0
    read_errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    fps: float = 0.0
    share: float = 0.0
    detections: int = 0
    detections_by_label: dict[str, int] = field(default_factory=dict)
    preallocated_bytes: int = 0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class MultiSummary:
    """What a multi-camera run did. Durations in seconds, memory in bytes."""

    cameras: list[CameraSummary] = field(default_factory=list)
    frames_processed: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (frames processed, RSS bytes)
    stop_reason: str = ""

    def camera(self, name: str) -> CameraSummary:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)

    def rss_slope(self, warmup_frames: int = WARMUP_FRAMES) -> float | None:
        """Least-squares RSS growth in bytes per frame (all cameras) after warm-up."""
        points = [(f, r) for f, r in self.rss_samples if f >= warmup_frames]
        if len(points) < 3:
            return None
        return rss_slope(np.array([p[0] for p in points]), np.array([p[1] for p in points]))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rss_samples"] = [list(s) for s in self.rss_samples]
        data["rss_slope_bytes_per_frame"] = self.rss_slope()
        return data

    def format(self) -> str:
        mb = 2**20
        lines = [f"cameras: {len(self.cameras)}, {self.frames_processed} frames in {self.elapsed_s:.1f} s, "
                 f"{self.fps:.1f} fps ({self.stop_reason})",
                 "  camera           state    fps  share  processed  dropped  errors  stalls  reconnects"]
        for c in self.cameras:
            lines.append(f"  {c.name:<16} {c.state:<7} {c.fps:5.1f} {c.share * 100:5.1f}% {c.frames_processed:10d} "
                         f"{c.frames_dropped:8d} {c.read_errors:7d} {c.stalls:7d} {c.reconnects:11d}")
            if c.error:
                lines.append(f"    {c.name}: {c.error}")
        lines.append(f"memory: RSS {self.rss_start / mb:.1f} MB at start, {self.rss_end / mb:.1f} MB at end, "
                     f"peak {self.rss_peak / mb:.1f} MB; per camera preallocated "
                     + ", ".join(f"{c.name} {c.preallocated_bytes / mb:.2f} MB" for c in self.cameras))
        return "\n".join(lines)


class MultiLoop:
    """Runs one ``detector`` over the newest frames of several ``cameras``, fairly (see the module).

    ``sinks`` are loop-wide: they get every camera's frames (a systemd notifier, say); each
    camera's own sinks get only its frames. ``max_frames`` counts frames of all cameras together.
    ``stats_every`` (seconds, 0 = never) logs a line per interval through ``log``; ``rss_every``
    (frames, 0 = never) samples RSS.
    """

    def __init__(self, detector, cameras: Iterable[Camera], *, sinks: Iterable[Sink] = (),
                 max_frames: int | None = None, duration: float | None = None, stats_every: float = 5.0,
                 rss_every: int = 100, log: Callable[[str], None] | None = None, overlay: bool = True,
                 idle_wait: float = IDLE_WAIT) -> None:
        self.detector = detector
        self.cameras = list(cameras)
        if not self.cameras:
            raise EdgeError("no cameras: give at least one")
        names = [c.name for c in self.cameras]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise EdgeError(f"camera names must be unique: {', '.join(duplicates)} given twice")
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.duration = duration
        self.stats_every = stats_every
        self.rss_every = rss_every
        self.overlay = overlay
        self.idle_wait = float(idle_wait)
        self._log = log or (lambda message: print(f"edge run: {message}", file=sys.stderr, flush=True))
        self._wake = threading.Event()
        for camera in self.cameras:
            camera._attach(detector, self._log, self._wake, self.sinks)
        self._order = list(self.cameras)  # least recently served first
        self.rss = RssSampler(RSS_SAMPLE_CAPACITY * max(1, rss_every), max(1, rss_every), ring=True)
        self._labels = list(detector.labels)
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        self.processed = 0
        self.fps_recent = 0.0
        self.invoke_times = StageTimes(("invoke",))
        self.rss_start = 0
        self._started = 0.0
        self._running = False
        self._clock = time.perf_counter
        self._t_prev = self._last_stats = self._fps_t0 = self._run_t0 = 0.0
        self._fps_n0 = 0
        self.sink_error: SinkError | None = None

    # ---- control ------------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Finish the current frame and return (thread- and signal-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_event.set()
        self._wake.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM/SIGHUP -> :meth:`stop` (a second SIGINT interrupts at once); returns a restorer."""
        previous = {}

        def handler(signum, _frame):
            name = signal.Signals(signum).name
            if self._stop_event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._log(f"{name}: finishing the current frame")
            self.stop(name)

        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def presize(self) -> None:
        """Every camera's frame-sized buffers, before the first frame where the sources know their size."""
        first = None
        for camera in self.cameras:
            camera.presize()
            first = first or camera.source.frame_shape
        if first:
            self.detector.buffer.presize(first)

    # ---- live numbers -------------------------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        """Per camera: ``{name: {frames_read, frames_dropped, ..., state, fps, frames_processed}}``."""
        now = time.monotonic()
        return {camera.name: camera.stats(now) for camera in self.cameras}

    def cameras_up(self) -> int:
        return sum(1 for camera in self.cameras if camera.state == UP)

    def live_stats(self) -> dict:
        """Loop-wide numbers for sinks (the preview page, the systemd status line)."""
        invoke = self.invoke_times.percentiles("invoke")
        return {
            "frames_processed": self.processed,
            "fps": round(self.fps_recent, 2),
            "cameras": len(self.cameras),
            "cameras_up": self.cameras_up(),
            "invoke_ms_p50": round(invoke["p50"] * 1e3, 2),
            "rss_mb": round(rss_bytes() / 2**20, 1),
            "rss_start_mb": round(self.rss_start / 2**20, 1),
            "elapsed_s": round(time.monotonic() - self._started, 1) if self._started else 0.0,
            "running": self._running,
            "per_camera": self.stats(),
        }

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> MultiSummary:
        self._begin()
        try:
            while not self._should_stop():
                camera, frame = self._next_frame()
                if frame is None:
                    self._idle()
                    continue
                try:
                    processed = self._handle(camera, frame)
                finally:
                    camera.capture.release(frame)
                if processed:
                    self._after_frame(camera)
                self._t_prev = self._clock()
        finally:
            elapsed = self._clock() - self._run_t0  # the run, not the stopping of captures and sinks
            self._finish()
        return self._summary(elapsed)

    def _lifecycle(self) -> list[tuple[Sink, Callable[[], dict]]]:
        """Every distinct sink once (a shared one behind :class:`CameraSink` wrappers too), with the
        stats it is started with: its camera's for a camera's own sink, the loop's otherwise."""
        seen, out = set(), []
        for camera in self.cameras:
            for sink in camera.sinks:
                target = getattr(sink, "inner", sink)
                if id(target) not in seen:
                    seen.add(id(target))
                    stats = self.live_stats if target is not sink else camera.stats
                    out.append((target, stats))
        for sink in self.sinks:
            target = getattr(sink, "inner", sink)
            if id(target) not in seen:
                seen.add(id(target))
                out.append((target, self.live_stats))
        return out

    def _begin(self) -> None:
        self.presize()
        for sink, stats in self._lifecycle():
            sink.start(stats)
        self.rss_start = rss_bytes()
        self._started = time.monotonic()
        self._running = True
        self._run_t0 = self._t_prev = self._last_stats = self._fps_t0 = self._clock()
        for camera in self.cameras:
            camera.capture.start()

    def _should_stop(self) -> bool:
        if self._stop_event.is_set():
            return True
        if self.max_frames is not None and self.processed >= self.max_frames:
            self.stop("max-frames")
        elif self.duration is not None and self._clock() - self._run_t0 >= self.duration:
            self.stop("duration")
        return self._stop_event.is_set()

    def _next_frame(self) -> tuple[Camera | None, Frame | None]:
        """The newest frame of the least recently served camera that has one; else wait a little."""
        self._wake.clear()  # before polling: a frame published after a poll sets it again
        order = self._order
        ended = None
        for i, camera in enumerate(order):
            frame = camera.capture.poll()
            if frame is not None:
                order.append(order.pop(i))
                return camera, frame
            if camera.capture.ended:
                ended = ended or []
                ended.append(camera)
        if ended:
            for camera in ended:
                self._retire(camera)
            return None, None
        self._wake.wait(self.idle_wait)
        return None, None

    def _retire(self, camera: Camera) -> None:
        """A camera whose source ended or gave up leaves the rotation; the others go on."""
        self._order.remove(camera)
        error = camera.capture.error
        camera.state = FAILED if error is not None else ENDED
        camera.fps_recent = 0.0
        self._log(f"camera {camera.name}: " + (f"source failed ({error}); the other cameras go on" if error
                                               else "end of source"))
        if not self._order:
            failed = all(c.state == FAILED for c in self.cameras)
            self.stop("source error" if failed else "end of source")

    def _idle(self) -> None:
        now = self._clock()
        self._update_rates(now)
        if self.stats_every and now - self._last_stats >= self.stats_every:
            self._last_stats = now
            self._log(self._stats_line(waiting=True))

    def _handle(self, camera: Camera, frame: Frame) -> bool:
        """One frame of ``camera`` through the detector and its sinks; False when it was not processed."""
        sinks = camera._all_sinks
        if frame.error is not None:  # an input the source skipped (already counted and logged)
            try:
                for sink in sinks:
                    sink.skipped(frame)
            except SinkError as exc:
                self._sink_failed(exc)
            return False
        try:
            detections = run_frame(self.detector, frame, camera.times, self._t_prev)
        except BadFrameError as exc:
            camera.counters.add("bad_frames")
            camera._bad_logged += 1
            if camera._bad_logged <= 3 or camera._bad_logged % 100 == 0:
                self._log(f"camera {camera.name}: frame {frame.seq}: skipped ({exc}); "
                          f"{camera.counters.bad_frames} bad so far")
            return False
        self.invoke_times.record("invoke", camera.times.last("invoke"))
        events = ()
        if camera.events is not None:
            t = self._clock()
            events = camera.events.update(frame.image, frame.seq, frame.stamp, detections)
            camera.times.record("events", self._clock() - t)
        t0 = self._clock()
        annotated = None
        if camera.annotator is not None and camera.wants_annotation():
            status = (f"{camera.name}  {camera.fps_recent:.1f} fps  {detections.count} objects"
                      if self.overlay else None)
            annotated = camera.annotator.draw(frame.image, detections, status)
        try:
            for sink in sinks:
                sink.write(frame, detections, annotated)
                if events:
                    sink.events(frame, events)
        except SinkError as exc:
            self._sink_failed(exc)
        camera.times.record("sinks", self._clock() - t0)
        camera.detections_total += detections.count
        counts, last = camera._label_counts, len(camera._label_counts) - 1
        for cid in detections.class_ids:
            counts[cid if 0 <= cid < last else last] += 1
        return True

    def _sink_failed(self, exc: SinkError) -> None:
        self.sink_error = exc
        self._log(str(exc))
        self.stop("sink error")

    def _after_frame(self, camera: Camera) -> None:
        camera.processed += 1
        camera.last_frame_at = time.monotonic()
        camera.state = UP
        self.processed += 1
        if self.rss_every and self.processed % self.rss_every == 0:
            self.rss.sample(self.processed)
        now = self._clock()
        self._update_rates(now)
        if self.stats_every and now - self._last_stats >= self.stats_every:
            self._last_stats = now
            self._log(self._stats_line())

    def _update_rates(self, now: float) -> None:
        """Recent fps of the loop and of every camera, once a second; a camera silent for longer
        than its stall timeout is down."""
        elapsed = now - self._fps_t0
        if elapsed < 1.0:
            return
        self.fps_recent = (self.processed - self._fps_n0) / elapsed
        self._fps_t0, self._fps_n0 = now, self.processed
        mono = time.monotonic()
        for camera in self.cameras:
            camera.fps_recent = (camera.processed - camera._fps_n0) / elapsed
            camera._fps_n0 = camera.processed
            if camera.state in (UP, STARTING):  # a frame sets it up again (_after_frame)
                if mono - (camera.last_frame_at or self._started) > camera.capture.stall_timeout:
                    camera.state = DOWN

    def _finish(self) -> None:
        self._running = False
        for camera in self.cameras:  # all at once, so N captures stuck in reads cost one join timeout, not N
            camera.capture.request_stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for camera in self.cameras:
            camera.capture.stop(timeout=max(0.05, deadline - time.monotonic()))
        errors = []
        for sink, _stats in self._lifecycle():
            try:
                sink.close()
            except Exception as exc:  # close every sink even if one fails
                errors.append(exc)
        if errors:
            raise errors[0]

    def reports(self) -> list[str]:
        """Each distinct sink's line for the user after the run."""
        lines = []
        for sink, _stats in self._lifecycle():
            line = sink.report()
            if line:
                lines.append(line)
        return lines

    def _stats_line(self, waiting: bool = False) -> str:
        invoke = self.invoke_times.percentiles("invoke")
        parts = []
        for camera in self.cameras:
            if camera.state == UP:
                parts.append(f"{camera.name} {camera.fps_recent:.1f} fps" +
                             (f" ({camera.counters.frames_dropped} dropped)" if camera.counters.frames_dropped else ""))
            else:
                c = camera.counters
                parts.append(f"{camera.name} {camera.state} ({c.read_errors} errors, {c.stalls} stalls, "
                             f"{c.reconnects} reconnects)")
        wait = " (waiting for frames)" if waiting else ""
        return (f"{self.processed} frames, {self.fps_recent:.1f} fps, {self.cameras_up()}/{len(self.cameras)} "
                f"cameras up: {'; '.join(parts)}; invoke p50 {invoke['p50'] * 1e3:.1f} ms, "
                f"RSS {rss_bytes() / 2**20:.1f} MB{wait}")

    def _summary(self, elapsed: float) -> MultiSummary:
        cameras = []
        total = max(1, self.processed)
        for camera in self.cameras:
            c = camera.counters
            by_label = {}
            for i, count in enumerate(camera._label_counts):
                if count:
                    name = self._labels[i] if i < len(self._labels) else "other"
                    by_label[name] = by_label.get(name, 0) + int(count)
            error = camera.capture.error
            cameras.append(CameraSummary(
                name=camera.name, source=camera.source.spec, state=camera.state,
                frames_read=c.frames_read, frames_processed=camera.processed, frames_dropped=c.frames_dropped,
                bad_frames=c.bad_frames, read_errors=c.read_errors, reconnects=c.reconnects, stalls=c.stalls,
                fps=camera.processed / elapsed if elapsed > 0 else 0.0, share=camera.processed / total,
                detections=camera.detections_total, detections_by_label=by_label,
                preallocated_bytes=camera.preallocated_bytes, stages=camera.times.summary(),
                error=str(error) if error is not None else None))
        return MultiSummary(
            cameras=cameras, frames_processed=self.processed, elapsed_s=elapsed,
            fps=self.processed / elapsed if elapsed > 0 else 0.0, rss_start=self.rss_start, rss_end=rss_bytes(),
            rss_peak=peak_rss_bytes(), rss_samples=[(int(f), int(r)) for f, r in zip(self.rss.frames, self.rss.rss)],
            stop_reason=self._stop_reason or "stopped")


# ---- cameras that are not up at start ------------------------------------------------------------


class WaitingSource(Source):
    """A camera or stream that was not up at start, opened later by its capture thread.

    Its first read raises :class:`~edge.live.sources.SourceUnavailable`; the capture then reopens it
    with its reconnect backoff (a line per try), as it would a camera that went away, while the
    other cameras run. Once open it reads through the real source; ``fps`` and ``frame_shape`` are
    known from then on (so this camera's ring is sized at its first frame rather than before).
    """

    live = True
    reconnectable = True

    def __init__(self, spec: str, error: BaseException, **options) -> None:
        super().__init__(spec)
        self._options = options
        self.stall_timeout = float(options.get("stall_timeout", DEFAULT_STALL_TIMEOUT))
        self.inner: Source | None = None
        self.error = error

    def _open(self) -> None:
        if self.inner is None:
            self.inner = open_source(self.spec, **self._options)  # SourceUnavailable while it is not up
        else:
            self.inner._open()
        self.fps, self.frame_shape = self.inner.fps, self.inner.frame_shape

    def _read(self):
        if self.inner is None:
            raise SourceUnavailable(f"not up yet ({self.error})")
        frame = self.inner._read()  # the inner source's hook: frames are counted once, here
        self.frame_name = self.inner.frame_name
        return frame

    def _release(self) -> None:
        if self.inner is not None:
            self.inner._release()

    def describe(self) -> str:
        return self.inner.describe() if self.inner is not None else f"{self.spec} (not up yet)"


def open_camera_source(spec: str, *, wait: bool = False, log: Callable[[str], None] | None = None,
                       **options) -> Source:
    """:func:`~edge.live.sources.open_source` for one camera of several: with ``wait``, a camera or
    stream that is not up yet becomes a :class:`WaitingSource` (the others start; it joins when it
    comes up) instead of an error. Other errors (a bad spec, a missing file) are raised at once."""
    try:
        return open_source(spec, **options)
    except SourceUnavailable as exc:
        if not wait:
            raise
        if log is not None:
            log(f"source {spec}: not up yet ({exc}); the other cameras start, this one joins when it comes up")
        return WaitingSource(spec, exc, **options)


# ---- the cameras file (``edge run --config``) -----------------------------------------------------

_CAMERA_KEYS = ("name", "source", "loop", "realtime", "stall_timeout", "zones")


@dataclass(frozen=True)
class CameraSpec:
    """One camera of a cameras file: ``source`` as ``--source`` takes it, the options that go with it,
    and an optional zones file (relative paths are taken from the cameras file's folder)."""

    name: str
    source: str
    loop: bool = False
    realtime: bool = False
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    zones: Path | None = None


def parse_cameras_config(data, where: str = "cameras config", base: Path | None = None) -> list[CameraSpec]:
    """``{"cameras": [{"name", "source", "loop"?, "realtime"?, "stall_timeout"?, "zones"?}, ...]}``."""
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise EdgeError(f"{where}: expected {{\"cameras\": [{{\"name\": ..., \"source\": ...}}, ...]}}")
    unknown = sorted(set(data) - {"cameras"})
    if unknown:
        raise EdgeError(f"{where}: unknown key {unknown[0]!r} (only \"cameras\")")
    specs, names = [], set()
    for i, item in enumerate(data["cameras"]):
        at = f"{where}: camera {i + 1}"
        if not isinstance(item, dict):
            raise EdgeError(f"{at}: expected an object with \"name\" and \"source\"")
        bad = sorted(set(item) - set(_CAMERA_KEYS))
        if bad:
            raise EdgeError(f"{at}: unknown key {bad[0]!r} (allowed: {', '.join(_CAMERA_KEYS)})")
        name, source = item.get("name"), item.get("source")
        if not isinstance(name, str) or not _NAME.match(name):
            raise EdgeError(f"{at}: \"name\" must be 1-64 letters, digits, '.', '_' or '-' (it names files)")
        if name in names:
            raise EdgeError(f"{at}: camera name {name!r} is used twice")
        names.add(name)
        if not isinstance(source, (str, int)) or isinstance(source, bool) or str(source).strip() == "":
            raise EdgeError(f"{at} ({name}): \"source\" must be a non-empty string (as --source takes it)")
        for key in ("loop", "realtime"):
            if key in item and not isinstance(item[key], bool):
                raise EdgeError(f"{at} ({name}): \"{key}\" must be true or false")
        stall = item.get("stall_timeout", DEFAULT_STALL_TIMEOUT)
        if isinstance(stall, bool) or not isinstance(stall, (int, float)) or not stall > 0:
            raise EdgeError(f"{at} ({name}): \"stall_timeout\" must be a number of seconds above 0")
        zones = item.get("zones")
        if zones is not None:
            if not isinstance(zones, str) or not zones:
                raise EdgeError(f"{at} ({name}): \"zones\" must be a file name")
            zones = Path(zones)
            if base is not None and not zones.is_absolute():
                zones = base / zones
        specs.append(CameraSpec(name, str(source), bool(item.get("loop", False)), bool(item.get("realtime", False)),
                                float(stall), zones))
    return specs


def load_cameras_config(path: str | Path) -> list[CameraSpec]:
    """Read a cameras file: ``.json``, or ``.yaml``/``.yml`` when PyYAML is installed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeError(f"--config {path}: cannot read it ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgeError(f"--config {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise EdgeError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), "
                            "or write the file as .json") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise EdgeError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        raise EdgeError(f"--config {path}: must be a .json file (or .yaml/.yml with PyYAML installed)")
    return parse_cameras_config(data, f"--config {path}", base=path.parent)


def build_cameras(specs: list[CameraSpec], detector, *, json_target: str | Path | None = None,
                  clips: str | Path | None = None, clip_options: dict | None = None, track: bool = False,
                  high_score: float = 0.5, low_score: float = 0.1, wait: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[list[Camera], list[Sink]]:
    """The cameras of a cameras file, ready for :class:`MultiLoop`, and the shared sinks made.

    Each camera gets its source (a :class:`WaitingSource` with ``wait`` when it is not up yet), an
    :class:`~edge.events.stage.EventStage` when it has zones or ``track`` is set, a
    :class:`~edge.live.clips.ClipSink` in ``clips`` named after it (``clip_options``: its keyword
    arguments: pre_roll, post_roll, max_clips, ...), and a :class:`CameraSink` on one shared
    :class:`CameraJsonLinesSink` for ``json_target``. On an error everything made so far is closed.
    """
    from edge.events.config import load_config
    from edge.events.stage import EventStage

    log = log or (lambda message: None)
    cameras: list[Camera] = []
    shared: list[Sink] = []
    try:
        json_sink = CameraJsonLinesSink(json_target) if json_target else None
        if json_sink is not None:
            shared.append(json_sink)
        for spec in specs:
            config = load_config(spec.zones, labels=detector.labels) if spec.zones is not None else None
            events = None
            if track or config is not None:
                events = EventStage(detector.labels, high_score=high_score, low_score=low_score, config=config,
                                    detection_capacity=detector.detections.capacity)
            source = open_camera_source(spec.source, wait=wait, log=lambda m, n=spec.name: log(f"camera {n}: {m}"),
                                        loop=spec.loop, realtime=spec.realtime, stall_timeout=spec.stall_timeout)
            camera = Camera(spec.name, source, events=events)
            cameras.append(camera)
            if clips is not None and config is not None:
                from edge.live.clips import ClipSink

                camera.sinks.append(ClipSink(clips, prefix=spec.name, fps=source.fps, log=log,
                                             **(clip_options or {})))
            if json_sink is not None:
                camera.sinks.append(CameraSink(json_sink, spec.name))
            live = " (live: stale frames are dropped)" if source.live else ""
            zones = f", {len(config.regions)} zones/lines from {spec.zones}" if config is not None else ""
            log(f"camera {spec.name}: {source.describe()}{live}{zones}")
    except BaseException:
        for camera in cameras:
            for sink in camera.sinks:
                if not isinstance(sink, CameraSink):
                    sink.close()
            camera.source.close()
        for sink in shared:
            sink.close()
        raise
    return cameras, shared
