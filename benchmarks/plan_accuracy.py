"""How close ``edge plan``'s predicted peak RSS is to the measured one, per model, source size, camera count and sinks.

Each setup runs for real in a fresh process (``python -m edge.plan.measure``: edge run's pipeline,
one interpreter shared by N synthetic cameras), and, for one camera, also as the real CLI
(``python -m edge.cli run MODEL --source synthetic:WxH --max-frames N --threads T --stats-every 0``,
whose summary's ``peak X MB`` line is read). The target: every predicted peak within 10% of the
measured one. The sizes checked here are not the ones the baseline was calibrated at (320x240 and
1920x1080, see edge/plan/baseline.json), and the fixture model takes no part in the pipeline
calibration. ``--extra`` adds 960x540, a size where glibc keeps freed float64 bands of the synthetic
source in the heap even for small models (edge/plan/allocator.py predicts when and how much). The
machine's load average is recorded at the start and the end (memory, not time, is measured, but a
loaded machine is worth knowing about).

    .venv/bin/python benchmarks/plan_accuracy.py --extra    # writes benchmarks/results/plan_accuracy.{json,md}
    .venv/bin/python benchmarks/plan_accuracy.py --quick    # 1 and 4 cameras, no CLI runs
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write, atomic_write_json  # noqa: E402
from edge.plan.baseline import load_baseline  # noqa: E402
from edge.plan.components import Setup  # noqa: E402
from edge.plan.check import compare, run_fresh  # noqa: E402
from edge.plan.predict import predict  # noqa: E402
from edge.provenance import machine_info  # noqa: E402

FIXTURE = ROOT.parent / "shared" / "fixtures" / "models" / "ssd_mobilenet_v1_coco_quant.tflite"
DEMO = ROOT / "edge" / "models" / "demo_ssd_int8.tflite"
TARGET = 0.10
MB = 2**20


def cli_peak(model: Path, width: int, height: int, frames: int, threads: int, sinks: tuple[str, ...], tmp: Path) -> int:
    cmd = [sys.executable, "-m", "edge.cli", "run", str(model), "--source", f"synthetic:{width}x{height}",
           "--max-frames", str(frames), "--threads", str(threads), "--stats-every", "0"]
    if "json" in sinks:
        cmd += ["--json", "/dev/null"]
    if "video" in sinks:
        cmd += ["--video", str(tmp / "cli.mp4")]
    if "preview" in sinks:
        cmd += ["--preview", "127.0.0.1:0"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    match = re.search(r"peak ([0-9.]+) MB", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-300:]}")
    return int(float(match.group(1)) * MB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 cameras only, no CLI runs")
    parser.add_argument("--extra", action="store_true", help="also 960x540 (allocator-sensitive size)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, nargs="+", default=None, metavar="PATH",
                        help=".tflite files or folders of them (default: the fixture SSD and the demo model; "
                             "benchmarks/build_plan_variants.py builds widths, sizes, float/int8, channel-pruned)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_accuracy")
    args = parser.parse_args()

    baseline = load_baseline()
    if args.models:
        models = [m for path in args.models for m in (sorted(path.glob("*.tflite")) if path.is_dir() else [path])]
    else:
        models = [m for m in (FIXTURE, DEMO) if m.is_file()]
    sizes = [(640, 480), (1280, 720)] + ([(960, 540)] if args.extra else [])
    cameras = (1, 4) if args.quick else (1, 2, 3, 4)
    sink_sets = ((), ("json", "video", "preview"))
    rows, started, load_start = [], time.time(), os.getloadavg()
    tmp = Path(ROOT / ".plan_accuracy_tmp")
    tmp.mkdir(exist_ok=True)
    try:
        for model in models:
            arena_done = False
            for width, height in sizes:
                for n in cameras:
                    for sinks in sink_sets:
                        setup = Setup(width, height, n, args.threads, sinks)
                        prediction = predict(model, setup, baseline)
                        measured = run_fresh(model, width=width, height=height, cameras=n, threads=args.threads,
                                             sinks=sinks, frames=args.frames, arena=not arena_done)
                        arena_done = True
                        row = {"model": model.name, "source": f"{width}x{height}", "cameras": n,
                               "sinks": ",".join(sinks) or "none", "predicted_peak": prediction.peak,
                               "measured_peak": measured["peak"], "error": prediction.peak / measured["peak"] - 1,
                               "peak_when": prediction.peak_when, "components": compare(prediction, measured)}
                        if n == 1 and not args.quick:
                            row["cli_peak"] = cli_peak(model, width, height, args.frames, args.threads, sinks, tmp)
                            row["cli_error"] = prediction.peak / row["cli_peak"] - 1
                        rows.append(row)
                        cli = f", edge run {row['cli_peak'] / MB:.1f} ({row['cli_error']:+.1%})" if "cli_peak" in row else ""
                        print(f"{model.name:38s} {width}x{height} x{n} {row['sinks']:18s} predicted "
                              f"{prediction.peak / MB:6.1f} MiB, measured {measured['peak'] / MB:6.1f} "
                              f"({row['error']:+.1%}){cli}", flush=True)
    finally:
        for leftover in tmp.glob("*"):
            leftover.unlink()
        tmp.rmdir()
    errors = [abs(r["error"]) for r in rows] + [abs(r["cli_error"]) for r in rows if "cli_error" in r]
    result = {"command": "benchmarks/plan_accuracy.py " + " ".join(sys.argv[1:]),
              "target": TARGET, "max_abs_error": max(errors), "within_target": all(e <= TARGET for e in errors),
              "seconds": round(time.time() - started, 1), "frames": args.frames, "threads": args.threads,
              "load_average": {"start": [round(v, 2) for v in load_start],
                               "end": [round(v, 2) for v in os.getloadavg()]},
              "baseline_versions": baseline.get("versions"), "machine": machine_info(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write(args.out.with_suffix(".md"), markdown(result))
    print(f"max |error| {max(errors):.1%} (target {TARGET:.0%}); wrote {args.out}.json and .md")
    return 0 if result["within_target"] else 1


def _load(result: dict, when: str) -> str:
    values = (result.get("load_average") or {}).get(when)
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def markdown(result: dict) -> str:
    lines = ["# edge plan: predicted vs measured peak RSS", "",
             f"`{result['command']}`, {result['frames']} frames per camera, {result['threads']} threads; "
             f"{result['machine']['cpu']}, {result['machine']['usable_cores']} usable cores. "
             f"Target: within {result['target']:.0%}; worst {result['max_abs_error']:.1%}. "
             f"Load average (1/5/15 min) {_load(result, 'start')} at the start, {_load(result, 'end')} at the end.", "",
             "Measured: `python -m edge.plan.measure` (edge run's pipeline, N synthetic cameras on one interpreter) and, "
             "for one camera, the real `edge run` summary's peak. MiB.", "",
             "| model | source | cameras | sinks | predicted | measured | error | edge run | error | peak at |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        cli = (f"{r['cli_peak'] / MB:.1f} | {r['cli_error']:+.1%}" if "cli_peak" in r else " | ")
        lines.append(f"| {r['model']} | {r['source']} | {r['cameras']} | {r['sinks']} | {r['predicted_peak'] / MB:.1f} | "
                     f"{r['measured_peak'] / MB:.1f} | {r['error']:+.1%} | {cli} | {r['peak_when']} |")
    per_model: dict[str, list] = {}
    for r in result["rows"]:
        per_model.setdefault(r["model"], []).append(r)
    lines += ["", "## Worst peak error per model", "", "| model | setups | within 10% | worst | at |", "|---|---:|---:|---:|---|"]
    for model, rs in per_model.items():
        worst = max(rs, key=lambda r: abs(r["error"]))
        inside = sum(abs(r["error"]) <= result["target"] for r in rs)
        lines.append(f"| {model} | {len(rs)} | {inside} | {worst['error']:+.1%} | {worst['source']} x{worst['cameras']} "
                     f"{worst['sinks']} |")
    lines += ["", "## Per component (first setup of each model)", "",
              "| model | component | predicted | measured | error |", "|---|---|---:|---:|---:|"]
    seen = set()
    for r in result["rows"]:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        for c in r["components"]:
            err = f"{c['error']:+.1%}" if c["error"] is not None else ""
            lines.append(f"| {r['model']} | {c['component']} | {c['predicted'] / MB:.2f} | {c['measured'] / MB:.2f} | {err} |")
    worst = {}
    for r in result["rows"]:
        for c in r["components"]:
            if c["error"] is not None and abs(c["error"]) > abs(worst.get(c["component"], 0.0)):
                worst[c["component"]] = c["error"]
    lines += ["", "## Worst error per component over all setups", "", "| component | worst error |", "|---|---:|"]
    lines += [f"| {k} | {v:+.1%} |" for k, v in worst.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
