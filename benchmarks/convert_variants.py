"""Float vs int8 vs pruned int8 vs pruned QAT int8 of one trained SSD: size, gzip, sparsity, mAP, latency.

Each variant goes through ``edge convert``'s own pipeline (convert.conversion.convert), so the
numbers are those a user gets. Latency is ``invoke()`` only (median and p90 over --runs), on this
machine's runtime; x86 int8 is not faster than float, ARM is where int8 pays.

    .venv/bin/python -m edge.cli data synth --out /tmp/shapes/train --n 240 --size 160 --seed 1
    .venv/bin/python -m edge.cli data synth --out /tmp/shapes/val --n 80 --size 160 --seed 2
    .venv/bin/python -m edge.cli train --data /tmp/shapes/train --val-data /tmp/shapes/val --out /tmp/shapes/run \
        --input-size 160 --width 0.35 --epochs 30 --batch-size 16 --lr 4e-3 --backbone-weights none --quiet
    .venv/bin/python benchmarks/convert_variants.py --run /tmp/shapes/run --data /tmp/shapes/train --val /tmp/shapes/val

Writes benchmarks/results/convert_variants.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "float32": {"float_model": True, "sparsity": 0.0},
    "int8": {"sparsity": 0.0},
    "pruned int8": {"sparsity": 0.5},
    "pruned QAT int8 (PQAT)": {"sparsity": 0.5, "qat": True},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run directory")
    parser.add_argument("--data", type=Path, required=True, help="training data (fine-tuning, calibration)")
    parser.add_argument("--val", type=Path, required=True, help="held-out VOC set")
    parser.add_argument("--prune-steps", type=int, default=300)
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--runs", type=int, default=100, help="timed invokes per model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "convert_variants")
    args = parser.parse_args(argv)

    from convert.conversion import ConvertOptions, convert
    from convert.report import table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in VARIANTS.items():
            options = ConvertOptions(source=args.run, output=Path(tmp) / f"{len(rows)}.tflite", calib=args.data,
                                     val=args.val, data=args.data, prune_steps=args.prune_steps,
                                     qat_steps=args.qat_steps, latency_runs=args.runs)
            for key, value in settings.items():
                setattr(options, key, value)
            start = time.perf_counter()
            report = convert(options, log=lambda _: None)
            seconds = time.perf_counter() - start
            entry = report["models"][list(report["models"])[-1]]
            print(table(report), "\n", flush=True)
            fine_tune = sum(s["seconds"] for s in report["steps"] if s["name"] in ("prune", "QAT fine-tune"))
            rows.append({
                "variant": name, "quantization": report["quantization"],
                "size_kib": entry["stats"]["size_kib"], "gzip_kib": entry["stats"]["gzip_kib"],
                "sparsity": entry["stats"]["sparsity"]["overall"],
                "sparsity_by_kind": entry["stats"]["sparsity"]["by_kind"],
                "map50": entry["eval"]["map50"], "map": entry["eval"]["map"],
                "float_map50": report["models"]["float"]["eval"]["map50"] if "float" in report["models"] else None,
                "median_ms": entry["latency"]["median_ms"], "p90_ms": entry["latency"]["p90_ms"],
                "runtime": entry["latency"]["runtime"],
                "conversion_s": round(seconds, 1), "fine_tune_s": round(fine_tune, 1),
                "input": entry["stats"]["input"],
            })
    payload = {"run": str(args.run), "val": str(args.val), "prune_steps": args.prune_steps,
               "qat_steps": args.qat_steps, "variants": rows, "versions": report["versions"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| variant | size KiB | gzip KiB | sparsity | mAP@0.5 | mAP@[.5:.95] | median ms | p90 ms | conversion s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['size_kib']:.0f} | {r['gzip_kib']:.0f} | {r['sparsity']:.3f} | "
                     f"{100 * r['map50']:.1f} | {100 * r['map']:.1f} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['conversion_s']:.0f} |")
    lines.append("")
    lines.append(f"Runtime: {rows[0]['runtime']}. Model: {args.run}; held-out set: {args.val}. "
                 f"Pruning {args.prune_steps} steps, QAT {args.qat_steps} steps; conversion time includes fine-tuning "
                 "and validation of the float reference.")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
