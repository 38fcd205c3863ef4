"""What a multi-camera run reports: :class:`CameraSummary` per camera, :class:`MultiSummary` in all.

:meth:`MultiLoop.run <edge.live.multiloop.MultiLoop.run>` returns a :class:`MultiSummary`: frames,
rates and shares per camera, memory (RSS samples and their drift after warm-up) and the table
``edge run --config`` prints after the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge.memory import samples_slope

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
