"""What decoding a frame costs alone: the floor under any loop that reads a video on one core.

CPU milliseconds per frame of ``VideoCapture.read`` on the looped fixture video (one FFmpeg decoder
thread, as ``edge run`` reads a file), with OpenCV's conversion to BGR (what every loop here gets)
and without it (``CAP_PROP_CONVERT_RGB`` off: FFmpeg's decoded luma plane only, no colour), in
alternating rounds. On one core both ``edge run`` and the usual loop pay the first figure every
frame, so neither can spend less than it beside ``invoke()``.

    .venv/bin/python benchmarks/decode_cost.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write_json  # noqa: E402
from edge.provenance import machine_info  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"


def cpu_ms_per_frame(video: str, convert: bool, frames: int) -> float:
    cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    cap.set(cv2.CAP_PROP_CONVERT_RGB, 1 if convert else 0)
    ok, image = cap.read()
    if not ok:
        raise SystemExit(f"{video}: cannot decode")
    done = 0
    start = time.process_time()
    while done < frames:
        ok, image = cap.read(image)
        if not ok:  # the end of the file: rewind, as --loop does (the seek is counted too)
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        done += 1
    spent = time.process_time() - start
    cap.release()
    return spent / frames * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=str(FIXTURES / "video" / "traffic_960x540.mp4"))
    parser.add_argument("--frames", type=int, default=600, help="frames per round (default 600)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_cost.json")
    args = parser.parse_args()
    machine = machine_info()
    rounds = {"bgr": [], "luma_only": []}
    for _ in range(args.rounds):
        rounds["bgr"].append(cpu_ms_per_frame(args.video, True, args.frames))
        rounds["luma_only"].append(cpu_ms_per_frame(args.video, False, args.frames))
    medians = {k: round(float(np.median(v)), 3) for k, v in rounds.items()}
    result = {"benchmark": "decode_cost", "command": "benchmarks/decode_cost.py " + " ".join(sys.argv[1:]),
              "video": args.video, "frames_per_round": args.frames, "cpu_ms_per_frame_median": medians,
              "cpu_ms_per_frame_rounds": {k: [round(x, 3) for x in v] for k, v in rounds.items()},
              "conversion_to_bgr_ms": round(medians["bgr"] - medians["luma_only"], 3), "machine": machine}
    atomic_write_json(args.out, result)
    print(f"decode + BGR {medians['bgr']:.2f} ms of CPU a frame, decode alone {medians['luma_only']:.2f} ms "
          f"(median of {args.rounds} rounds of {args.frames}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
