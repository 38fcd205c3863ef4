"""Invoke time and file size of several ``.tflite`` models, timed side by side in one process.

For models built by separate runs (e.g. pruned variants from separate ``compression_frontier.py``
runs on the same teacher): the same interleaved timing the frontier uses (rounds of invokes per
model on one image, so a noisy neighbour slows all alike), ratios against the first model.

    .venv/bin/python benchmarks/int8_side_by_side.py dense.tflite pruned_a.tflite pruned_b.tflite \\
        --image val/JPEGImages/000000.jpg --out /tmp/side_by_side.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compression_frontier import load_average, side_by_side_latency  # noqa: E402
from edge.files import atomic_write_json  # noqa: E402
from edge.provenance import machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+", help="the .tflite files; the first is the reference")
    ap.add_argument("--image", type=Path, required=True, help="the image every model is invoked on")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--invokes", type=int, default=30, help="invokes per model per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    for path in [*args.models, args.image]:
        if not path.is_file():
            ap.error(f"{path}: no such file")
    start_load = load_average()
    names = {str(p): p for p in args.models}
    latency, runtime = side_by_side_latency(names, args.image, args.rounds, args.invokes, args.threads)
    first = str(args.models[0])
    rows = [{"model": name, "size_bytes": path.stat().st_size,
             "size_ratio": path.stat().st_size / args.models[0].stat().st_size,
             "invoke_median_ms": latency[name]["median_ms"],
             "invoke_ratio": latency[name]["median_ms"] / latency[first]["median_ms"]}
            for name, path in names.items()]
    for r in rows:
        print(f"{r['size_bytes'] / 1024:8.0f} KiB {r['size_ratio']:5.2f}x  {r['invoke_median_ms']:6.2f} ms "
              f"{r['invoke_ratio']:5.2f}x  {r['model']}")
    result = {"command": " ".join(["python", "benchmarks/int8_side_by_side.py", *(argv or sys.argv[1:])]),
              "runtime": runtime, "threads": args.threads, "rounds": args.rounds, "invokes_per_round": args.invokes,
              "machine": machine_info(), "load_average": {"start": start_load, "end": load_average()}, "rows": rows}
    print(f"{runtime}; load average {result['load_average']}")
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
