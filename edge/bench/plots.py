"""PNG plots of an ``edge bench`` report: RSS over the timed frames, latency per stage, transient per frame.

The only module of edgekit that imports matplotlib (the ``plots`` extra), and only inside
:func:`write_plots`, which raises ImportError when it is absent; :func:`edge.bench.report.write_report`
then says so in the markdown.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge.bench import BASELINE, OURS
from edge.bench.report import KB, human_bytes
from edge.detector.stages import STAGES
from edge.files import atomic_path

COLORS = {OURS: "tab:green", BASELINE: "tab:red"}
DPI = 110


def write_plots(report: dict, directory: Path, stem: str = "bench") -> list[Path]:
    """``<stem>_rss.png``, ``<stem>_latency.png`` and ``<stem>_transient.png`` in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    models = report["models"]
    paths = []
    for name, draw, height in (("rss", _rss, 3.2), ("latency", _latency, 3.4), ("transient", _transient, 3.2)):
        fig, axes = plt.subplots(len(models), 1, figsize=(9, height * len(models)), squeeze=False)
        try:
            for ax, r in zip(axes[:, 0], models):
                draw(ax, r)
            fig.tight_layout()
            paths.append(_save(fig, directory / f"{stem}_{name}.png"))
        finally:
            plt.close(fig)
    return paths


def _runs(r: dict):
    """(name, run) of the pipelines the model's report kept in memory (ours, and the baseline if it ran)."""
    return [(name, run) for name, run in r["_runs"].items() if run is not None]


def _rss(ax, r: dict) -> None:
    for name, run in _runs(r):
        if run.rss.count == 0:
            continue
        frames, rss = run.rss.frames, run.rss.rss
        ax.plot(frames, (rss - rss[0]) / KB, color=COLORS[name], lw=1.2,
                label=f"{name}: slope {run.rss.slope():+.1f} B/frame (within rounds)")
        if name == OURS:
            for boundary in frames[1:][np.diff(run.rss.segments) != 0]:
                ax.axvline(boundary, color="grey", ls=":", lw=0.8)
    ax.set_title(f"{r['model_name']}: RSS over the timed frames, relative to the first sample\n"
                 "(dotted: round boundaries, where the other pipelines ran in between)", fontsize=10)
    ax.set_xlabel("frame")
    ax.set_ylabel("RSS change (KB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _latency(ax, r: dict) -> None:
    """Box plots per stage on a log axis that starts at the decade of the smallest positive duration
    (a stage can take under a microsecond, or read 0 at the clock's resolution: shown at that floor)."""
    series = []  # (position, color, ms)
    for s_i, stage in enumerate(STAGES):
        for p_i, (name, run) in enumerate(_runs(r)):
            ms = run.times.window(stage) * 1e3
            if ms.size:
                series.append((s_i * 3 + p_i, COLORS[name], ms))
    positive = [float(ms[ms > 0].min()) for _, _, ms in series if np.any(ms > 0)]
    floor = 10.0 ** math.floor(math.log10(min(positive))) if positive else 1e-3
    if series:
        parts = ax.boxplot([np.maximum(ms, floor) for _, _, ms in series], positions=[p for p, _, _ in series],
                           widths=0.8, whis=(1, 99), showfliers=False, patch_artist=True)
        for patch, (_, color, _) in zip(parts["boxes"], series):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
    ax.set_xticks([s_i * 3 + 0.5 for s_i in range(len(STAGES))])
    ax.set_xticklabels(STAGES)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_ylabel("ms, log scale (whiskers p1-p99)")
    ax.set_title(f"{r['model_name']}: latency per stage, ours (green) vs usual (red)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")


def _transient(ax, r: dict) -> None:
    for name, run in _runs(r):
        profile = run.memory_profile
        if profile is None or profile.frames == 0:
            continue
        ax.plot(np.arange(profile.frames), np.maximum(profile.transient, 1), color=COLORS[name], lw=0.8,
                label=f"{name}: median {human_bytes(profile.transient_median)}")
    ax.set_yscale("log")
    ax.set_xlabel("traced frame")
    ax.set_ylabel("bytes allocated and freed\n(0 drawn as 1)")
    ax.set_title(f"{r['model_name']}: transient memory per frame (tracemalloc)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path
