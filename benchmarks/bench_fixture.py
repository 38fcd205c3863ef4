"""Regenerate benchmarks/results/bench_fixture.*: the fixture SSD on the fixture video, ours vs usual.

Google's int8 SSD MobileNet v1 COCO (../shared/fixtures/models) on 20 real 960x540 traffic frames
(../shared/fixtures/video), looped, at edge bench's default thread choice (auto: ours measures all
cores against one left for capture and keeps the faster; the usual pipeline runs at each and its best
counts); then the project's targets (benchmarks/targets.py), met or missed. Run from the project root
(``taskset -c 0`` in front gives the one-core figures):

    .venv/bin/python benchmarks/bench_fixture.py            # ~5-10 min on 2 shared cores
    .venv/bin/python benchmarks/bench_fixture.py --frames 300 --out /tmp/quick
    .venv/bin/python benchmarks/bench_fixture.py --detectors 2 --name bench_fixture_detectors2
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

FIXTURES = ROOT.parent / "shared" / "fixtures"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=FIXTURES / "models" / "ssd_mobilenet_v1_coco_quant.tflite")
    parser.add_argument("--source", default=str(FIXTURES / "video" / "traffic_960x540.mp4"))
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--mem-frames", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=lambda s: s if s == "auto" else int(s), default="auto",
                        help="interpreter threads, or auto (default, as edge bench and edge run)")
    parser.add_argument("--detectors", type=lambda s: s if s == "auto" else int(s), default="auto",
                        help="ours runs this many copies of the model, frames in turn (edge run --detectors K); "
                             "auto (default) as edge run's")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="bench_fixture")
    args = parser.parse_args()
    settings = BenchSettings(models=[args.model], source=args.source, frames=args.frames, warmup=args.warmup,
                             mem_frames=args.mem_frames, threads=args.threads, rounds=args.rounds,
                             detectors=args.detectors)
    report = run_and_write(settings, args.out, args.name, "benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]))
    print_targets(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
