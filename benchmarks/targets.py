"""The project's own targets for the benchmark figures, and the met/missed lines the scripts print.

``edge bench`` reports figures and ratios and judges nothing: what counts as good enough is the
project's call, made here, for the scripts in this folder (``bench_fixture.py``, ``bench_synthetic.py``,
``bench_variants.py``, ``bench_rss_slope.py``, ``live_fps.py``, ``detect_overhead.py``, ``soak.py``,
``soak_service.py``).

    from targets import print_targets      # scripts run from benchmarks/ have it on sys.path
    report = run_and_write(settings, out, name, command)
    print_targets(report)

Or check a report ``edge bench --json`` wrote (exit 1 when a target is missed):

    .venv/bin/python benchmarks/targets.py bench.json
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

KB = 1024

OURS_OVER_BASELINE_FPS = 1.05  # ours' fps over the usual pipeline's, at least
OURS_OVER_BARE_FPS = 0.90  # ours' fps over bare invoke()'s, at least (also edge run's own loop: live_fps.py)
TRANSIENT_BYTES = 1 * KB  # ours: bytes allocated and freed within a frame (median), under
GROWTH_BYTES_PER_FRAME = 1.0  # ours: net heap growth trend, under (negative: memory returned, never a miss)
RSS_SLOPE_BYTES_PER_FRAME = 10.0  # ours: RSS least-squares slope, under
DETECT_OVERHEAD_MS = 1.0  # Detector.detect() minus bare invoke() (preprocess + postprocess p50), under


@dataclass(frozen=True)
class Target:
    """``value(model result)`` compared with ``limit`` by ``op``; ``value`` returns None when the
    figure does not exist (no baseline ran): not applicable, rather than missed."""

    key: str
    text: str
    value: Callable[[dict], float | None]
    op: Callable[[float, float], bool]
    limit: float
    unit: str = ""

    def met(self, result: dict) -> bool | None:
        try:
            value = self.value(result)
        except (KeyError, TypeError):
            return None
        return None if value is None else bool(self.op(value, self.limit))


def _baseline_ratio(key: str) -> Callable[[dict], float | None]:
    return lambda r: r["ratios"].get(key) if r.get("usual") else None


#: Checked against each model of an ``edge bench`` report (``report["models"][i]``).
BENCH_TARGETS: tuple[Target, ...] = (
    Target("fps_over_baseline", f"ours >= {OURS_OVER_BASELINE_FPS:.2f}x the usual pipeline's fps",
           _baseline_ratio("ours_fps_over_usual_fps"), operator.ge, OURS_OVER_BASELINE_FPS, "x"),
    Target("fps_over_bare", f"ours >= {OURS_OVER_BARE_FPS:.2f}x bare invoke() fps",
           lambda r: r["ratios"]["ours_fps_over_bare_fps"], operator.ge, OURS_OVER_BARE_FPS, "x"),
    Target("transient", "ours: transient under 1 KB per frame",
           lambda r: r["ours"]["memory"]["transient_median_bytes"], operator.lt, TRANSIENT_BYTES, " B"),
    # A trend under 1 B/frame covers both |trend| < 1 and any negative trend (memory returned).
    Target("zero_growth", "ours: zero net heap growth (trend under 1 B/frame)",
           lambda r: r["ours"]["memory"]["growth_trend_bytes_per_frame"], operator.lt, GROWTH_BYTES_PER_FRAME,
           " B/frame"),
    Target("rss_slope", "ours: RSS slope under 10 B/frame",
           lambda r: r["ours"]["rss"]["slope_bytes_per_frame"], operator.lt, RSS_SLOPE_BYTES_PER_FRAME, " B/frame"),
)


def evaluate(result: dict, targets: tuple[Target, ...] = BENCH_TARGETS) -> list[dict]:
    """``[{key, target, value, unit, met}]`` for one model; ``met`` is None where the figure does not exist."""
    out = []
    for t in targets:
        try:
            value = t.value(result)
        except (KeyError, TypeError):
            value = None
        out.append({"key": t.key, "target": t.text, "value": value, "unit": t.unit, "met": t.met(result)})
    return out


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def format_targets(report: dict) -> str:
    """Per model: each target with the measured value and met / MISSED / n/a, then a count."""
    lines = []
    for r in report["models"]:
        checked = evaluate(r)
        applicable = [c for c in checked if c["met"] is not None]
        lines.append(f"targets for {r['model_name']}: {sum(c['met'] for c in applicable)}/{len(applicable)} met")
        for c in checked:
            value = "-" if c["value"] is None else f"{c['value']:.3g}{c['unit']}"
            lines.append(f"  {verdict(c['met']):6} {c['target']} (measured {value})")
    return "\n".join(lines)


def print_targets(report: dict) -> int:
    """Print :func:`format_targets`; returns how many targets were missed over every model."""
    print(format_targets(report))
    return sum(1 for r in report["models"] for c in evaluate(r) if c["met"] is False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path,
                        help="an edge bench JSON report to check (default: list the targets)")
    args = parser.parse_args(argv)
    if args.report is None:
        for t in BENCH_TARGETS:
            print(t.text)
        print(f"detect() overhead over bare invoke() under {DETECT_OVERHEAD_MS:g} ms (detect_overhead.py)")
        return 0
    return 1 if print_targets(json.loads(args.report.read_text())) else 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- compression frontier (compression_frontier.py)

PRUNED_INVOKE_RATIO = 0.6  # channel-pruned int8 invoke() median over the dense int8's, at most
PRUNED_SIZE_RATIO = 0.6  # channel-pruned int8 file size over the dense int8's, at most
PRUNED_MAP50_DROP_POINTS = 1.5  # mAP@0.5 points a pruned int8 may lose against the dense int8, at most
DISTILLED_STUDENT_GAIN_POINTS = 1.0  # distilled student's mAP@0.5 over the student trained alone, at least

#: Checked against each channel-pruned row of a compression_frontier.py result (``result["variants"][i]``).
#: The pruning target is met when one row meets all three at once: a small, fast model that is
#: clearly worse is not what pruning promises.
PRUNED_TARGETS: tuple[Target, ...] = (
    Target("pruned_invoke_ratio", f"pruned int8 invoke() <= {PRUNED_INVOKE_RATIO:.1f}x dense int8",
           lambda r: r["invoke_ratio"], operator.le, PRUNED_INVOKE_RATIO, "x"),
    Target("pruned_size_ratio", f"pruned int8 file <= {PRUNED_SIZE_RATIO:.1f}x dense int8",
           lambda r: r["size_ratio"], operator.le, PRUNED_SIZE_RATIO, "x"),
    Target("pruned_map50_drop", f"pruned int8 loses <= {PRUNED_MAP50_DROP_POINTS:g} mAP@0.5 points vs dense int8",
           lambda r: r["map50_drop_points"], operator.le, PRUNED_MAP50_DROP_POINTS, " points"),
)

#: Checked against the whole compression_frontier.py result.
STUDENT_TARGETS: tuple[Target, ...] = (
    Target("distilled_student_gain", f"distilled student >= {DISTILLED_STUDENT_GAIN_POINTS:g} mAP@0.5 points "
                                     "above the student trained alone",
           lambda r: r["students"]["map50_gain_points"], operator.ge, DISTILLED_STUDENT_GAIN_POINTS, " points"),
)


def frontier_verdicts(result: dict) -> dict:
    """``{"pruned": {variant: [checks]}, "pruned_met": bool | None, "student": [checks]}``; ``pruned_met``
    is True when one pruned row meets every pruning target, None when no pruned row was measured."""
    pruned = {r["variant"]: evaluate(r, PRUNED_TARGETS) for r in result["variants"] if r.get("kind") == "pruned"}
    met = None if not pruned else any(all(c["met"] for c in checks) for checks in pruned.values())
    return {"pruned": pruned, "pruned_met": met, "student": evaluate(result, STUDENT_TARGETS)}


def format_frontier_targets(result: dict) -> str:
    verdicts = frontier_verdicts(result)
    lines = [f"{verdict(verdicts['pruned_met']):6} a pruned int8 meets all of: "
             + "; ".join(t.text for t in PRUNED_TARGETS)]
    for name, checks in verdicts["pruned"].items():
        cells = ", ".join(f"{c['key'].removeprefix('pruned_')} {verdict(c['met'])}"
                          f" ({'-' if c['value'] is None else format(c['value'], '.3g')}{c['unit']})" for c in checks)
        lines.append(f"         {name}: {cells}")
    for c in verdicts["student"]:
        value = "-" if c["value"] is None else f"{c['value']:+.2f}{c['unit']}"
        lines.append(f"{verdict(c['met']):6} {c['target']} (measured {value})")
    return "\n".join(lines)


# ---------------------------------------------------------------- service soak (soak_service.py)

MB = 1024 * KB
SOAK_RSS_DRIFT_MB = 2.0  # edge run with tracking, zones and MQTT on (1 and 4 cameras): RSS drift after warm-up, under

#: Checked against a soak_service.py result: RSS of the ``edge run`` process (in ``--in-process`` mode
#: this process, tracemalloc's own memory included), from the warm-up to the end of the loop.
SOAK_TARGETS: tuple[Target, ...] = (
    Target("rss_drift", f"RSS drift after warm-up under {SOAK_RSS_DRIFT_MB:g} MB (last sample minus the one at warm-up)",
           lambda r: r["measured"]["rss"]["drift_bytes"] / MB, operator.lt, SOAK_RSS_DRIFT_MB, " MB"),
    Target("rss_drift_robust", f"RSS drift after warm-up under {SOAK_RSS_DRIFT_MB:g} MB (robust: median of the last "
                               "10% minus median of the first 10%)",
           lambda r: r["measured"]["rss"]["robust_drift_bytes"] / MB, operator.lt, SOAK_RSS_DRIFT_MB, " MB"),
    Target("rss_slope", f"RSS slope under {RSS_SLOPE_BYTES_PER_FRAME:g} B/frame",
           lambda r: r["measured"]["rss"]["slope_bytes_per_frame"], operator.lt, RSS_SLOPE_BYTES_PER_FRAME, " B/frame"),
    # Only --in-process results have a heap; elsewhere these are n/a.
    Target("zero_growth", f"zero net heap growth: tracemalloc trend under {GROWTH_BYTES_PER_FRAME:g} B/frame",
           lambda r: r["measured"]["heap"]["trend_bytes_per_frame"], operator.lt, GROWTH_BYTES_PER_FRAME, " B/frame"),
    Target("zero_net_growth", f"zero net heap growth: robust net (median of the last 10% minus the first 10% "
                              f"after warm-up) / frames under {GROWTH_BYTES_PER_FRAME:g} B/frame",
           lambda r: r["measured"]["heap"]["robust_net_growth_bytes_per_frame"], operator.lt, GROWTH_BYTES_PER_FRAME,
           " B/frame"),
)


def soak_verdicts(result: dict) -> list[dict]:
    return evaluate(result, SOAK_TARGETS)


def format_soak_targets(result: dict) -> str:
    checked = soak_verdicts(result)
    applicable = [c for c in checked if c["met"] is not None]
    lines = [f"targets for {result.get('title', 'soak_service')}: {sum(c['met'] for c in applicable)}/"
             f"{len(applicable)} met"]
    for c in checked:
        value = "-" if c["value"] is None else f"{c['value']:+.3g}{c['unit']}"
        lines.append(f"  {verdict(c['met']):6} {c['target']} (measured {value})")
    return "\n".join(lines)
