"""What a multi-camera run reports: :class:`CameraSummary` per camera, :class:`MultiSummary` in all,
and while it runs: the loop-wide numbers for sinks (:func:`live_numbers`) and the stats line.

:meth:`MultiLoop.run <edge.live.multiloop.MultiLoop.run>` returns a :class:`MultiSummary`: frames,
rates and shares per camera, memory (RSS samples and their drift after warm-up) and the table
``edge run --config`` prints after the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from edge.memory import peak_rss_bytes, rss_bytes, samples_slope

WARMUP_FRAMES = 200  # RSS drift is measured after this many frames (all cameras together)


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
    detector_frames: list[int] = field(default_factory=list)  # frames each detector processed

    def camera(self, name: str) -> CameraSummary:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)

    def rss_slope(self, warmup_frames: int = WARMUP_FRAMES) -> float | None:
        """Least-squares RSS growth in bytes per frame (all cameras) after warm-up."""
        return samples_slope(self.rss_samples, warmup_frames)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rss_samples"] = [list(s) for s in self.rss_samples]
        data["rss_slope_bytes_per_frame"] = self.rss_slope()
        return data

    def format(self) -> str:
        mb = 2**20
        detectors = (f"; {len(self.detector_frames)} detectors: "
                     + ", ".join(f"{n} frames" for n in self.detector_frames)) if len(self.detector_frames) > 1 else ""
        lines = [f"cameras: {len(self.cameras)}, {self.frames_processed} frames in {self.elapsed_s:.1f} s, "
                 f"{self.fps:.1f} fps ({self.stop_reason}){detectors}",
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


def summarize(loop, elapsed: float) -> MultiSummary:
    """The :class:`MultiSummary` of a finished :class:`~edge.live.multiloop.MultiLoop` that ran ``elapsed`` seconds."""
    cameras = []
    total = max(1, loop.processed)
    labels = loop._labels
    for camera in loop.cameras:
        c = camera.counters
        by_label: dict[str, int] = {}
        for i, count in enumerate(camera._label_counts):
            if count:
                name = labels[i] if i < len(labels) else "other"
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
        cameras=cameras, frames_processed=loop.processed, elapsed_s=elapsed,
        fps=loop.processed / elapsed if elapsed > 0 else 0.0, rss_start=loop.rss_start, rss_end=rss_bytes(),
        rss_peak=peak_rss_bytes(), rss_samples=[(int(f), int(r)) for f, r in zip(loop.rss.frames, loop.rss.rss)],
        stop_reason=loop._stop_reason or "stopped", detector_frames=list(loop.detector_frames))


def live_numbers(loop) -> dict:
    """Loop-wide numbers of a running :class:`~edge.live.multiloop.MultiLoop`, with each camera's."""
    invoke = loop.invoke_times.percentiles("invoke")
    return {
        "frames_processed": loop.processed,
        "fps": round(loop.fps_recent, 2),
        "cameras": len(loop.cameras),
        "cameras_up": loop.cameras_up(),
        "detectors": len(loop.detectors),
        "invoke_ms_p50": round(invoke["p50"] * 1e3, 2),
        "rss_mb": round(rss_bytes() / 2**20, 1),
        "rss_start_mb": round(loop.rss_start / 2**20, 1),
        "elapsed_s": round(time.monotonic() - loop._started, 1) if loop._started else 0.0,
        "running": loop._running,
        "per_camera": loop.stats(),
    }


def stats_line(loop, waiting: bool = False) -> str:
    """The line a running :class:`~edge.live.multiloop.MultiLoop` logs every ``stats_every`` seconds."""
    from edge.live.cameras import UP

    invoke = loop.invoke_times.percentiles("invoke")
    parts = []
    for camera in loop.cameras:
        c = camera.counters
        if camera.state == UP:
            parts.append(f"{camera.name} {camera.fps_recent:.1f} fps" +
                         (f" ({c.frames_dropped} dropped)" if c.frames_dropped else ""))
        else:
            parts.append(f"{camera.name} {camera.state} ({c.read_errors} errors, {c.stalls} stalls, "
                         f"{c.reconnects} reconnects)")
    wait = " (waiting for frames)" if waiting else ""
    return (f"{loop.processed} frames, {loop.fps_recent:.1f} fps, {loop.cameras_up()}/{len(loop.cameras)} "
            f"cameras up: {'; '.join(parts)}; invoke p50 {invoke['p50'] * 1e3:.1f} ms, "
            f"RSS {rss_bytes() / 2**20:.1f} MB{wait}")
