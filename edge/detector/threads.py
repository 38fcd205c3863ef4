"""Choosing the interpreter's thread count for end-to-end throughput, not for bare ``invoke()``.

With every core given to the interpreter, the capture thread's decode and resize compete with it
and the whole loop can end up slower than with one core left for capture (measured on 2 cores: the
2-thread pipeline below the 1-thread one). Which is faster depends on the board, the model and the
source, so it is measured, during the first frames of the run: :class:`ThreadTuner` tries each
candidate in turn, twice, for a window of frames, times the frame period (one finished frame to
the next, capture included), and keeps the candidate with the shortest median period.

Where there are several cores the candidates include two detectors with half the cores each,
taking the frames in turn (:func:`layout_candidates`): the interpreter's threads meet at every
operator, so one detector rarely keeps all the cores busy beside the capture thread (fixture SSD on
2 x86 cores: 1.09x the invokes a second as two 1-thread copies, 0.92x bare ``invoke()`` end to end
against 0.83x for the 2-thread one). A second copy costs memory, so it must win by
:data:`SEVERAL_GAIN`, not by the tie margin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge.provenance import usable_cores

SETTLE_FRAMES = 8  # frames after a switch not timed: the new interpreter's first invokes are slow
TRIAL_FRAMES = 30  # timed frames per candidate per round
ROUNDS = 2  # candidates alternate this many times, so load from other processes falls on each alike
TIE = 0.03  # periods within 3% are a tie: the one with fewer threads wins (less CPU, same speed)
# Several detectors must beat the best single one by this much: each further copy costs its
# interpreter's memory (14.8 MB for the fixture SSD) and two ring frames.
SEVERAL_GAIN = 0.05


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


@dataclass(frozen=True)
class Layout:
    """How the model runs: ``detectors`` copies of it, each with ``threads`` interpreter threads
    (several copies take the frames in turn: :mod:`edge.live.turns`)."""

    detectors: int
    threads: int

    @property
    def key(self) -> str:
        """``"2"`` for one detector with 2 threads, ``"2x1"`` for two detectors of 1 thread each."""
        return str(self.threads) if self.detectors == 1 else f"{self.detectors}x{self.threads}"

    def describe(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return threads if self.detectors == 1 else f"{self.detectors} detectors x {threads}"


def layout_candidates(cores: int | None = None, *, several: bool = True) -> list[Layout]:
    """:func:`thread_candidates` in one detector and, where there are several cores (and ``several``),
    two detectors with half the cores each taking the frames in turn."""
    cores = cores or usable_cores()
    layouts = [Layout(1, threads) for threads in thread_candidates(cores)]
    if several and cores > 1:
        layouts.append(Layout(2, max(1, cores // 2)))
    return layouts


class ThreadTuner:
    """Feeds on frame periods; has ``apply`` switch between ``candidates`` (:class:`Layout` s, or
    thread counts for one detector) and settles on the best.

    ``apply(layout)`` is called for each trial and for the choice; where switching must wait for a
    quiet moment (several detectors' threads running), it may record the wish and act later: the
    first :data:`SETTLE_FRAMES` frames of a trial are not timed. :attr:`current` is the layout the
    tuner wants now. Allocation-free per frame: periods go into one preallocated array.
    """

    def __init__(self, apply: Callable[[Layout], None], candidates: list, *, trial_frames: int = TRIAL_FRAMES,
                 settle_frames: int = SETTLE_FRAMES, rounds: int = ROUNDS) -> None:
        layouts = [c if isinstance(c, Layout) else Layout(1, int(c)) for c in candidates]
        self.apply = apply
        self.candidates = list(dict.fromkeys(layouts))
        self.trial_frames, self.settle_frames, self.rounds = trial_frames, settle_frames, rounds
        self._schedule = [c for _ in range(rounds) for c in self.candidates]
        self._periods = np.zeros((len(self.candidates), rounds * trial_frames), np.float64)
        self._periods.fill(0.0)
        self._filled = [0] * len(self.candidates)
        self._step = 0
        self._in_step = 0
        self._last = 0.0
        self.medians: dict[Layout, float] = {}
        self.chosen: Layout | None = None if len(self.candidates) > 1 else self.candidates[0]
        if self.chosen is None:
            apply(self._schedule[0])

    @property
    def done(self) -> bool:
        return self.chosen is not None

    @property
    def current(self) -> Layout:
        """The layout being measured, or the one chosen."""
        return self.chosen if self.chosen is not None else self._schedule[self._step]

    @property
    def frames_left_in_trial(self) -> int:
        return 0 if self.chosen is not None else self.settle_frames + self.trial_frames - self._in_step

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
                self.apply(self._schedule[self._step])

    def _choose(self) -> None:
        medians = {c: float(np.median(self._periods[i, : self._filled[i]])) for i, c in enumerate(self.candidates)}
        self.medians = medians
        single = {c: m for c, m in medians.items() if c.detectors == 1}
        best = min(single.values())
        near = [c for c, m in single.items() if m <= best * (1 + TIE)]
        chosen = min(near, key=lambda c: c.threads)
        several = {c: m for c, m in medians.items() if c.detectors > 1}
        if several:
            layout, period = min(several.items(), key=lambda item: item[1])
            if period < best * (1 - SEVERAL_GAIN):
                chosen = layout
        self.chosen = chosen
        self.apply(chosen)

    def describe(self) -> str:
        if len(self.candidates) == 1:
            return f"{self.chosen.describe()} (one usable core)"
        measured = ", ".join(f"{c.describe()} {1.0 / m:.1f} fps" for c, m in self.medians.items())
        return f"{self.chosen.describe()} (measured end to end: {measured})"
