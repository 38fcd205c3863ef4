"""Compression frontier on the hard synthetic task: what channel pruning and distillation buy, and cost.

Everything goes through the ``edge`` CLI as child processes, exactly as a user would run it:

1. ``edge data synth --preset hard``: a training set and a held-out set (another seed), 8 confusable
   classes, small and overlapping objects, clutter (on ``--backgrounds`` photos when there are some).
2. ``edge train``: a dense teacher (default width 1.0 at 256 px, its backbone from the OD API SSDLite
   export in ../shared/fixtures when present).
3. ``edge convert``: the teacher as dense int8 (keep 1.0).
4. ``edge train``: a student (width 0.35, 160 px) alone and with the dense teacher (``--teacher``),
   the same steps and seed, both converted to int8.
5. ``edge convert``: the teacher channel-pruned to int8 at keep 0.75 / 0.5 / 0.35 (``--prune-channels
   1-keep``), each fine-tuned for the same ``--channel-steps`` with the unpruned model as teacher
   (``--distill-weight 1``) and without (``--distill-weight 0``); ``--sparsity 0``, so only channel
   pruning acts. Keep 1.0 is ``--prune-channels 0``: nothing removed, the dense model fine-tuned the
   same steps the same two ways -- the control that tells what pruning cost from what the extra
   steps gave (the pruned rows' "vs dense + steps" column). ``--quick`` prunes to keep 0.5 only:
   each conversion costs minutes whatever the size.
6. ``edge eval --voc HELD_OUT`` for every int8 model (mAP@0.5), then ``invoke()`` of all of them side
   by side in this process, interleaved in rounds on one held-out image, so a noisy neighbour slows
   every model alike (the report's own latency, measured at conversion time, is recorded too).

Targets (benchmarks/targets.py): one pruned int8 at <= 0.6x the dense int8's invoke time and file size
losing <= 1.5 mAP@0.5 points; the distilled student >= 1 point above the student alone. Met/missed is
printed and stored. The load average is recorded at start and end: latency ratios from a loaded
machine are noisier, sizes and mAP are not.

    .venv/bin/python benchmarks/compression_frontier.py            # full: hours on 2 shared cores
    .venv/bin/python benchmarks/compression_frontier.py --quick    # tiny sizes, the plumbing, < 10 min

Writes benchmarks/results/compression_frontier.json and .md (``--quick``: compression_frontier_quick.*).
A command that fails stops the run with the CLI's own error line and exit code; what was built up to
then is still timed and written to WORK_DIR/partial.json and .md (never over the last full result).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge.files import atomic_write_json  # noqa: E402
from edge.provenance import machine_info  # noqa: E402
from targets import format_frontier_targets, frontier_verdicts, verdict  # noqa: E402  (benchmarks/targets.py)

RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = ROOT.parent / "shared" / "fixtures"
DEFAULT_BACKGROUNDS = FIXTURES / "images"
DEFAULT_EXPORT = FIXTURES / "odapi" / "ssdlite_mobilenet_v2_person_frozen.pb"
EDGE = [sys.executable, "-m", "edge.cli"]
KEEP_RATIOS = (1.0, 0.75, 0.5, 0.35)
# Every edge convert pays two SavedModel exports and TFLite conversions (float reference and output),
# ~1.5-2 CPU minutes whatever the model's size: --quick converts one keep ratio, with and without
# distillation, so every kind of command still runs once within the 10 minutes.
QUICK_KEEP_RATIOS = (0.5,)

# Full run, then what --quick changes: only sizes (and the keep ratios above), never which commands run.
FULL = dict(train_images=400, val_images=100, image_size=320, teacher_width=1.0, teacher_size=256,
            teacher_epochs=20, teacher_steps=100, student_width=0.35, student_size=160, student_epochs=20,
            student_steps=100, batch_size=16, channel_steps=300, calib_images=100, latency_rounds=10,
            latency_invokes=50)
QUICK = dict(FULL, train_images=32, val_images=16, image_size=160, teacher_width=0.5, teacher_size=160,
             teacher_epochs=1, teacher_steps=12, student_epochs=1, student_steps=12, batch_size=8,
             channel_steps=8, calib_images=16, latency_rounds=5, latency_invokes=20)


HELP = dict(train_images="hard-preset training images", val_images="held-out images (another seed)",
            image_size="side of the written images", teacher_width="teacher MobileNetV2 width",
            teacher_size="teacher input size", teacher_epochs="teacher epochs", teacher_steps="teacher steps per epoch",
            student_width="student width", student_size="student input size", student_epochs="student epochs",
            student_steps="student steps per epoch (the same with and without the teacher)",
            batch_size="training batch size", channel_steps="fine-tuning steps of every pruned variant",
            calib_images="int8 calibration images", latency_rounds="interleaved timing rounds",
            latency_invokes="invokes per model per round")


class CommandFailed(Exception):
    def __init__(self, cmd: list[str], code: int):
        super().__init__(f"exit {code}: {shlex.join(cmd)}")
        self.cmd, self.code = cmd, code


class Log:
    """Every command with its wall time, for the result file."""

    def __init__(self) -> None:
        self.commands: list[dict] = []

    def run(self, cmd: list[str]) -> float:
        print("$ " + shlex.join(cmd), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        # stderr is inherited: a missing option shows as the CLI's own one-line error.
        code = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).returncode
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU time as well as wall time: on shared cores the wall time says more about the neighbours.
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.commands.append({"command": shlex.join(cmd).replace(sys.executable, "python"),
                              "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "exit": code})
        if code != 0:
            raise CommandFailed(cmd, code)
        return seconds


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def map50_of(eval_json: Path) -> float:
    return float(json.loads(eval_json.read_text())["map50"])


def report_entry(model: Path) -> dict:
    """The converted model's own entry in its report (stats, latency, eval), found by its path."""
    from convert.report import report_path  # pure Python, no TensorFlow

    report = json.loads(report_path(model).read_text())
    models = report["models"]
    entry = next((e for e in models.values() if e.get("stats", {}).get("path") == str(model)),
                 models[list(models)[-1]])
    return {"report": str(report_path(model)), "stats_size_bytes": entry["stats"].get("size_bytes"),
            "report_median_ms": (entry.get("latency") or {}).get("median_ms"),
            "report_map50": (entry.get("eval") or {}).get("map50"),
            "conversion_seconds": report.get("conversion_seconds"),
            "steps": [{"name": s.get("name"), "summary": s.get("summary"), "seconds": s.get("seconds")}
                      for s in report.get("steps", [])]}


def side_by_side_latency(models: dict[str, Path], image_path: Path, rounds: int, invokes: int,
                         threads: int) -> tuple[dict[str, dict], str]:
    """Median ``invoke()`` ms per model, measured in interleaved rounds on one real held-out image."""
    import cv2
    import numpy as np

    from edge.backends.tflite import load_interpreter

    bgr = cv2.imread(str(image_path))
    loaded, runtime = {}, ""
    for name, path in models.items():
        interpreter, info = load_interpreter(path, None, threads, allocate=True)
        detail = interpreter.get_input_details()[0]
        h, w = int(detail["shape"][1]), int(detail["shape"][2])
        rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        interpreter.set_tensor(detail["index"], rgb[None].astype(detail["dtype"]))
        for _ in range(5):  # first invokes pay for XNNPACK packing and cold caches
            interpreter.invoke()
        loaded[name] = (interpreter, [])
        runtime = info.describe()
    for _ in range(rounds):
        for interpreter, times in loaded.values():
            for _ in range(invokes):
                start = time.perf_counter()
                interpreter.invoke()
                times.append((time.perf_counter() - start) * 1000.0)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "invokes": len(t)}
            for name, (_, t) in loaded.items()}, runtime


def ordered(rows: dict[str, dict]) -> list[dict]:
    """Table order: dense, pruned by falling keep ratio, students; whatever order they ran in."""
    kinds = {"dense": 0, "tuned": 1, "pruned": 2, "student": 3}
    return sorted(rows.values(), key=lambda r: (kinds[r["kind"]], -r["keep_ratio"], r["distilled"] is False))


def markdown(result: dict) -> str:
    lines = ["| variant | keep ratio | distilled | file KiB | invoke ms (median) | x dense | mAP@0.5 | drop vs dense "
             "| drop vs dense + steps |",
             "|---|---:|:---:|---:|---:|---:|---:|---:|---:|"]

    def points(value):
        return "-" if value is None else f"{value:.1f}"

    for r in result["variants"]:
        lines.append(f"| {r['variant']} | {r['keep_ratio']:.2f} | {'yes' if r['distilled'] else 'no'} | "
                     f"{r['size_bytes'] / 1024:.0f} | {r['invoke_median_ms']:.2f} | {r['invoke_ratio']:.2f} | "
                     f"{100 * r['map50']:.1f} | {points(r.get('map50_drop_points'))} | "
                     f"{points(r.get('map50_drop_vs_tuned_points'))} |")
    s = result.get("students")
    lines.append("")
    if s:
        lines.append(f"Students (width {result['settings']['student_width']}, {result['settings']['student_size']} px, "
                     f"{s['steps']} steps each): alone {100 * s['alone_map50']:.1f}, distilled "
                     f"{100 * s['distilled_map50']:.1f} mAP@0.5 ({s['map50_gain_points']:+.1f} points). "
                     "Their drop column is against the dense teacher int8.")
    if any(r["kind"] == "tuned" for r in result["variants"]):
        lines.append(f"Dense + steps: keep 1.0 (--prune-channels 0), the dense model fine-tuned the same "
                     f"{result['settings']['channel_steps']} steps as the pruned ones; a pruned row's last column "
                     "is against the one fine-tuned the same way (distilled or not): what pruning cost at equal steps.")
    st = result["settings"]
    lines += [
        "",
        f"Teacher: width {st['teacher_width']}, {st['teacher_size']} px, {st['teacher_epochs']} x "
        f"{st['teacher_steps']} steps at batch {st['batch_size']}, backbone {result['teacher_backbone']}. "
        f"Pruned variants: {st['channel_steps']} fine-tuning steps each (--channel-steps), --sparsity 0. "
        f"Data: --preset hard, {st['train_images']} training / {st['val_images']} held-out images at "
        f"{st['image_size']} px, backgrounds: {result['backgrounds'] or 'none (noise and gradients)'}.",
        *([f"Teacher run reused (--teacher-run {result['teacher_run']}): trained by an earlier run of this "
           "script on the same data; the settings above are the ones it was trained with."]
          if result.get("teacher_run") else []),
        f"Invoke: {result['latency']['runtime']}, {st['latency_rounds']} interleaved rounds of "
        f"{st['latency_invokes']} invokes per model on one held-out image. Load average (1, 5, 15 min) at start "
        f"{result['load_average']['start']}, at end {result['load_average']['end']}.",
        "",
        "Targets:",
        "",
        "```",
        result["targets_text"],
        "```",
        "",
        f"    {result['command']}",
    ]
    if result["quick"]:
        lines.insert(0, "**--quick run: tiny sizes, the commands work; the numbers mean nothing.**\n")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the whole path in under 10 minutes")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="data, runs and models (default /tmp/edgekit_compression_frontier[_quick])")
    ap.add_argument("--backgrounds", default=None,
                    help=f"photos for the synthetic images, or 'none' (default {DEFAULT_BACKGROUNDS} if present)")
    ap.add_argument("--teacher-weights", default=None,
                    help="--backbone-weights of the teacher (default: the OD API export in ../shared/fixtures "
                         "when present and the teacher is width 1.0, else none)")
    ap.add_argument("--keep-ratios", type=float, nargs="+", default=None,
                    help=f"channel keep ratios to prune to (default {' '.join(map(str, KEEP_RATIOS))}, "
                         f"--quick {' '.join(map(str, QUICK_KEEP_RATIOS))})")
    ap.add_argument("--teacher-run", type=Path, default=None,
                    help="an already trained teacher run directory (trained on this script's data with the same "
                         "--train-images/--image-size): skips training the teacher")
    ap.add_argument("--distill-weights", type=float, nargs="+", default=(1.0, 0.0),
                    help="--distill-weight values each keep ratio is fine-tuned with (default 1 0: with and "
                         "without the unpruned model teaching)")
    ap.add_argument("--no-students", action="store_true",
                    help="skip the students (train and convert): a pruning-only run")
    ap.add_argument("--threads", type=int, default=1,
                    help="interpreter threads for the side-by-side invoke timing (default 1: steadier on shared cores)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results stem (default benchmarks/results/compression_frontier[_quick])")
    for key, value in FULL.items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                        help=f"{HELP[key]} (default {value}, --quick {QUICK[key]})")
    args = ap.parse_args(argv)
    settings = {k: (getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k])
                for k in FULL}
    keep_ratios = tuple(args.keep_ratios or (QUICK_KEEP_RATIOS if args.quick else KEEP_RATIOS))
    if not all(0 < k <= 1 for k in keep_ratios):
        ap.error(f"--keep-ratios {' '.join(map(str, keep_ratios))}: each must be in (0, 1]")
    suffix = "_quick" if args.quick else ""
    work = args.work_dir or Path(f"/tmp/edgekit_compression_frontier{suffix}")
    out = args.out or RESULTS / f"compression_frontier{suffix}"

    if args.backgrounds == "none":
        backgrounds = None
    elif args.backgrounds is not None:
        backgrounds = args.backgrounds
    elif DEFAULT_BACKGROUNDS.is_dir():
        backgrounds = str(DEFAULT_BACKGROUNDS)
    else:
        backgrounds = None
        print(f"note: {DEFAULT_BACKGROUNDS} not found; shapes go on noise and gradients (--backgrounds DIR for photos)")
    if args.teacher_weights is not None:
        teacher_weights = args.teacher_weights
    elif settings["teacher_width"] == 1.0 and DEFAULT_EXPORT.is_file():
        teacher_weights = str(DEFAULT_EXPORT)
    else:
        teacher_weights = "none"
        if settings["teacher_width"] == 1.0:
            print(f"note: {DEFAULT_EXPORT} not found; the teacher starts from a random backbone")

    if args.teacher_run is not None:
        if not (args.teacher_run / "config.json").is_file():
            ap.error(f"--teacher-run {args.teacher_run}: not a trained run directory (no config.json)")
        if args.teacher_run.resolve().is_relative_to((work / "runs").resolve()):
            ap.error(f"--teacher-run {args.teacher_run}: inside {work / 'runs'}, which this run clears first; "
                     "move it or use another --work-dir")

    started = time.perf_counter()
    load_start = load_average()
    log = Log()
    # Only what this script creates is removed: a stale run dir would make edge train refuse.
    for sub in ("train", "val", "runs", "models", "eval"):
        shutil.rmtree(work / sub, ignore_errors=True)
    for sub in ("runs", "models", "eval"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    train_dir, val_dir = work / "train", work / "val"
    st = settings
    result = {
        "benchmark": "compression_frontier", "quick": args.quick, "settings": st,
        "backgrounds": backgrounds, "teacher_backbone": teacher_weights, "keep_ratios": list(keep_ratios),
        "command": shlex.join(["python", "benchmarks/compression_frontier.py",
                               *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info(), "load_average": {"start": load_start, "end": None},
        "variants": [], "students": None, "commands": log.commands,
    }
    models: dict[str, Path] = {}  # variant -> int8 .tflite, for the side-by-side timing
    rows: dict[str, dict] = {}

    def evaluate(name: str, model: Path) -> float:
        eval_json = work / "eval" / f"{model.stem}.json"
        log.run(EDGE + ["eval", str(model), "--voc", str(val_dir), "--json", str(eval_json)])
        return map50_of(eval_json)

    def convert(name: str, run: Path, extra: list[str], **row) -> None:
        model = work / "models" / f"{name}.tflite"
        seconds = log.run(EDGE + ["convert", str(run), "-o", str(model), "--data", str(train_dir),
                                  "--val", str(val_dir), "--calib", str(train_dir),
                                  "--calib-images", str(st["calib_images"])] + extra)
        rows[name] = {"variant": name, **row, "model": str(model), "size_bytes": model.stat().st_size,
                      "convert_seconds": round(seconds, 1), **report_entry(model), "map50": evaluate(name, model)}
        models[name] = model
        result["variants"] = ordered(rows)
        atomic_write_json(work / "partial.json", result)

    def train(run: Path, width: float, size: int, epochs: int, steps: int, extra: list[str]) -> float:
        return log.run(EDGE + ["train", "--data", str(train_dir), "--val-data", str(val_dir), "--out", str(run),
                               "--width", str(width), "--input-size", str(size), "--epochs", str(epochs),
                               "--steps-per-epoch", str(steps), "--batch-size", str(st["batch_size"]),
                               "--quiet", "--workers", "1"] + extra)

    try:
        bg = ["--backgrounds", backgrounds] if backgrounds else []
        for folder, n, seed in ((train_dir, st["train_images"], 31), (val_dir, st["val_images"], 32)):
            log.run(EDGE + ["data", "synth", "--preset", "hard", "--out", str(folder), "--n", str(n),
                            "--size", str(st["image_size"]), "--seed", str(seed)] + bg)

        if args.teacher_run is not None:
            teacher = args.teacher_run
            result["teacher_run"] = str(teacher)  # its own config.json says how it was trained
        else:
            teacher = work / "runs" / "teacher"
            freeze = ["--freeze-backbone-epochs", "1"] if teacher_weights != "none" and st["teacher_epochs"] > 1 else []
            result["teacher_train_seconds"] = round(train(teacher, st["teacher_width"], st["teacher_size"],
                                                          st["teacher_epochs"], st["teacher_steps"],
                                                          ["--backbone-weights", teacher_weights] + freeze), 1)
        convert("dense int8", teacher, ["--sparsity", "0"], kind="dense", keep_ratio=1.0, distilled=False)

        # The students first: they need only edge train's distillation, so a convert without channel
        # pruning yet still measures them.
        if not args.no_students:
            student_args = (st["student_width"], st["student_size"], st["student_epochs"], st["student_steps"])
            alone, taught = work / "runs" / "student", work / "runs" / "student_distilled"
            train(alone, *student_args, ["--backbone-weights", "none"])
            train(taught, *student_args, ["--backbone-weights", "none", "--teacher", str(teacher),
                                          "--distill-weight", "1.0", "--temperature", "2.0"])
            for name, run, distilled in (("student int8", alone, False), ("student distilled int8", taught, True)):
                convert(name, run, ["--sparsity", "0"], kind="student", keep_ratio=1.0, distilled=distilled)

        for keep in keep_ratios:
            for weight in args.distill_weights:
                tuned = keep == 1.0  # nothing removed: the equal-steps control
                name = (f"dense + {st['channel_steps']} steps" if tuned else f"pruned keep {keep:.2f}") \
                    + (" distilled" if weight else "")
                convert(name, teacher, ["--sparsity", "0", "--prune-channels", f"{1 - keep:.2f}",
                                        "--channel-steps", str(st["channel_steps"]), "--distill-weight", f"{weight:g}"],
                        kind="tuned" if tuned else "pruned", keep_ratio=keep, distilled=bool(weight))
    except CommandFailed as exc:
        failed = exc
    else:
        failed = None

    if "dense int8" in rows:  # what was built is timed and compared even when a later command failed
        latency, runtime = side_by_side_latency(models, sorted((val_dir / "JPEGImages").glob("*.jpg"))[0],
                                                st["latency_rounds"], st["latency_invokes"], args.threads)
        dense = rows["dense int8"]
        for name, row in rows.items():
            row["invoke_median_ms"] = latency[name]["median_ms"]
            row["invoke_p90_ms"] = latency[name]["p90_ms"]
            row["invoke_ratio"] = latency[name]["median_ms"] / latency["dense int8"]["median_ms"]
            row["size_ratio"] = row["size_bytes"] / dense["size_bytes"]
            row["map50_drop_points"] = 100 * (dense["map50"] - row["map50"])
        controls = {r["distilled"]: r for r in rows.values() if r["kind"] == "tuned"}
        for row in rows.values():
            if row["kind"] == "pruned" and row["distilled"] in controls:
                row["map50_drop_vs_tuned_points"] = 100 * (controls[row["distilled"]]["map50"] - row["map50"])
        result["latency"] = {"runtime": runtime, "threads": args.threads, "rounds": st["latency_rounds"],
                             "invokes_per_round": st["latency_invokes"]}
    if "student int8" in rows and "student distilled int8" in rows:
        alone_map, taught_map = rows["student int8"]["map50"], rows["student distilled int8"]["map50"]
        result["students"] = {"alone_map50": alone_map, "distilled_map50": taught_map,
                              "map50_gain_points": 100 * (taught_map - alone_map),
                              "steps": st["student_epochs"] * st["student_steps"]}
    result["variants"] = ordered(rows)
    verdicts = frontier_verdicts(result)
    result["targets"] = {"pruned_met": verdicts["pruned_met"],
                         "pruned": {k: [{"key": c["key"], "value": c["value"], "met": c["met"]} for c in v]
                                    for k, v in verdicts["pruned"].items()},
                         "student": [{"key": c["key"], "value": c["value"], "met": c["met"]}
                                     for c in verdicts["student"]]}
    result["targets_text"] = format_frontier_targets(result)
    result["load_average"]["end"] = load_average()
    result["total_seconds"] = round(time.perf_counter() - started, 1)

    if failed is not None:
        # Never over the last complete result: a partial one goes to the work folder only.
        result["failed"] = {"command": shlex.join(failed.cmd).replace(sys.executable, "python"), "exit": failed.code}
        atomic_write_json(work / "partial.json", result)
        if "latency" in result:
            (work / "partial.md").write_text(markdown(result))
            print(markdown(result))
        print(f"compression_frontier: stopped, {failed}; measured so far: {work / 'partial.json'}", file=sys.stderr)
        return failed.code

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), result)
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"pruning target {verdict(verdicts['pruned_met'])}; student target "
          f"{verdict(verdicts['student'][0]['met'])}; {result['total_seconds']:.0f} s in all")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
