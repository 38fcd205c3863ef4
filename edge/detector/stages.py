"""Per-stage latency rings for the live loop and ``edge bench``.

Each stage keeps its last ``capacity`` durations in a preallocated float64 array, so recording a
frame's timings all day allocates nothing and memory stays flat; percentiles are computed over that
window (the recent past), which is what a stats line should describe. The arrays are written once
in the constructor: ``np.zeros`` pages would otherwise become resident one by one as frames are
recorded, which reads as RSS growth during the first frames.
"""

from __future__ import annotations

import numpy as np

#: The live loop's stages, in frame order (seconds each).
STAGES: tuple[str, ...] = ("capture_wait", "preprocess", "invoke", "postprocess", "sinks")


class StageTimes:
    """Ring buffers of durations in seconds, one per stage.

    ``record`` is a dict lookup and one array store: no allocation that survives the call.
    """

    def __init__(self, stages: tuple[str, ...] | list[str] = STAGES, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.stages = tuple(stages)
        self.capacity = int(capacity)
        self._index = {name: i for i, name in enumerate(self.stages)}
        self._values = np.zeros((len(self.stages), self.capacity), np.float64)
        self._values.fill(0.0)  # resident now, not page by page inside the loop
        self._count = np.zeros(len(self.stages), np.int64)  # total recorded, ever
        self._totals = np.zeros(len(self.stages), np.float64)  # seconds, ever

    def record(self, stage: str, seconds: float) -> None:
        i = self._index[stage]
        n = self._count[i]
        self._values[i, n % self.capacity] = seconds
        self._count[i] = n + 1
        self._totals[i] += seconds

    def last(self, stage: str) -> float:
        """The most recent duration of ``stage`` in seconds (0.0 before the first)."""
        i = self._index[stage]
        n = int(self._count[i])
        return float(self._values[i, (n - 1) % self.capacity]) if n else 0.0

    def count(self, stage: str) -> int:
        return int(self._count[self._index[stage]])

    def total(self, stage: str) -> float:
        """Seconds spent in ``stage`` since the start (not just the window)."""
        return float(self._totals[self._index[stage]])

    def window(self, stage: str) -> np.ndarray:
        """A copy of the durations in the ring (up to ``capacity`` most recent, unordered)."""
        i = self._index[stage]
        n = min(int(self._count[i]), self.capacity)
        return self._values[i, :n].copy()

    def percentiles(self, stage: str) -> dict[str, float]:
        """``{"p50", "p90", "p99", "max", "mean"}`` in seconds over the window; zeros when empty."""
        values = self.window(stage)
        if values.size == 0:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
        p50, p90, p99 = np.percentile(values, (50, 90, 99))
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max()),
                "mean": float(values.mean())}

    def summary(self) -> dict[str, dict[str, float]]:
        return {stage: self.percentiles(stage) for stage in self.stages}

    def reset(self) -> None:
        self._count[:] = 0
        self._totals[:] = 0.0
