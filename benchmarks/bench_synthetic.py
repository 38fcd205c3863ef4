"""Regenerate benchmarks/results/bench_synthetic.*: ours vs usual on the synthetic source.

The synthetic source draws moving shapes into one preallocated 640x480 frame (no decoding), so
capture costs almost nothing and the comparison isolates preprocess/postprocess. The model is the
bundled demo detector when it exists (edge/models/demo_ssd_int8.tflite), else the fixture SSD.

    .venv/bin/python benchmarks/bench_synthetic.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bench.run import run_and_write  # noqa: E402
from edge.bench.settings import BenchSettings  # noqa: E402
from targets import print_targets  # noqa: E402  (benchmarks/targets.py)

FIXTURE_MODEL = ROOT.parent / "shared" / "fixtures" / "models" / "ssd_mobilenet_v1_coco_quant.tflite"
DEMO_MODEL = ROOT / "edge" / "models" / "demo_ssd_int8.tflite"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL if DEMO_MODEL.is_file() else FIXTURE_MODEL)
    parser.add_argument("--source", default="synthetic:640x480")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--mem-frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--traced-warmup", type=int, default=None,
                        help="traced frames before recording (default: what the source asks for; synthetic: 400)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="bench_synthetic")
    args = parser.parse_args()
    settings = BenchSettings(models=[args.model], source=args.source, frames=args.frames, warmup=args.warmup,
                             mem_frames=args.mem_frames, threads=args.threads, rounds=args.rounds, traced_warmup=args.traced_warmup)
    report = run_and_write(settings, args.out, args.name, "benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]))
    print_targets(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
