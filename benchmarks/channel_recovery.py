"""How much accuracy fine-tuning wins back after channel pruning, by learning rate, steps and teacher.

One trained run (by default the tests' tiny SSD: MobileNetV2 0.35, 160 px, three synthetic shapes,
330 steps, built here in ~3 min), narrowed once at ``--remove`` (the same channels for every
variant: importance on 16 training images, widths by MACs so no latency probes are needed), then
each variant fine-tunes a fresh copy of that narrowed network and is scored on the held-out set
(float Keras mAP@0.5: the question is what the weights recover, before quantization). Run from the
project root:

    .venv/bin/python benchmarks/channel_recovery.py                    # ~12 min on 2 cores
    .venv/bin/python benchmarks/channel_recovery.py --variant 600:4e-3:0 --out /tmp/long.json
    .venv/bin/python benchmarks/channel_recovery.py --run runs/demo --data data/shapes --val data/shapes_val
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "channel_recovery.json"
# (steps, peak learning rate, distillation weight); 2e-4 is the sparsity/QAT fine-tuning rate.
VARIANTS = [(40, 2e-4, 1.0), (40, 1e-3, 1.0), (40, 4e-3, 1.0), (40, 4e-3, 0.0),
            (120, 4e-3, 1.0), (120, 4e-3, 0.0), (300, 4e-3, 1.0)]


def tiny_run(folder: Path) -> tuple[Path, Path, Path]:
    """The tests' session SSD (tests/conftest.py:trained_run), trained into ``folder``."""
    from convert.config import SSDConfig
    from convert.data.synth import write_synthetic_voc
    from convert.train import train

    train_set = write_synthetic_voc(folder / "train", 240, size=160, seed=1)
    write_synthetic_voc(folder / "val", 80, size=160, seed=2)
    config = SSDConfig.create(list(train_set.labels), input_size=160, width=0.35)
    train(config, train_set, folder / "run", epochs=22, batch_size=16, steps_per_epoch=15, learning_rate=4e-3,
          verbose=0)
    return folder / "run", folder / "train", folder / "val"


def _variant(text: str) -> tuple[int, float, float]:
    try:
        steps, rate, weight = text.split(":")
        return int(steps), float(rate), float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STEPS:LR:WEIGHT, e.g. 300:4e-3:1") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train the tiny one)")
    parser.add_argument("--data", type=Path, help="its training data (VOC), with --run")
    parser.add_argument("--val", type=Path, help="its held-out data (VOC), with --run")
    parser.add_argument("--remove", type=float, default=0.5, help="fraction of the prunable channels removed")
    parser.add_argument("--variant", action="append", type=_variant, metavar="STEPS:LR:WEIGHT",
                        help="run only these fine-tunings (repeatable), e.g. 600:4e-3:0; default: the table's")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from convert import channel_plan, channels, quantize
    from convert.checkpoints import load_trained_model
    from convert.data import load_dataset
    from convert.distill import DistillConfig, Teacher
    from convert.evaluate import evaluate_keras
    from convert.finetune import make_fine_tuner
    from edge.files import atomic_write_json
    from edge.provenance import machine_info

    with tempfile.TemporaryDirectory(prefix="edge-recovery-") as scratch:
        if args.run is None:
            print("training the tiny run ...", flush=True)
            run_dir, data_dir, val_dir = tiny_run(Path(scratch))
        else:
            run_dir, data_dir, val_dir = args.run, args.data, args.val
        model, config = load_trained_model(run_dir)
        train_set, val_set = load_dataset(data_dir), load_dataset(val_dir)

        def map50(network) -> float:
            return round(100 * evaluate_keras(network, config, val_set).map50, 1)

        size = config.architecture.input_size
        frames = quantize.load_calibration_frames([s.image_path for s in train_set.samples], size, size, 16)
        norm = config.normalization
        images = np.concatenate([(f - norm.mean) / norm.std for f in frames]).astype(np.float32)
        groups = channels.find_groups(model)
        importance = channels.channel_importance(model, groups, images)
        by_macs = channel_plan.LatencyTable(dense_ms=10.0, ms_per_channel={  # 1e-7 ms per MAC: a CPU's order
            g.name: 1e-7 * channels.group_macs(model, g) / g.channels for g in groups})
        widths = channel_plan.choose_widths(groups, importance, by_macs, remove_fraction=args.remove)
        kept = {g.name: channels.keep_indices(importance[g.name]["score"], widths[g.name]) for g in groups}
        dense_map = map50(model)
        narrowed = channels.narrow_model(model, groups, kept, importance)
        rows = [{"variant": "dense", "map50": dense_map},
                {"variant": "narrowed, no fine-tuning", "map50": map50(narrowed),
                 "params_ratio": round(channels.count_params(narrowed) / channels.count_params(model), 3)}]
        print(f"dense {dense_map}; narrowed at R {args.remove}, no fine-tuning {rows[1]['map50']}", flush=True)
        for steps, rate, weight in args.variant or VARIANTS:
            network = channels.narrow_model(model, groups, kept, importance)
            teacher = Teacher(model, config, config) if weight else None
            tuner = make_fine_tuner(config, train_set, 8, learning_rate=rate, warmup_steps=None, seed=2,
                                    teacher=teacher, distill=DistillConfig(weight=weight) if weight else None)
            start = time.perf_counter()
            tuner(network, steps, [])
            row = {"variant": "fine-tuned", "steps": steps, "learning_rate": rate, "distill_weight": weight,
                   "map50": map50(network), "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"{steps:4d} steps, lr {rate:g}, distill {weight:g}: mAP@0.5 {row['map50']} "
                  f"({row['seconds']} s)", flush=True)
    atomic_write_json(args.out, {"command": "benchmarks/channel_recovery.py " + " ".join(sys.argv[1:]),
                                 "machine": machine_info(), "load_average_end": os.getloadavg()[0],
                                 "remove_fraction": args.remove, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
