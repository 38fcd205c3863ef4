"""Few images: the same small training run from a random backbone and from a real OD API export.

Writes ``--train-images`` / ``--val-images`` synthetic shape images (``edge data synth`` with photo
backgrounds) at ``--input-size``, then trains twice with the same schedule through ``edge train`` as
child processes, exactly as a user would: ``--backbone-weights none`` and ``--backbone-weights EXPORT``
(an OD API SSDLite MobileNetV2 frozen graph: backbone and extra layers mapped and verified, heads new
because the classes differ; ``--freeze-backbone-epochs`` applies to this run only). Both runs are
width 1.0 (the export's). Reports validation mAP@0.5 after every epoch, and the time, as JSON.

    python benchmarks/few_images.py --export ../shared/fixtures/odapi/ssdlite_mobilenet_v2_person_frozen.pb \\
        --backgrounds ../shared/fixtures/images --out /tmp/few_images.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write_json  # noqa: E402
from edge_commands import EDGE, run  # noqa: E402  (benchmarks/edge_commands.py)

DEFAULT_EXPORT = ROOT.parent / "shared" / "fixtures" / "odapi" / "ssdlite_mobilenet_v2_person_frozen.pb"
DEFAULT_BACKGROUNDS = ROOT.parent / "shared" / "fixtures" / "images"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", default=str(DEFAULT_EXPORT), help="OD API SSD MobileNetV2 frozen graph")
    ap.add_argument("--backgrounds", default=str(DEFAULT_BACKGROUNDS), help="photos to paste shapes on")
    ap.add_argument("--work-dir", default="/tmp/edgekit_few_images")
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--val-images", type=int, default=150)
    ap.add_argument("--input-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--freeze-backbone-epochs", type=int, default=1, help="for the pretrained run")
    ap.add_argument("--scratch-width", type=float, default=1.0,
                    help="width of the from-scratch run (the export's backbone is 1.0; 0.5 is edge train's default)")
    ap.add_argument("--runs", default="none,odapi_export", help="which runs, comma-separated: none, odapi_export")
    ap.add_argument("--report-epochs", default="5,10,20",
                    help="epochs whose validation mAP the summary line shows (every epoch is in the JSON)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "few_images.json"))
    args = ap.parse_args()

    edge = EDGE
    work = Path(args.work_dir)
    train_dir, val_dir = work / "train", work / "val"
    size = str(args.input_size)
    synth = [edge + ["data", "synth", "--out", str(train_dir), "--n", str(args.train_images), "--size", size,
                     "--seed", "11", "--backgrounds", args.backgrounds],
             edge + ["data", "synth", "--out", str(val_dir), "--n", str(args.val_images), "--size", size,
                     "--seed", "12", "--backgrounds", args.backgrounds]]
    if not (train_dir / "labels.txt").is_file() or not (val_dir / "labels.txt").is_file():
        for cmd in synth:
            run(cmd)
    common = ["train", "--data", str(train_dir), "--val-data", str(val_dir), "--input-size", size,
              "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
              "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--quiet", "--workers", "1"]
    runs = {
        "none": ["--width", str(args.scratch_width), "--backbone-weights", "none"],
        "odapi_export": ["--width", "1.0", "--backbone-weights", args.export,
                         "--freeze-backbone-epochs", str(args.freeze_backbone_epochs)],
    }
    chosen = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in runs]
    if unknown or not chosen:
        ap.error(f"--runs {args.runs}: choose from {', '.join(runs)}")
    runs = {name: runs[name] for name in chosen}
    results = {}
    commands = []
    for name, extra in runs.items():
        run_dir = work / f"run_{name}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        cmd = edge + common + ["--out", str(run_dir)] + extra
        commands.append(cmd)
        seconds = run(cmd)
        history = json.loads((run_dir / "history.json").read_text())["epochs"]
        results[name] = {
            "width": float(extra[1]),
            "val_map50_per_epoch": [round(e.get("val_map50", 0.0), 4) for e in history],
            "val_map_per_epoch": [round(e.get("val_map", 0.0), 4) for e in history],
            "backbone_per_epoch": [e.get("backbone") for e in history],
            "final_val_map50": history[-1].get("val_map50"), "final_val_map": history[-1].get("val_map"),
            "train_seconds": round(seconds, 1),
        }
    result = {
        "commands": [shlex.join(c).replace(sys.executable, "python") for c in synth + commands],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "train_images": args.train_images, "val_images": args.val_images, "input_size": args.input_size,
        "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "images_seen": args.epochs * args.steps_per_epoch * args.batch_size,
        "runs": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    shown = [int(e) for e in args.report_epochs.split(",") if e.strip() and 0 < int(e) <= args.epochs]
    print(f"{'backbone':>14} {'width':>6} " + " ".join(f"{'ep ' + str(e):>7}" for e in shown) + f" {'seconds':>8}")
    for name, r in results.items():
        per_epoch = r["val_map50_per_epoch"]
        print(f"{name:>14} {r['width']:>6} " + " ".join(f"{per_epoch[e - 1]:>7.3f}" for e in shown)
              + f" {r['train_seconds']:>8.0f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
