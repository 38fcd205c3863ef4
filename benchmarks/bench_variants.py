"""Regenerate benchmarks/results/bench_variants.*: several variants of one model in one table.

For the demo model's float / int8 / pruned int8 exports (from ``edge convert``), or any set of
``.tflite`` files, on the same source and threads, in one process:

    .venv/bin/python benchmarks/bench_variants.py demo_float.tflite demo_int8.tflite demo_pruned_int8.tflite

Each model gets bare invoke(), ours and the usual pipeline; the table compares them all, and the
project's targets (benchmarks/targets.py) are checked per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bench.run import run_and_write  # noqa: E402
from edge.bench.settings import BenchSettings  # noqa: E402
from edge.errors import EdgeError  # noqa: E402
from targets import print_targets  # noqa: E402  (benchmarks/targets.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="the variants, e.g. float, int8, pruned int8")
    parser.add_argument("--source", default="synthetic:640x480")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--mem-frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--traced-warmup", type=int, default=None,
                        help="traced frames before recording (default: what the source asks for; synthetic: 400)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="bench_variants")
    args = parser.parse_args()
    settings = BenchSettings(models=list(args.models), source=args.source, frames=args.frames, warmup=args.warmup,
                             mem_frames=args.mem_frames, threads=args.threads, rounds=args.rounds, traced_warmup=args.traced_warmup)
    try:
        report = run_and_write(settings, args.out, args.name,
                               "benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]))
    except EdgeError as exc:
        print(f"bench_variants: error: {exc}", file=sys.stderr)
        return 2
    print_targets(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
