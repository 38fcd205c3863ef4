"""Process memory readings used by the live loop's stats and by ``edge bench``: RSS now, peak RSS, and
RSS sampled every few frames into a preallocated ring with its least-squares slope."""

from __future__ import annotations

import os

import numpy as np

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process in bytes (from /proc, no allocation of note); 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except Exception:
            return 0


def peak_rss_bytes() -> int:
    """Peak resident set size (VmHWM) in bytes; 0 if unknown."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def rss_slope(frames: np.ndarray, rss: np.ndarray, segments: np.ndarray | None = None) -> float:
    """Least-squares slope of RSS (bytes) against frame index: bytes per frame; 0.0 under 2 samples.

    ``segments`` (one label per sample) fits one slope with a separate intercept per segment: used
    when other work ran between segments (``edge bench`` alternates pipelines) and shifted RSS,
    which says nothing about this pipeline's growth while it ran.
    """
    frames = np.asarray(frames, np.float64)
    rss = np.asarray(rss, np.float64)
    if frames.size < 2:
        return 0.0
    if segments is None:
        segments = np.zeros(frames.size, np.int64)
    x = np.empty_like(frames)
    y = np.empty_like(rss)
    # Centre within each segment: RSS is ~1e8 and frame indices ~1e4, and the slope we look for is ~1.
    for label in np.unique(segments):
        mask = segments == label
        x[mask] = frames[mask] - frames[mask].mean()
        y[mask] = rss[mask] - rss[mask].mean()
    denominator = float(np.dot(x, x))
    return float(np.dot(x, y) / denominator) if denominator > 0 else 0.0


class RssSampler:
    """RSS every ``every`` frames into preallocated arrays (nothing allocated that outlives a call).

    Sized for ``frames`` frames; past that it stops sampling, or with ``ring=True`` (a run of
    unknown length, like ``edge run``) overwrites the oldest samples, so the recent past is kept.
    """

    def __init__(self, frames: int, every: int = 10, *, ring: bool = False) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every = int(every)
        self.ring = ring
        self.total = 0  # samples taken, ever
        capacity = int(frames) // self.every + 2
        # np.zeros maps untouched pages that become resident as they are written, which would
        # read as RSS growth per frame: fill() makes them resident now.
        self._frame = np.empty(capacity, np.int64)
        self._rss = np.empty(capacity, np.int64)
        self._segment = np.empty(capacity, np.int64)
        for array in (self._frame, self._rss, self._segment):
            array.fill(0)
        self.segment = 0  # label stored with each sample (see rss_slope)
        self.count = 0

    def maybe_sample(self, frame_index: int) -> None:
        """Sample when ``frame_index`` is a multiple of ``every`` (and capacity remains)."""
        if frame_index % self.every == 0:
            self.sample(frame_index)

    def sample(self, frame_index: int) -> None:
        capacity = self._rss.size
        if self.total >= capacity and not self.ring:
            return
        i = self.total % capacity
        self._frame[i] = frame_index
        self._rss[i] = rss_bytes()
        self._segment[i] = self.segment
        self.total += 1
        self.count = min(self.total, capacity)

    def _ordered(self, array: np.ndarray) -> np.ndarray:
        if self.total <= array.size:
            return array[: self.count]
        return np.roll(array, -(self.total % array.size))  # oldest first (a copy, made only when read)

    @property
    def frames(self) -> np.ndarray:
        return self._ordered(self._frame)

    @property
    def rss(self) -> np.ndarray:
        return self._ordered(self._rss)

    @property
    def segments(self) -> np.ndarray:
        return self._ordered(self._segment)

    def after(self, first_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames, RSS) of the samples taken at or after frame ``first_frame``."""
        frames, rss = self.frames, self.rss
        keep = frames >= first_frame
        return frames[keep], rss[keep]

    def slope(self) -> float:
        """Bytes per frame (least squares over all samples, one intercept per segment)."""
        return rss_slope(self.frames, self.rss, self.segments)

    def raw_slope(self) -> float:
        """Bytes per frame, one line through all samples (includes jumps between segments)."""
        return rss_slope(self.frames, self.rss)

    def summary(self) -> dict:
        rss = self.rss
        if rss.size == 0:
            return {"samples": 0}
        return {
            "samples": int(rss.size),
            "every_frames": self.every,
            "first_bytes": int(rss[0]),
            "last_bytes": int(rss[-1]),
            "max_bytes": int(rss.max()),
            "slope_bytes_per_frame": round(self.slope(), 3),
            "slope_segments": int(np.unique(self.segments).size),
            "slope_one_line_bytes_per_frame": round(self.raw_slope(), 3),
        }


def samples_slope(samples: list[tuple[int, int]], first_frame: int) -> float | None:
    """Bytes per frame of ``(frame, rss)`` samples taken at or after ``first_frame``; None under 3."""
    points = [(f, r) for f, r in samples if f >= first_frame]
    if len(points) < 3:
        return None
    return rss_slope(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
