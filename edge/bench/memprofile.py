"""Memory per frame: net Python heap growth, transient peak and RSS, measured around a per-frame step.

Why this exists: TFLite's ``benchmark_model`` reports memory at init, overall and as a sampled
peak, which cannot tell a pipeline that allocates a frame-sized array every frame (and frees it)
from one that allocates nothing, nor catch a slow leak. :class:`FrameMemoryProbe` brackets each
frame with ``tracemalloc`` and reads, per frame:

- **growth**: bytes still allocated at the end of the frame that were not at its start (a leak
  shows as a steady positive number; our pipeline must show 0);
- **transient**: the peak of traced memory during the frame above ``max(start, end)``, i.e. bytes
  allocated and freed within the frame (the usual pipeline's ``cv2.resize`` / ``cvtColor`` copies);

and samples the process RSS (``/proc/self/statm``) every ``rss_every`` frames, outside the traced
window, so a slope in bytes per frame can be fitted at the end (:func:`rss_slope`).

``tracemalloc`` sees every allocation made through Python's allocators and every numpy array
buffer (numpy reports its data allocations to it), which covers OpenCV outputs and
``interpreter.get_tensor`` copies; memory the interpreter allocates in C++ is not seen, which is
what the RSS samples are for.

The probe's own cost is part of every reading, so it is measured once, on an empty step (the
*floor*: a few dozen bytes for the integers ``get_traced_memory`` returns), and subtracted.
Per frame the probe allocates nothing that outlives the frame: samples go into numpy arrays
preallocated for ``capacity`` frames.

Kept free of matplotlib and of the interpreter, so the board can import it.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edge.memory import RssSampler, rss_slope

_CALIBRATION_FRAMES = 256
#: Frames run under tracing before recording (see FrameMemoryProbe.run); sources whose scenes cycle
#: ask for more through ``Source.warmup_hint`` (see BenchSettings.resolved).
TRACED_WARMUP = 30


@dataclass
class MemoryProfile:
    """Per-frame readings of one :meth:`FrameMemoryProbe.run`, probe floor already subtracted.

    ``growth`` and ``transient`` are int64 arrays of bytes, one entry per measured frame.
    """

    growth: np.ndarray
    transient: np.ndarray
    rss_frames: np.ndarray
    rss: np.ndarray
    floor_growth: int = 0
    floor_transient: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return int(self.growth.size)

    @property
    def growth_per_frame(self) -> float:
        """Mean net heap growth in bytes per frame (total growth / frames): the leak rate."""
        return float(self.growth.sum()) / self.frames if self.frames else 0.0

    @property
    def growth_trend(self) -> float:
        """Least-squares slope of cumulative growth, bytes per frame.

        Equal to :attr:`growth_per_frame` for a steady leak; for a pipeline with a capture thread,
        objects that thread holds at the last frame's end (a bounded difference, not a leak) move
        the mean by ``bytes / frames`` but barely move the trend.
        """
        if self.frames < 2:
            return self.growth_per_frame
        return rss_slope(np.arange(self.frames), np.cumsum(self.growth))

    @property
    def transient_median(self) -> float:
        return float(np.median(self.transient)) if self.frames else 0.0

    @property
    def rss_slope(self) -> float:
        return rss_slope(self.rss_frames, self.rss)

    def summary(self) -> dict:
        """Plain numbers for JSON and tables (bytes)."""
        if not self.frames:
            return {"frames": 0}
        growth, transient = self.growth, self.transient
        return {
            "frames": self.frames,
            "growth_total_bytes": int(growth.sum()),
            "growth_bytes_per_frame": round(self.growth_per_frame, 3),
            "growth_trend_bytes_per_frame": round(self.growth_trend, 3),
            "growth_frames_nonzero": int(np.count_nonzero(growth)),
            "transient_median_bytes": float(np.median(transient)),
            "transient_p90_bytes": float(np.percentile(transient, 90)),
            "transient_p99_bytes": float(np.percentile(transient, 99)),
            "transient_max_bytes": int(transient.max()),
            "probe_floor_transient_bytes": int(self.floor_transient),
            "probe_floor_growth_bytes": int(self.floor_growth),
            "traced_rss_slope_bytes_per_frame": round(self.rss_slope, 3),
        }


def _noop() -> None:
    return None


class FrameMemoryProbe:
    """Bracket a per-frame step with tracemalloc; see the module docstring for what is measured.

    Use :meth:`run` for a callable step, or :meth:`begin` / :meth:`end` around code that is not
    one call (e.g. a loop that calls back per frame). ``tracemalloc`` is started on first use if
    it is not already tracing, and stopped by :meth:`close` only if this probe started it.
    """

    def __init__(self, capacity: int, rss_every: int = 10, calibrate: bool = True) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self._growth = np.empty(self.capacity, np.int64)
        self._transient = np.empty(self.capacity, np.int64)
        self._growth.fill(0)  # resident now, not page by page while measuring (see RssSampler)
        self._transient.fill(0)
        self._rss = RssSampler(self.capacity, rss_every)
        self._calibrate = calibrate
        self._started_tracing = False
        self._start = 0
        self.count = 0
        self.floor_growth = 0
        self.floor_transient = 0

    # ---- set-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start tracing (if needed) and measure the probe's own floor on an empty step."""
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started_tracing = True
        if self._calibrate:
            floor = FrameMemoryProbe(_CALIBRATION_FRAMES, rss_every=_CALIBRATION_FRAMES, calibrate=False)
            floor.run(_noop, _CALIBRATION_FRAMES, warmup=8)
            # The floor is a constant (the integers get_traced_memory returns); the median is it.
            self.floor_growth = int(np.median(floor._growth))
            self.floor_transient = int(np.median(floor._transient))
        self.count = 0
        # begin() replaces this int every frame; it must be a traced one, or the first frame
        # would show the 32 B of the int begin() makes as growth.
        self._start = tracemalloc.get_traced_memory()[0]

    def close(self) -> None:
        if self._started_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._started_tracing = False

    def __enter__(self) -> "FrameMemoryProbe":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- per frame ----------------------------------------------------------------------------

    def begin(self) -> None:
        """Mark the start of a frame: reset the peak, remember the traced level."""
        tracemalloc.reset_peak()
        self._start = tracemalloc.get_traced_memory()[0]

    def end(self) -> None:
        """Mark the end of a frame: store growth and transient, sample RSS every ``rss_every``."""
        current, peak = tracemalloc.get_traced_memory()
        i = self.count
        if i >= self.capacity:
            return
        start = self._start
        self._growth[i] = current - start
        self._transient[i] = peak - (current if current > start else start)
        self.count = i + 1
        # After the readings, so the /proc read's own allocations fall outside every frame.
        self._rss.maybe_sample(i)

    def set_growth(self, first: int, stop: int, total: int) -> None:
        """Replace the growth of frames ``first`` to ``stop - 1`` with ``total`` bytes measured around
        all of them at once, put on the last (for steps that overlap, where a frame's own end is not a
        point at which nothing is in flight: ``edge bench`` with several detectors)."""
        stop = min(stop, self.count)
        if stop <= first:
            return
        self._growth[first:stop] = self.floor_growth
        self._growth[stop - 1] += total

    def run(self, step: Callable[[], object], frames: int, warmup: int = 0) -> "FrameMemoryProbe":
        """Call ``step()`` ``warmup`` times traced but unrecorded, then ``frames`` times measured.

        The warm-up runs under tracing so that objects a step replaces every frame (allocated
        before tracing began) are already traced when recording starts. numpy also keeps freed
        small buffers in an internal cache and reuses them untraced: with the Detector this shows as
        ~480 B of "growth" in each of the first ~19 frames after tracing starts, then never again,
        so warm up for at least :data:`TRACED_WARMUP` frames.
        """
        if not tracemalloc.is_tracing():
            self.start()
        for _ in range(warmup):
            step()
        begin, end = self.begin, self.end
        for _ in range(min(frames, self.capacity - self.count)):
            begin()
            step()
            end()
        return self

    def profile(self) -> MemoryProfile:
        """The readings so far, the floor subtracted (transient clipped at 0)."""
        n = self.count
        growth = self._growth[:n] - self.floor_growth
        transient = np.maximum(self._transient[:n] - self.floor_transient, 0)
        return MemoryProfile(growth, transient, self._rss.frames.copy(), self._rss.rss.copy(),
                             self.floor_growth, self.floor_transient)


def measure_step(step: Callable[[], object], frames: int, warmup: int = TRACED_WARMUP, rss_every: int = 10) -> MemoryProfile:
    """One-shot: the :class:`MemoryProfile` of ``step`` over ``frames`` frames after ``warmup``.

    ``edge bench`` brackets its loops with :meth:`FrameMemoryProbe.begin` / :meth:`~FrameMemoryProbe.end`
    instead; this is the reference form the tests use to check the probe on known steps.
    """
    with FrameMemoryProbe(frames, rss_every=rss_every) as probe:
        probe.run(step, frames, warmup=warmup)
        return probe.profile()
