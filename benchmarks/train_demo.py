"""Train the bundled demo detector (three shape classes) and record what it cost.

Runs the two CLI commands below as child processes, exactly as a user would, then reads the run's
history.json: time per training step, the trainer's peak RSS (getrusage of the children) and the
final validation mAP on held-out synthetic images. Writes benchmarks/results/train_demo.json.

    python benchmarks/train_demo.py --run-dir /work/demo_run --data-dir /tmp/demo_data \
        --backgrounds ../shared/fixtures/images --bundle edge/models/demo_run

``--bundle DIR`` also writes the run as the project ships it beside the demo model: config, history and
the model's variables without the optimizer's (convert/checkpoints.py: write_model_only_run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write_json  # noqa: E402


def run(cmd: list[str]) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="/tmp/edgekit_demo_run")
    ap.add_argument("--data-dir", default="/tmp/edgekit_demo_data")
    ap.add_argument("--train-images", type=int, default=1600)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--width", type=float, default=0.35)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--backgrounds", default=None, help="photos to paste shapes on (optional)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_demo.json"))
    ap.add_argument("--bundle", default=None, help="also write the run, model variables only, into this new folder")
    args = ap.parse_args()

    edge = [sys.executable, "-m", "edge.cli"]
    train_dir, val_dir = f"{args.data_dir}/train", f"{args.data_dir}/val"
    bg = ["--backgrounds", args.backgrounds] if args.backgrounds else []
    commands = [
        edge + ["data", "synth", "--out", train_dir, "--n", str(args.train_images), "--size", "320", "--seed", "1"] + bg,
        edge + ["data", "synth", "--out", val_dir, "--n", str(args.val_images), "--size", "320", "--seed", "2"] + bg,
        edge + ["train", "--data", train_dir, "--val-data", val_dir, "--out", args.run_dir,
                "--input-size", str(args.input_size), "--width", str(args.width), "--epochs", str(args.epochs),
                "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--backbone-weights", "none", "--quiet"],
    ]
    data_seconds = run(commands[0]) + run(commands[1])
    train_seconds = run(commands[2])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # largest child: the trainer

    history = json.loads((Path(args.run_dir) / "history.json").read_text())["epochs"]
    config = json.loads((Path(args.run_dir) / "config.json").read_text())
    steps = history[-1]["step"]
    # Epoch 1 includes tracing; the steady-state step time comes from the later epochs.
    later = history[1:] or history
    per_step = sum(e["seconds"] for e in later) / sum(config["training"]["steps_per_epoch"] for _ in later)
    result = {
        "commands": [shlex.join(c).replace(sys.executable, "python") for c in commands],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": {"input_size": args.input_size, "width": args.width, "labels": config["labels"],
                  "anchors": config["anchors"]["feature_map_sizes"]},
        "steps": steps, "batch_size": args.batch_size,
        "seconds_per_step": round(per_step, 4),
        "train_seconds_total": round(train_seconds, 1), "data_seconds": round(data_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "final_val_map50": history[-1].get("val_map50"), "final_val_map": history[-1].get("val_map"),
        "val_map50_per_epoch": [round(e.get("val_map50", 0.0), 4) for e in history],
        "run_dir": str(args.run_dir),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"{'steps':>8} {'s/step':>8} {'peak RSS MB':>12} {'val mAP@0.5':>12} {'mAP':>8}")
    print(f"{steps:>8} {per_step:>8.3f} {peak_rss_mb:>12.1f} {result['final_val_map50']:>12.3f} "
          f"{result['final_val_map']:>8.3f}")
    print(f"wrote {args.out}")
    if args.bundle:
        from convert.checkpoints import write_model_only_run

        print(f"wrote {write_model_only_run(args.run_dir, args.bundle)} (model variables only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
