"""Regenerate benchmarks/results/detectors_throughput.*: ``edge run --config --detectors K`` end to end.

Four cameras (the fixture traffic video, looped, in each: none loses a frame, so fps is the
detectors' throughput with four capture threads decoding beside them) on the fixture SSD, run as a
user runs them, each setting in a fresh ``edge run`` process: one detector on all cores, one
detector on one core fewer, and K detectors sharing the cores (``--threads auto`` gives each
cores / K threads). The settings take turns, ``--rounds`` times, so the machine's load falls on
all of them alike; per setting the median fps of its rounds, the ratio to one detector on all
cores, and the RSS at the end of the run (an extra detector is a second interpreter: its arena
and its packed weights). Run from the project root:

    .venv/bin/python benchmarks/detectors_throughput.py                 # ~6 minutes on 2 cores
    .venv/bin/python benchmarks/detectors_throughput.py --model edge/models/demo_ssd_int8.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write, atomic_write_json  # noqa: E402
from edge.provenance import usable_cores  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
SUMMARY = re.compile(r"cameras: (\d+), (\d+) frames in ([\d.]+) s, ([\d.]+) fps")
MEMORY = re.compile(r"memory: RSS ([\d.]+) MB at start, ([\d.]+) MB at end, peak ([\d.]+) MB")
DETECTOR_FRAMES = re.compile(r"\d+ detectors: ([\d, frames]+)")


def settings(cores: int) -> list[dict]:
    out = [{"name": f"1 detector, {cores} threads", "detectors": 1, "threads": cores}]
    if cores > 1:
        out.append({"name": f"1 detector, {cores - 1} thread{'s' if cores > 2 else ''}", "detectors": 1,
                    "threads": cores - 1})
        out.append({"name": f"2 detectors, {max(1, cores // 2)} thread{'s' if cores // 2 > 1 else ''} each",
                    "detectors": 2, "threads": max(1, cores // 2)})
    if cores >= 4:
        out.append({"name": f"4 detectors, {max(1, cores // 4)} thread(s) each", "detectors": 4,
                    "threads": max(1, cores // 4)})
    return out


def run_once(args: argparse.Namespace, config: Path, setting: dict) -> dict:
    command = [sys.executable, "-m", "edge.cli", "run", str(args.model), "--config", str(config),
               "--detectors", str(setting["detectors"]), "--threads", str(setting["threads"]),
               "--duration", str(args.duration), "--stats-every", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + 120)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    summary, memory = SUMMARY.search(result.stderr), MEMORY.search(result.stderr)
    split = DETECTOR_FRAMES.search(result.stderr)
    return {"frames": int(summary.group(2)), "seconds": float(summary.group(3)), "fps": float(summary.group(4)),
            "rss_end_mb": float(memory.group(2)), "rss_peak_mb": float(memory.group(3)),
            "detector_frames": [int(n) for n in re.findall(r"(\d+) frames", split.group(1))] if split else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=FIXTURES / "models" / "ssd_mobilenet_v1_coco_quant.tflite")
    parser.add_argument("--source", default=str(FIXTURES / "video" / "traffic_960x540.mp4"))
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="detectors_throughput")
    args = parser.parse_args()
    for path, what in ((args.model, "--model"), (Path(args.source), "--source")):
        if not path.exists():
            raise SystemExit(f"{what} {path}: not found (the fixtures live in ../shared/fixtures)")
    cores = usable_cores()
    chosen = settings(cores)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cameras.json"
        config.write_text(json.dumps({"cameras": [{"name": f"cam{i}", "source": args.source, "loop": True}
                                                  for i in range(args.cameras)]}))
        runs: dict[str, list[dict]] = {s["name"]: [] for s in chosen}
        t0 = time.monotonic()
        for round_index in range(args.rounds):
            for setting in chosen:
                outcome = run_once(args, config, setting)
                runs[setting["name"]].append(outcome)
                print(f"round {round_index + 1}/{args.rounds}: {setting['name']}: {outcome['fps']:.1f} fps, "
                      f"RSS {outcome['rss_end_mb']:.1f} MB", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    base = statistics.median(r["fps"] for r in runs[chosen[0]["name"]])
    rows = []
    for setting in chosen:
        fps = statistics.median(r["fps"] for r in runs[setting["name"]])
        rows.append({**setting, "fps_median": fps, "vs_one_detector_all_cores": fps / base if base else None,
                     "rss_end_mb_median": statistics.median(r["rss_end_mb"] for r in runs[setting["name"]]),
                     "runs": runs[setting["name"]]})
    # What edge plan predicts an extra detector costs, beside what it cost here (same threads per interpreter)
    from edge.plan.components import Setup
    from edge.plan.predict import predict

    for row in rows:
        if row["detectors"] == 1:
            continue
        same = next((r for r in rows if r["detectors"] == 1 and r["threads"] == row["threads"]), None)
        if same is None:
            continue
        plan = predict(args.model, Setup(960, 540, args.cameras, row["threads"], cores=cores,
                                         detectors=row["detectors"]))
        further = next(c.bytes for c in plan.components if c.name == "each further detector") / 2**20
        measured = row["rss_end_mb_median"] - same["rss_end_mb_median"]
        row["further_detectors_rss_mb"] = {"measured": round(measured, 2), "edge_plan": round(further, 2),
                                           "error": round((further - measured) / measured, 3) if measured else None}
    report = {"command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
              "model": str(args.model.name), "source": Path(args.source).name, "cameras": args.cameras,
              "duration_s": args.duration, "rounds": args.rounds, "usable_cores": cores,
              "load_average_start": round(load_start[0], 2), "load_average_end": round(load_end[0], 2),
              "run_time_s": round(time.monotonic() - t0, 1), "settings": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.name}.json", report)
    lines = [f"# edge run --config --detectors K: {args.cameras} cameras ({Path(args.source).name}, looped), "
             f"{args.model.name}", "",
             f"`{report['command'].strip()}`; {cores} usable cores; load average {load_start[0]:.2f} at start, "
             f"{load_end[0]:.2f} at end; median of {args.rounds} rounds of {args.duration:g} s, settings in turn", "",
             "| setting | fps (all cameras) | vs 1 detector on all cores | RSS at end |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['fps_median']:.1f} | {row['vs_one_detector_all_cores']:.2f}x | "
                     f"{row['rss_end_mb_median']:.1f} MB |")
    for row in rows:
        extra = row.get("further_detectors_rss_mb")
        if extra:
            lines.append("")
            lines.append(f"{row['name']}: the further detector{'s' if row['detectors'] > 2 else ''} added "
                         f"{extra['measured']:.1f} MB of RSS over 1 detector at {row['threads']} thread(s); "
                         f"edge plan --detectors {row['detectors']} predicts {extra['edge_plan']:.1f} MB "
                         f"({extra['error']:+.1%})")
    atomic_write(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
