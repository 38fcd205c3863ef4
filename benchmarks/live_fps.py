"""End-to-end `edge run` fps on a looped 960x540 video vs bare `invoke()` fps, same model and threads.

The target (benchmarks/targets.py) is at least 0.90 of bare invoke: capture (decode and resize)
runs on its own thread and overlaps with inference. Prints a table with met/missed per thread
count and writes benchmarks/results/live_fps.json.

    .venv/bin/python benchmarks/live_fps.py --model ../shared/fixtures/models/ssd_mobilenet_v1_coco_quant.tflite \
        --video ../shared/fixtures/video/traffic_960x540.mp4 --frames 600 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.detector.detector import Detector  # noqa: E402
from edge.live.loop import LiveLoop  # noqa: E402
from edge.files import atomic_write_json  # noqa: E402
from edge.live.sources import open_source  # noqa: E402
from edge.provenance import machine_info  # noqa: E402
from targets import OURS_OVER_BARE_FPS, verdict  # noqa: E402  (benchmarks/targets.py)

RESULTS = Path(__file__).resolve().parent / "results" / "live_fps.json"


def bare_invoke_fps(detector: Detector, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        detector.invoke()
    return frames / (time.perf_counter() - start)


def live_fps(detector: Detector, video: str, frames: int) -> tuple[float, dict]:
    source = open_source(video, loop=True)
    summary = LiveLoop(detector, source, [], max_frames=frames, stats_every=0, rss_every=0).run()
    return summary.fps, summary.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="alternate bare/live this many times, keep the best")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    rows = []
    for threads in args.threads:
        detector = Detector(args.model, num_threads=threads)
        frame = open_source(args.video).read()
        detector.detect(frame)
        for _ in range(20):  # warm-up
            detector.invoke()
        bare, live, last = [], [], {}
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits both alike
            bare.append(bare_invoke_fps(detector, args.frames))
            fps, last = live_fps(detector, args.video, args.frames)
            live.append(fps)
        row = {
            "threads": threads, "frames": args.frames, "bare_invoke_fps": max(bare), "end_to_end_fps": max(live),
            "ratio": max(live) / max(bare), "bare_rounds": bare, "live_rounds": live,
            "stages_ms_p50": {k: v["p50"] * 1e3 for k, v in last["stages"].items()},
            "runtime": detector.runtime_info.describe(),
        }
        rows.append(row)
    print(f"{'threads':>7} {'bare invoke fps':>16} {'end-to-end fps':>15} {'ratio':>6}  "
          f"target >= {OURS_OVER_BARE_FPS:.2f}")
    for r in rows:
        r["target_met"] = r["ratio"] >= OURS_OVER_BARE_FPS
        print(f"{r['threads']:>7} {r['bare_invoke_fps']:>16.1f} {r['end_to_end_fps']:>15.1f} {r['ratio']:>6.3f}  "
              f"{verdict(r['target_met'])}")
    report = {
        "benchmark": "live_fps", "model": Path(args.model).name, "video": Path(args.video).name,
        "target_ratio": OURS_OVER_BARE_FPS, "machine": {**machine_info(), "load_average_at_end": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
