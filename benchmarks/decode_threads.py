"""FFmpeg decoder threads for a video file: FFmpeg's own choice (one per core) against one, end to end.

Ours (the capture thread + the frame step, as ``edge run`` and ``edge bench`` run them) on the
looped fixture video with each decoder setting, and the usual loop, interleaved round by round in
one process so that load from other processes falls on each alike; the figure is each round's fps
ratio to the usual loop's, and in how many rounds one decoder thread beat FFmpeg's choice.
Run from the project root:

    .venv/bin/python benchmarks/decode_threads.py                  # ~6 min on 2 cores
    .venv/bin/python benchmarks/decode_threads.py --rounds 4 --frames 100 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bench.baseline import BaselinePipeline  # noqa: E402
from edge.bench.pipelines import BaselineLoop, OursLoop  # noqa: E402
from edge.detector.detector import Detector  # noqa: E402
from edge.detector.stages import StageTimes  # noqa: E402
from edge.files import atomic_write_json  # noqa: E402
from edge.provenance import machine_info  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
RESULTS = Path(__file__).resolve().parent / "results" / "decode_threads.json"
WARMUP = 20


def file_source(video: str, decode_threads: int):
    import cv2

    from edge.live.source_kinds import VideoCaptureSource

    return VideoCaptureSource(video, video, cv2.CAP_FFMPEG, kind="file", live=False, loop=True,
                              decode_threads=decode_threads)


def fps_of(loop, frames: int) -> float:
    times = StageTimes(capacity=frames + WARMUP + 8)
    for _ in range(WARMUP):
        loop.frame(times)
    start = time.perf_counter()
    for _ in range(frames):
        loop.frame(times)
    return frames / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(FIXTURES / "models" / "ssd_mobilenet_v1_coco_quant.tflite"))
    parser.add_argument("--video", default=str(FIXTURES / "video" / "traffic_960x540.mp4"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="interpreter threads (default: all cores)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per pipeline per round")
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    detector = Detector(args.model, num_threads=args.threads)
    indices = {role: spec.index for role, spec in detector.outputs.items()}
    baseline = BaselinePipeline(args.model, output_indices=indices, num_threads=args.threads)
    variants = {"ours, FFmpeg's decoder threads": 0, "ours, one decoder thread": 1}
    fps: dict[str, list[float]] = {name: [] for name in [*variants, "usual"]}
    load_start = os.getloadavg()[0]
    for round_index in range(args.rounds):
        for name, decode_threads in variants.items():
            loop = OursLoop(detector, file_source(args.video, decode_threads))
            try:
                fps[name].append(fps_of(loop, args.frames))
            finally:
                loop.close()
        loop = BaselineLoop(baseline, file_source(args.video, 0))  # the examples open files as OpenCV does
        try:
            fps["usual"].append(fps_of(loop, args.frames))
        finally:
            loop.close()
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in fps.items()),
              flush=True)
    usual = np.array(fps["usual"])
    default, single = (np.array(fps[name]) for name in variants)
    summary = {name: {"median_fps": round(float(np.median(v)), 2),
                      "median_ratio_to_usual": round(float(np.median(np.array(v) / usual)), 3)}
               for name, v in fps.items()}
    wins = int(np.sum(single > default))
    print()
    for name, row in summary.items():
        print(f"{name:32s} median {row['median_fps']:6.1f} fps, {row['median_ratio_to_usual']:.3f}x the usual loop")
    print(f"one decoder thread faster than FFmpeg's choice in {wins} of {args.rounds} rounds "
          f"(median ratio {float(np.median(single / default)):.3f}); load average {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    atomic_write_json(args.out, {
        "command": "benchmarks/decode_threads.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()[0]}, "interpreter_threads": args.threads,
        "frames_per_round": args.frames, "fps_by_round": {k: [round(x, 2) for x in v] for k, v in fps.items()},
        "summary": summary, "one_thread_wins": wins, "rounds": args.rounds,
        "one_thread_over_default_median": round(float(np.median(single / default)), 3)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
