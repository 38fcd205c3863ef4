"""Distillation at equal steps: one small student trained alone and taught by a larger-input teacher.

Both students have the same width, input size, data, schedule and seed (``edge train ... --backbone-weights
none``); the second adds ``--teacher RUN``. They run as child processes through the ``edge`` CLI, exactly as
a user would, and are then converted to int8 (``edge convert --sparsity 0``) and evaluated on the
held-out set (``edge eval --voc``). Reports validation mAP@0.5 (float) after every epoch and the int8
mAP@0.5 of both, as JSON.

The default teacher is the bundled demo run (``edge/models/demo_run``: width 0.35 at 224 px), on the
demo's own data (``edge data synth`` with the demo's seeds and photo backgrounds, as
``benchmarks/train_demo.py`` writes it); the default student is the same width at 160 px.

    python benchmarks/distill_students.py --backgrounds ../shared/fixtures/images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write_json  # noqa: E402
from edge_commands import EDGE, run  # noqa: E402  (benchmarks/edge_commands.py)

DEFAULT_TEACHER = ROOT / "edge" / "models" / "demo_run"
DEFAULT_BACKGROUNDS = ROOT.parent / "shared" / "fixtures" / "images"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=str(DEFAULT_TEACHER), help="teacher run directory")
    ap.add_argument("--backgrounds", default=str(DEFAULT_BACKGROUNDS), help="photos to paste shapes on")
    ap.add_argument("--work-dir", default="/tmp/edgekit_distill_students")
    ap.add_argument("--train-images", type=int, default=1600)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=320, help="side of the written images")
    ap.add_argument("--width", type=float, default=0.35, help="student width")
    ap.add_argument("--input-size", type=int, default=160, help="student input size")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 conversions")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_students.json"))
    args = ap.parse_args()

    work = Path(args.work_dir)
    train_dir, val_dir = work / "train", work / "val"
    bg = ["--backgrounds", args.backgrounds] if args.backgrounds != "none" else []
    synth = [EDGE + ["data", "synth", "--out", str(train_dir), "--n", str(args.train_images),
                     "--size", str(args.image_size), "--seed", "1"] + bg,
             EDGE + ["data", "synth", "--out", str(val_dir), "--n", str(args.val_images),
                     "--size", str(args.image_size), "--seed", "2"] + bg]
    if not (train_dir / "labels.txt").is_file() or not (val_dir / "labels.txt").is_file():
        for cmd in synth:
            run(cmd)
    common = ["train", "--data", str(train_dir), "--val-data", str(val_dir), "--width", str(args.width),
              "--input-size", str(args.input_size), "--epochs", str(args.epochs),
              "--steps-per-epoch", str(args.steps_per_epoch), "--batch-size", str(args.batch_size),
              "--backbone-weights", "none", "--quiet", "--workers", "1"]
    students = {"alone": [], "taught": ["--teacher", args.teacher]}
    commands, results = list(synth), {}
    for name, extra in students.items():
        run_dir = work / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = EDGE + common + ["--out", str(run_dir)] + extra
        commands.append(cmd)
        seconds = run(cmd)
        history = json.loads((run_dir / "history.json").read_text())["epochs"]
        results[name] = {"val_map50_per_epoch": [round(e.get("val_map50", 0.0), 4) for e in history],
                         "final_val_map50": history[-1].get("val_map50"), "train_seconds": round(seconds, 1)}
        if not args.no_int8:
            model, eval_json = work / f"{name}_int8.tflite", work / f"{name}_int8.eval.json"
            for cmd in (EDGE + ["convert", str(run_dir), "-o", str(model), "--calib", str(train_dir),
                                "--calib-images", "100", "--sparsity", "0"],
                        EDGE + ["eval", str(model), "--voc", str(val_dir), "--json", str(eval_json)]):
                commands.append(cmd)
                run(cmd)
            results[name]["int8_map50"] = round(float(json.loads(eval_json.read_text())["map50"]), 4)
            results[name]["int8_bytes"] = model.stat().st_size
    gain = {k: round(results["taught"][k] - results["alone"][k], 4)
            for k in ("final_val_map50", "int8_map50") if k in results["alone"]}
    teacher_config = json.loads((Path(args.teacher) / "config.json").read_text())
    result = {
        "commands": [shlex.join(c).replace(sys.executable, "python") for c in commands],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "teacher": {"run": args.teacher, **teacher_config["architecture"],
                    "val_map50": teacher_config.get("training", {}).get("final", {}).get("val_map50")},
        "student": {"width": args.width, "input_size": args.input_size, "epochs": args.epochs,
                    "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size},
        "runs": results, "gain_points": {k: round(100 * v, 1) for k, v in gain.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    for name, r in results.items():
        int8 = f", int8 {r['int8_map50']:.3f}" if "int8_map50" in r else ""
        print(f"{name:>7}: val mAP@0.5 per epoch {r['val_map50_per_epoch']}{int8} ({r['train_seconds']:.0f} s)")
    print(f"taught - alone: {result['gain_points']} mAP@0.5 points; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
