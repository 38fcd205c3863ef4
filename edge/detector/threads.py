"""Choosing the interpreter's thread count for end-to-end throughput, not for bare ``invoke()``.

With every core given to the interpreter, the capture thread's decode and resize compete with it
and the whole loop can end up slower than with one core left for capture (measured on 2 cores: the
2-thread pipeline below the 1-thread one). Which is faster depends on the board, the model and the
source, so it is measured, during the first frames of the run: :class:`ThreadTuner` tries each
candidate in turn, twice, for a window of frames, times the frame period (one finished frame to
the next, capture included), and keeps the candidate with the shortest median period.
"""

from __future__ import annotations

import time

import numpy as np

from edge.provenance import usable_cores

SETTLE_FRAMES = 8  # frames after a switch not timed: the new interpreter's first invokes are slow
TRIAL_FRAMES = 30  # timed frames per candidate per round
ROUNDS = 2  # candidates alternate this many times, so load from other processes falls on each alike
TIE = 0.03  # periods within 3% are a tie: the one with fewer threads wins (less CPU, same speed)


def untuned_reason(runtime_info) -> str | None:
    """Why thread counts are not measured for this engine, or None when they are.

    On a GPU (CUDA, TensorRT) the CPU threads only run the few nodes the GPU providers left over,
    so measuring them would cost a model reload per candidate (a TensorRT engine load each) for nothing.
    """
    if getattr(runtime_info, "on_cpu", True):
        return None
    return f"running on {runtime_info.device_label}"


def thread_candidates(cores: int | None = None) -> list[int]:
    """All usable cores, and one fewer (a core left for capture) where there are several."""
    cores = cores or usable_cores()
    return [cores, cores - 1] if cores > 1 else [1]


class ThreadTuner:
    """Feeds on frame periods; switches ``detector`` between ``candidates`` and settles on the best.

    Allocation-free per frame: periods go into one preallocated array.
    """

    def __init__(self, detector, candidates: list[int], *, trial_frames: int = TRIAL_FRAMES,
                 settle_frames: int = SETTLE_FRAMES, rounds: int = ROUNDS) -> None:
        self.detector = detector
        self.candidates = list(dict.fromkeys(candidates))
        self.trial_frames, self.settle_frames, self.rounds = trial_frames, settle_frames, rounds
        self._schedule = [c for _ in range(rounds) for c in self.candidates]
        self._periods = np.zeros((len(self.candidates), rounds * trial_frames), np.float64)
        self._periods.fill(0.0)
        self._filled = [0] * len(self.candidates)
        self._step = 0
        self._in_step = 0
        self._last = 0.0
        self.chosen: int | None = None if len(self.candidates) > 1 else self.candidates[0]
        if self.chosen is None:
            detector.set_threads(self._schedule[0])

    @property
    def done(self) -> bool:
        return self.chosen is not None

    def frame_done(self) -> None:
        """Call once per processed frame."""
        if self.chosen is not None:
            return
        now = time.perf_counter()
        period, self._last = now - self._last, now
        self._in_step += 1
        if self._in_step <= self.settle_frames:
            return
        i = self.candidates.index(self._schedule[self._step])
        self._periods[i, self._filled[i]] = period
        self._filled[i] += 1
        if self._in_step >= self.settle_frames + self.trial_frames:
            self._step += 1
            self._in_step = 0
            if self._step == len(self._schedule):
                self._choose()
            else:
                self.detector.set_threads(self._schedule[self._step])

    def _choose(self) -> None:
        medians = [float(np.median(self._periods[i, : self._filled[i]])) for i in range(len(self.candidates))]
        best = min(medians)
        near = [c for c, m in zip(self.candidates, medians) if m <= best * (1 + TIE)]
        self.chosen = min(near)
        self.medians = dict(zip(self.candidates, medians))
        self.detector.set_threads(self.chosen)

    def describe(self) -> str:
        if len(self.candidates) == 1:
            return f"{self.chosen} thread (one usable core)"
        measured = ", ".join(f"{c} thread{'s' if c > 1 else ''} {1.0 / m:.1f} fps" for c, m in self.medians.items())
        return f"{self.chosen} thread{'s' if self.chosen > 1 else ''} (measured end to end: {measured})"
