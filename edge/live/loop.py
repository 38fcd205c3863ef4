"""The live loop: newest frame -> Detector -> sinks, with stats, memory samples and a clean stop.

Usable without the CLI::

    loop = LiveLoop(Detector(model), open_source("synthetic"), [JsonLinesSink("-")], max_frames=300)
    summary = loop.run()

Capture overlaps with inference (:mod:`edge.live.capture` reads and resizes the next frame on its own
thread while ``invoke()`` runs), except where there is nothing to overlap with: a source that is not
live on one usable core is read on the loop's thread (:mod:`edge.live.inline_capture`). Each frame goes through :func:`~edge.detector.step.run_frame`, the
step ``edge bench`` measures too. Per frame the loop allocates nothing frame-sized: the capture ring,
the input tensor, the detections and the annotated copy are all reused, and sized before the first
frame where the source knows its frame size. :meth:`LiveLoop.stop` (and SIGINT / SIGTERM / SIGHUP,
see :meth:`LiveLoop.install_signal_handlers`) finishes the current frame, closes the sinks and
returns the summary.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from edge.detector.stages import STAGES, StageTimes
from edge.detector.step import Frame, run_frame
from edge.detector.threads import Layout, ThreadTuner
from edge.errors import BadFrameError, EdgeError
from edge.live.annotate import Annotator
from edge.live.capture import Capture
from edge.live.inline_capture import CAPTURE_AUTO, choose_capture
from edge.live.sinks import Sink, SinkError
from edge.live.sources import Source
from edge.live.turns import FRAME_STAGES, FrameTurns, ring_slots
from edge.memory import RssSampler, peak_rss_bytes, rss_bytes, samples_slope
from edge.signals import finish_frame_on_stop_signals

RSS_SAMPLE_CAPACITY = 4096  # samples kept (a ring): 100-frame steps cover 400k frames
WARMUP_FRAMES = 200  # RSS drift is measured after this many frames (allocators and caches settle)


@dataclass
class RunSummary:
    """What a run did. Durations in seconds, memory in bytes."""

    frames_read: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    bad_frames: int = 0
    read_errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    detections: int = 0
    detections_by_label: dict[str, int] = field(default_factory=dict)
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (frames processed, RSS bytes)
    stop_reason: str = ""

    def rss_drift(self, warmup_frames: int = WARMUP_FRAMES) -> int | None:
        """RSS change (bytes) from the first sample at or after ``warmup_frames`` to the end."""
        after = [rss for frames, rss in self.rss_samples if frames >= warmup_frames]
        if len(after) < 2:
            return None
        return after[-1] - after[0]

    def rss_slope(self, warmup_frames: int = WARMUP_FRAMES) -> float | None:
        """Least-squares RSS growth in bytes per frame after warm-up."""
        return samples_slope(self.rss_samples, warmup_frames)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rss_samples"] = [list(s) for s in self.rss_samples]
        data["rss_drift_after_warmup"] = self.rss_drift()
        data["rss_slope_bytes_per_frame"] = self.rss_slope()
        return data

    def format(self) -> str:
        mb = 1024 * 1024
        lines = [
            f"frames: {self.frames_read} read, {self.frames_processed} processed, {self.frames_dropped} dropped"
            + (f", {self.bad_frames} bad" if self.bad_frames else ""),
            f"time:   {self.elapsed_s:.1f} s, {self.fps:.1f} fps ({self.stop_reason})",
        ]
        if self.read_errors or self.reconnects or self.stalls:
            lines.append(f"faults: {self.read_errors} read errors, {self.stalls} stalls, {self.reconnects} reconnects")
        labels = ", ".join(f"{k} {v}" for k, v in sorted(self.detections_by_label.items(), key=lambda kv: -kv[1]))
        lines.append(f"detections: {self.detections}" + (f" ({labels})" if labels else ""))
        lines.append("latency ms      p50     p90     p99     max")
        for stage, p in self.stages.items():
            lines.append(f"  {stage:<12} {p['p50'] * 1e3:7.2f} {p['p90'] * 1e3:7.2f} {p['p99'] * 1e3:7.2f} "
                         f"{p['max'] * 1e3:7.2f}")
        drift = self.rss_drift()
        per_frame = ""
        if drift is not None:
            after = [f for f, _ in self.rss_samples if f >= WARMUP_FRAMES]
            frames = max(1, after[-1] - after[0])
            per_frame = f", drift after {WARMUP_FRAMES} frames {drift / mb:+.2f} MB ({drift / frames:+.1f} B/frame)"
        lines.append(f"memory: RSS {self.rss_start / mb:.1f} MB at start, {self.rss_end / mb:.1f} MB at end, "
                     f"peak {self.rss_peak / mb:.1f} MB{per_frame}")
        return "\n".join(lines)


class LiveLoop:
    """Runs ``detector`` on the newest frame of ``source`` and hands results to ``sinks``.

    ``max_frames`` stops after that many processed frames, ``duration`` after that many seconds;
    a finite source ends the run at its end. ``stats_every`` (seconds, 0 = never) prints a stats
    line through ``log``; ``rss_every`` (frames, 0 = never) samples RSS for the drift numbers.
    ``thread_candidates`` (e.g. ``[4, 3]``): interpreter thread counts to measure end to end during
    the first frames (:class:`~edge.detector.threads.ThreadTuner`); the faster one is kept and logged.
    ``events``: an :class:`~edge.events.stage.EventStage` (tracking, zones, lines) run on each frame's
    detections; sinks get the events through :meth:`~edge.live.sinks.Sink.events`.
    ``detector`` may be a sequence of detectors of one model (``edge run --detectors K``): they take
    the frames in turn on threads of their own and the results are handed on in frame order
    (:class:`~edge.live.turns.FrameTurns`); the thread count is then not tuned.
    """

    def __init__(self, detector, source: Source, sinks: Iterable[Sink] = (), *, max_frames: int | None = None,
                 duration: float | None = None, stats_every: float = 5.0, rss_every: int = 100,
                 log: Callable[[str], None] | None = None, overlay: bool = True,
                 thread_candidates: list[int] | None = None, events=None, capture: str = CAPTURE_AUTO) -> None:
        self.detectors = list(detector) if isinstance(detector, (list, tuple)) else [detector]
        self.detector = detector = self.detectors[0]
        self.source = source
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.duration = duration
        self.stats_every = stats_every
        self.rss_every = rss_every
        self.overlay = overlay
        self._log = log or (lambda message: print(f"edge run: {message}", file=sys.stderr, flush=True))
        # The capture also resizes each frame for the model, while the frame is in its core's cache.
        capture_class, self.capture_how = choose_capture(source, capture)
        layouts = [c if isinstance(c, Layout) else Layout(1, int(c)) for c in thread_candidates or ()]
        if capture_class is not Capture:  # several detectors take their frames from a capture thread
            if len(self.detectors) > 1:
                raise EdgeError(f"{len(self.detectors)} detectors take frames in turn from a capture thread: "
                                f"drop --capture inline")
            layouts = [layout for layout in layouts if layout.detectors == 1]
        most = max([len(self.detectors)] + [layout.detectors for layout in layouts])
        options = {"slots": ring_slots(most)} if most > 1 else {}
        self.capture = capture_class(source, log=self._log, prepare=detector.buffer.resize, **options)
        self.counters = self.capture.counters
        self.events = events
        self.times = StageTimes(STAGES + (("events",) if events is not None else ()))
        self.rss = RssSampler(RSS_SAMPLE_CAPACITY * max(1, rss_every), max(1, rss_every), ring=True)
        self.annotator = Annotator()
        self._annotating_sinks = [s for s in self.sinks if s.needs_annotation]
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        self._labels = list(detector.labels)
        self._label_counts = np.zeros(len(self._labels) + 1, np.int64)  # last slot: ids outside labels
        self.processed = 0
        self.detections_total = 0
        self.fps_recent = 0.0
        self.last_invoke_s = 0.0
        self.rss_start = 0
        self._started = 0.0
        self._running = False
        self._clock = time.perf_counter
        self._t_prev = self._last_stats = self._fps_t0 = 0.0
        self._fps_n0 = 0
        self._bad_logged = 0
        self.sink_error: SinkError | None = None  # set when a sink could no longer write
        self._wake = threading.Event()  # the turns' watcher: a stop, or the tuner wants another layout
        self._wanted: Layout | None = None
        self.turns: FrameTurns | None = None
        self.layout = Layout(len(self.detectors), detector.runtime_info.num_threads)
        if len(self.detectors) > 1:
            self.turns = FrameTurns(self.detectors, self.capture, self._hand_on, limit=max_frames)
        self.tuner = (ThreadTuner(self._apply_layout, layouts) if layouts and len(self.detectors) == 1 else None)

    # ---- control ------------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to finish the current frame and return (thread- and signal-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_event.set()
        turns = getattr(self, "turns", None)
        if turns is not None:
            turns.hold()  # the frames in flight are finished and handed on; no new ones
        self._wake.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM/SIGHUP -> :meth:`stop` (a second SIGINT interrupts at once); returns a restorer."""
        return finish_frame_on_stop_signals(self.stop, self._stop_event.is_set, self._log)

    def presize(self) -> None:
        """Allocate the frame-sized buffers now when the source knows its frame size (synthetic,
        most cameras and files after open); otherwise they are sized on the first frame."""
        shape = self.source.frame_shape
        if not shape:
            return
        self.capture.presize(shape)
        for detector in self.detectors:
            detector.buffer.presize(shape)
        if self._annotating_sinks:
            self.annotator.presize(shape)
        if self.events is not None:
            self.events.presize(shape)
        for sink in self.sinks:
            sink.presize(shape)

    # ---- live numbers (read by the preview page from another thread) --------------------------

    def live_stats(self) -> dict:
        invoke = self.times.percentiles("invoke")
        return {
            **self.counters.to_dict(),
            "frames_processed": self.processed,
            "fps": round(self.fps_recent, 2),
            "invoke_ms_p50": round(invoke["p50"] * 1e3, 2),
            "invoke_ms_last": round(self.last_invoke_s * 1e3, 2),
            "rss_mb": round(rss_bytes() / 2**20, 1),
            "rss_start_mb": round(self.rss_start / 2**20, 1),
            "detections": self.detections_total,
            "elapsed_s": round(time.monotonic() - self._started, 1) if self._started else 0.0,
            "running": self._running,
        }

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        self._begin()
        try:
            while not self._should_stop():
                if self.turns is not None:
                    self._run_turns()
                    if self._wanted is not None:  # the tuner's next layout, the turns now stopped
                        layout, self._wanted = self._wanted, None
                        self._switch_to(layout)
                    continue
                frame = self.capture.get(0.25)
                if frame is None:
                    self._idle()
                    continue
                try:
                    processed = self._handle(frame)
                finally:
                    self.capture.release(frame)
                if processed:
                    self._after_frame()
                self._t_prev = self._clock()
        finally:
            self._finish()
        return self._summary(self._clock() - self._run_t0)

    def _run_turns(self) -> None:
        """Several detectors: the workers run the frames; this thread watches for the end."""
        turns = self.turns
        turns.start()
        seen, since = -1, self._clock()
        try:
            while not self._should_stop() and self._wanted is None:
                if turns.error is not None:
                    break
                if turns.ended and not turns.in_flight:
                    self.stop("source error" if self.capture.error else "end of source")
                    break
                self._wake.wait(0.1)
                self._wake.clear()
                now = self._clock()
                if self.processed != seen:
                    seen, since = self.processed, now
                elif self.stats_every and now - since >= self.stats_every and now - self._last_stats >= self.stats_every:
                    self._last_stats = now
                    self._log(self._stats_line(waiting=True))
        finally:
            turns.stop()
        if turns.error is not None:
            raise turns.error

    def _apply_layout(self, layout: Layout) -> None:
        """The tuner's choice of layout: at once between frames on this thread; while several
        detectors run (called from the turns' hand-on), once they have stopped claiming and finished."""
        if layout == self.layout and self._wanted is None:
            return
        if self.turns is not None and self.turns.running:
            self._wanted = layout
            self.turns.hold()
            self._wake.set()
            return
        self._switch_to(layout)

    def _switch_to(self, layout: Layout) -> None:
        """Run ``layout`` from the next frame: the first detector's thread count, and copies of it."""
        first = self.detectors[0]
        self.detectors = [first]  # the copies of the last layout go before any new one is loaded
        self.turns = None
        first.set_threads(layout.threads)
        if layout.detectors > 1:
            shape = self.source.frame_shape
            for _ in range(layout.detectors - 1):
                twin = first.twin(layout.threads)
                if shape:
                    twin.buffer.presize(shape)
                self.detectors.append(twin)
            left = None if self.max_frames is None else max(0, self.max_frames - self.processed)
            self.turns = FrameTurns(self.detectors, self.capture, self._hand_on, limit=left)
        self.layout = layout

    def _hand_on(self, frame: Frame, detections, bad: BadFrameError | None, seconds) -> None:
        """A frame the turns finished, in frame order (their lock held): as :meth:`_handle` goes on."""
        if frame.error is not None:
            self._skipped(frame)
            return
        times = self.times
        for i, stage in enumerate(FRAME_STAGES):
            times.record(stage, seconds[i])
        if bad is not None:
            self._bad_frame(frame, bad)
            return
        if self.sink_error is not None:  # a frame in flight when a sink failed: the run is stopping
            return
        self._deliver(frame, detections)
        self._after_frame()

    def _begin(self) -> None:
        self.presize()
        for sink in self.sinks:
            sink.start(self.live_stats)
        self.rss_start = rss_bytes()
        self._started = time.monotonic()
        self._running = True
        self._run_t0 = self._t_prev = self._last_stats = self._fps_t0 = self._clock()
        self.capture.start()

    def _should_stop(self) -> bool:
        if self._stop_event.is_set():
            return True
        if self.max_frames is not None and self.processed >= self.max_frames:
            self.stop("max-frames")
        elif self.duration is not None and self._clock() - self._run_t0 >= self.duration:
            self.stop("duration")
        return self._stop_event.is_set()

    def _idle(self) -> None:
        """No frame came within the wait: the source ended, or the stats line says we are waiting."""
        if self.capture.ended:
            self.stop("source error" if self.capture.error else "end of source")
            return
        now = self._clock()
        if self.stats_every and now - self._last_stats >= self.stats_every:
            self._last_stats = now
            self._log(self._stats_line(waiting=True))

    def _handle(self, frame: Frame) -> bool:
        """One frame through the detector and the sinks; False when it was not processed."""
        if frame.error is not None:  # an input the source skipped (already counted and logged)
            self._skipped(frame)
            return False
        try:
            detections = run_frame(self.detector, frame, self.times, self._t_prev)
        except BadFrameError as exc:
            self._bad_frame(frame, exc)
            return False
        self._deliver(frame, detections)
        return True

    def _skipped(self, frame: Frame) -> None:
        try:
            for sink in self.sinks:
                sink.skipped(frame)
        except SinkError as exc:
            self.sink_error = exc
            self._log(str(exc))
            self.stop("sink error")

    def _bad_frame(self, frame: Frame, exc: BadFrameError) -> None:
        self.counters.add("bad_frames")
        self._bad_logged += 1
        if self._bad_logged <= 3 or self._bad_logged % 100 == 0:
            self._log(f"frame {frame.seq}: skipped ({exc}); {self.counters.bad_frames} bad so far")

    def _deliver(self, frame: Frame, detections) -> None:
        """Events, annotation and the sinks for one detected frame."""
        events = ()
        if self.events is not None:
            t = self._clock()
            events = self.events.update(frame.image, frame.seq, frame.stamp, detections)
            self.times.record("events", self._clock() - t)
        t0 = self._clock()
        annotated = None
        if self._wants_annotation():
            status = f"{self.fps_recent:.1f} fps  {detections.count} objects" if self.overlay else None
            annotated = self.annotator.draw(frame.image, detections, status)
        try:
            for sink in self.sinks:
                sink.write(frame, detections, annotated)
                if events:
                    sink.events(frame, events)
        except SinkError as exc:
            self.sink_error = exc
            self._log(str(exc))
            self.stop("sink error")
        self.times.record("sinks", self._clock() - t0)
        self._count_detections(detections)

    def _after_frame(self) -> None:
        """Counting, RSS samples, the recent fps and the periodic stats line."""
        self.processed += 1
        self.last_invoke_s = self.times.last("invoke")
        if self.tuner is not None and not self.tuner.done:
            self.tuner.frame_done()
            if self.tuner.done:
                self._log(f"threads auto: {self.tuner.describe()}")
                if self.tuner.chosen.detectors > 1:
                    self.capture_how = f"on a thread of its own, beside {self.tuner.chosen.detectors} detectors"
        if self.rss_every and self.processed % self.rss_every == 0:
            self.rss.sample(self.processed)
        now = self._clock()
        if now - self._fps_t0 >= 1.0:
            self.fps_recent = (self.processed - self._fps_n0) / (now - self._fps_t0)
            self._fps_t0, self._fps_n0 = now, self.processed
        if self.stats_every and now - self._last_stats >= self.stats_every:
            self._last_stats = now
            self._log(self._stats_line())

    def _finish(self) -> None:
        self._running = False
        self.capture.stop()
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # close every sink even if one fails
                errors.append(exc)
        if errors:
            raise errors[0]

    def _wants_annotation(self) -> bool:
        for sink in self._annotating_sinks:
            if sink.wants_frame():
                return True
        return False

    def _count_detections(self, detections) -> None:
        self.detections_total += detections.count
        counts, last = self._label_counts, len(self._label_counts) - 1
        for cid in detections.class_ids:
            counts[cid if 0 <= cid < last else last] += 1

    def _stats_line(self, waiting: bool = False) -> str:
        invoke = self.times.percentiles("invoke")
        wait = " (waiting for frames)" if waiting else ""
        return (f"{self.processed} frames, {self.fps_recent:.1f} fps, invoke p50 {invoke['p50'] * 1e3:.1f} ms, "
                f"dropped {self.counters.frames_dropped}, RSS {rss_bytes() / 2**20:.1f} MB{wait}")

    def _summary(self, elapsed: float) -> RunSummary:
        c = self.counters
        by_label = {}
        for i, count in enumerate(self._label_counts):
            if count:
                name = self._labels[i] if i < len(self._labels) else "other"
                by_label[name] = by_label.get(name, 0) + int(count)
        return RunSummary(
            frames_read=c.frames_read,
            frames_processed=self.processed,
            frames_dropped=c.frames_dropped,
            bad_frames=c.bad_frames,
            read_errors=c.read_errors,
            reconnects=c.reconnects,
            stalls=c.stalls,
            elapsed_s=elapsed,
            fps=self.processed / elapsed if elapsed > 0 else 0.0,
            stages=self.times.summary(),
            rss_start=self.rss_start,
            rss_end=rss_bytes(),
            rss_peak=peak_rss_bytes(),
            detections=self.detections_total,
            detections_by_label=by_label,
            rss_samples=[(int(f), int(r)) for f, r in zip(self.rss.frames, self.rss.rss)],
            stop_reason=self._stop_reason or "stopped",
        )
