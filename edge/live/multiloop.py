"""Several cameras in one process sharing one detector (or a few): a fair, latest-frame-wins scheduler.

:class:`MultiLoop` runs the detector on one frame at a time over its
:class:`~edge.live.cameras.Camera` s (each with its own source, capture thread, ring and sinks)::

    cameras = [Camera("door", open_source("rtsp://door/stream")), Camera("yard", open_source("1"))]
    summary = MultiLoop(Detector(model), cameras, duration=60).run()

Several detectors (``MultiLoop([Detector(model, num_threads=1) for _ in range(2)], cameras)``, as
``edge run --config --detectors 2``) take turns on threads of their own (the first on the caller's). A camera a detector is on is skipped by the others, so a camera's frames go through one
detector at a time and in order. Sinks several cameras reach are called under a lock each
(:class:`~edge.live.cameras.SerializedSink`); a camera's own sinks need none.

The scheduler
-------------
Each turn takes the newest ready frame of the camera served least recently among the cameras that
have one: the cameras sit in a queue in the order they were last served, the scheduler polls them
from the front and serves the first with a ready frame, which then goes to the back. With the
detector saturated every camera that keeps a frame ready is served once every N turns, so each of
N cameras gets 1/N of the invokes; a camera with fewer frames than its share gives its turns to
the others. Live cameras drop what the detector did not take in time (latest frame wins, counted in
``frames_dropped``); files and synthetic sources wait for their turn, so none of their frames is lost.

Polling never blocks: :meth:`~edge.live.cameras.CameraCapture.poll` returns at once. When no
camera has a frame the scheduler sleeps on one event that every capture thread sets when it
publishes a frame (or ends), at most ``idle_wait`` seconds, and polls again. So a camera whose
source raised, stalled, ended or gave up never delays the others by more than a lock acquisition
per turn; its capture thread reconnects on its own, and its stalls are detected by the polls (see
:meth:`~edge.live.cameras.CameraCapture.poll`). The run ends at ``max_frames`` (all cameras
together), ``duration``, :meth:`MultiLoop.stop`, or when every camera's source has ended.

What each camera holds: :mod:`edge.live.cameras`; the summary: :mod:`edge.live.multi_summary`; the
cameras file (``edge run --config``) and the cameras it builds: :mod:`edge.live.cameras_config`.
Per-camera outputs are handles in each camera's sinks, given only its frames: MQTT
(:mod:`edge.events.mqtt_cameras`), preview (:mod:`edge.live.preview_cameras`), metrics (``CameraMetrics``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Iterable, Sequence

from edge.detector.stages import StageTimes
from edge.detector.step import Frame, run_frame
from edge.errors import BadFrameError, EdgeError
from edge.live.cameras import DOWN, ENDED, FAILED, STARTING, UP, Camera, distinct_sinks, serialize_shared_sinks
from edge.live.multi_summary import MultiSummary, live_numbers, stats_line, summarize
from edge.live.sinks import Sink, SinkError
from edge.live.turns import require_one_model
from edge.memory import RssSampler, rss_bytes
from edge.signals import finish_frame_on_stop_signals

STOP_TIMEOUT = 2.0  # seconds, all cameras together, for capture threads to return at the end
IDLE_WAIT = 0.05  # seconds the scheduler sleeps when no camera has a frame (a publish wakes it at once)
RSS_SAMPLE_CAPACITY = 4096
WORKER_JOIN_TIMEOUT = 30.0  # seconds for the other detectors to finish their frame at the end


class MultiLoop:
    """Runs ``detector`` (one, or a sequence of detectors of one model) over the newest frames of
    several ``cameras``, fairly (see the module).

    ``sinks`` are loop-wide: they get every camera's frames (a systemd notifier, say); each
    camera's own sinks get only its frames. ``max_frames`` counts frames of all cameras together.
    ``stats_every`` (seconds, 0 = never) logs a line per interval through ``log``; ``rss_every``
    (frames, 0 = never) samples RSS.
    """

    def __init__(self, detector, cameras: Iterable[Camera], *, sinks: Iterable[Sink] = (),
                 max_frames: int | None = None, duration: float | None = None, stats_every: float = 5.0,
                 rss_every: int = 100, log: Callable[[str], None] | None = None, overlay: bool = True,
                 idle_wait: float = IDLE_WAIT) -> None:
        self.detectors = list(detector) if isinstance(detector, Sequence) else [detector]
        if not self.detectors:
            raise EdgeError("no detector: give at least one")
        self.detector = self.detectors[0]
        self.cameras = list(cameras)
        if not self.cameras:
            raise EdgeError("no cameras: give at least one")
        names = [c.name for c in self.cameras]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise EdgeError(f"camera names must be unique: {', '.join(duplicates)} given twice")
        if len(self.detectors) > len(self.cameras):
            raise EdgeError(f"{len(self.detectors)} detectors for {len(self.cameras)} camera"
                            f"{'s' if len(self.cameras) != 1 else ''}: a camera's frames go through one detector "
                            f"at a time, so more detectors than cameras would only wait")
        require_one_model(self.detectors)
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
            camera._attach(self.detector, self._log, self._wake, self.sinks)
        if len(self.detectors) > 1:
            serialize_shared_sinks(self.cameras)
        self._order = list(self.cameras)  # least recently served first
        self._busy: set[int] = set()  # ids of the cameras a detector is on now
        self._in_flight = 0  # frames claimed and not yet done
        self._lock = threading.Lock()  # the scheduler's state, the loop's counters and stage times
        self.detector_frames = [0] * len(self.detectors)  # frames each detector processed
        self._worker_error: BaseException | None = None
        self.rss = RssSampler(RSS_SAMPLE_CAPACITY * max(1, rss_every), max(1, rss_every), ring=True)
        self._labels = list(self.detector.labels)
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        self.processed = 0
        self.fps_recent = 0.0
        self.invoke_times = StageTimes(("invoke",))
        self.rss_start = 0
        self._started = 0.0
        self._running = False
        self._clock = time.perf_counter
        self._last_stats = self._fps_t0 = self._run_t0 = 0.0
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
        return finish_frame_on_stop_signals(self.stop, self._stop_event.is_set, self._log)

    def presize(self) -> None:
        """Every camera's frame-sized buffers, before the first frame where the sources know their size."""
        first = None
        for camera in self.cameras:
            camera.presize()
            first = first or camera.source.frame_shape
        if first:
            for detector in self.detectors:
                detector.buffer.presize(first)

    # ---- live numbers -------------------------------------------------------------------------

    def stats(self) -> dict[str, dict]:
        """Per camera: ``{name: {frames_read, frames_dropped, ..., state, fps, frames_processed}}``."""
        now = time.monotonic()
        return {camera.name: camera.stats(now) for camera in self.cameras}

    def cameras_up(self) -> int:
        return sum(1 for camera in self.cameras if camera.state == UP)

    def live_stats(self) -> dict:
        """Loop-wide numbers for sinks (the preview page, the systemd status line)."""
        return live_numbers(self)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> MultiSummary:
        self._begin()
        workers = [threading.Thread(target=self._serve_guarded, args=(index,), name=f"edge-detector-{index}",
                                    daemon=True) for index in range(1, len(self.detectors))]
        try:
            for worker in workers:
                worker.start()
            self._serve(0)  # on the caller's thread: a stop signal finishes its frame
        finally:
            self.stop(self._stop_reason or "stopped")
            self._join(workers)
            elapsed = self._clock() - self._run_t0  # the run, not the stopping of captures and sinks
            self._finish()
        if self._worker_error is not None:
            raise self._worker_error
        return summarize(self, elapsed)

    def _serve(self, index: int) -> None:
        """Detector ``index`` takes turns until the loop stops."""
        detector = self.detectors[index]
        waited_since = self._clock()
        while True:
            with self._lock:
                if self._should_stop():
                    return
                camera, frame = self._claim()
            if frame is None:
                self._wake.wait(self.idle_wait)
                with self._lock:
                    self._idle()
                continue
            processed = False
            try:
                processed = self._handle(detector, camera, frame, waited_since)
            finally:
                camera.capture.release(frame)
                with self._lock:
                    self._busy.discard(id(camera))
                    self._in_flight -= 1
                    if processed:
                        self.detector_frames[index] += 1
                        self._after_frame(camera)
                self._wake.set()  # the camera is free again: another detector may take its next frame
            waited_since = self._clock()

    def _serve_guarded(self, index: int) -> None:
        """:meth:`_serve` on a thread of its own: what it raises stops the loop and is raised by :meth:`run`."""
        try:
            self._serve(index)
        except BaseException as exc:
            if self._worker_error is None:
                self._worker_error = exc
            self.stop("detector error")

    def _join(self, workers: list[threading.Thread]) -> None:
        deadline = time.monotonic() + WORKER_JOIN_TIMEOUT
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self._log(f"{worker.name} is still on its frame after {WORKER_JOIN_TIMEOUT:g} s; closing anyway")

    def _lifecycle(self) -> list[tuple[Sink, Callable[[], dict]]]:
        return distinct_sinks(self.cameras, self.sinks, self.live_stats)

    def _begin(self) -> None:
        self.presize()
        for sink, stats in self._lifecycle():
            sink.start(stats)
        self.rss_start = rss_bytes()
        self._started = time.monotonic()
        self._running = True
        self._run_t0 = self._last_stats = self._fps_t0 = self._clock()
        for camera in self.cameras:
            camera.capture.start()

    def _should_stop(self) -> bool:
        if self._stop_event.is_set():
            return True
        if self.max_frames is not None and self.processed + self._in_flight >= self.max_frames:
            self.stop("max-frames")
        elif self.duration is not None and self._clock() - self._run_t0 >= self.duration:
            self.stop("duration")
        return self._stop_event.is_set()

    def _claim(self) -> tuple[Camera | None, Frame | None]:
        """The newest frame of the least recently served camera that has one and no detector on it
        (under the lock), or ``(None, None)``: then wait a little."""
        self._wake.clear()  # before polling: a frame published (or a camera freed) after a poll sets it again
        order, busy = self._order, self._busy
        ended = None
        for i, camera in enumerate(order):
            if id(camera) in busy:
                continue
            frame = camera.capture.poll()
            if frame is not None:
                order.append(order.pop(i))
                busy.add(id(camera))
                self._in_flight += 1
                return camera, frame
            if camera.capture.ended:
                ended = ended or []
                ended.append(camera)
        if ended:
            for camera in ended:
                self._retire(camera)
            self._wake.set()  # poll again at once: the others may have frames
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

    def _handle(self, detector, camera: Camera, frame: Frame, waited_since: float) -> bool:
        """One frame of ``camera`` through ``detector`` and its sinks; False when it was not processed."""
        sinks = camera._all_sinks
        if frame.error is not None:  # an input the source skipped (already counted and logged)
            try:
                for sink in sinks:
                    sink.skipped(frame)
            except SinkError as exc:
                self._sink_failed(exc)
            return False
        try:
            detections = run_frame(detector, frame, camera.times, waited_since)
        except BadFrameError as exc:
            camera.counters.add("bad_frames")
            camera._bad_logged += 1
            if camera._bad_logged <= 3 or camera._bad_logged % 100 == 0:
                self._log(f"camera {camera.name}: frame {frame.seq}: skipped ({exc}); "
                          f"{camera.counters.bad_frames} bad so far")
            return False
        with self._lock:
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
        if self.sink_error is None:
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
        return stats_line(self, waiting)
