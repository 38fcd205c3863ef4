"""``edge plan MODEL...``: the peak RSS ``edge run`` will reach, per model, before anything runs.

Reads each ``.tflite`` (no interpreter needed), plans its arena as TFLite does, and adds what the
setup allocates (cameras, source size, sinks) and the measured baseline of this runtime version
(``edge/plan/baseline.json``). ``--ram`` says which candidates fit and picks the most accurate one
that does (mAP from ``MODEL.report.json``); ``--measure`` runs each for real in a fresh process and
prints predicted against measured, per component; ``--measure-baseline`` regenerates the baseline.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from edge.commands._args import THREADS_AUTO, count_or_auto, positive_int, threads_or_auto
from edge.errors import EdgeError

MIB = 2**20
_UNITS = {"": None, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": MIB, "mb": MIB, "mib": MIB,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def ram_size(text: str) -> int:
    """``512M``, ``1.5G``, ``800MiB`` -> bytes (binary units: K, M, G are 1024-based)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: write a size such as 512M or 2G")
    if _UNITS[unit] is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a unit (K, M or G, 1024-based), e.g. {text}M")
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return int(value)


def source_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(?:synthetic:)?(\d+)[xX](\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: write WIDTHxHEIGHT, e.g. 1280x720")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be between 16 and 8192 pixels")
    return width, height


def sink_list(text: str) -> tuple[str, ...]:
    from edge.plan.components import SINKS

    names = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    unknown = [s for s in names if s not in SINKS and s != "none"]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: choose from {', '.join(SINKS)} (comma-separated)")
    return tuple(s for s in names if s != "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", type=Path, metavar="MODEL", help="candidate .tflite models")
    parser.add_argument("--source", type=source_size, default=(640, 480), metavar="WxH",
                        help="frame size of each camera (default 640x480)")
    parser.add_argument("--cameras", type=positive_int, default=1, metavar="N", help="cameras on one interpreter (default 1)")
    parser.add_argument("--detectors", type=count_or_auto, default=THREADS_AUTO, metavar="K|auto",
                        help="copies of the model, as edge run --detectors K: taking one camera's frames in turn "
                             "(two more ring frames each), or sharing --cameras N (predicted, not measured by "
                             "--measure); auto (default), as edge run's: one, and with --threads auto, one "
                             "camera and several cores the peak counts the tuner's trial of two")
    parser.add_argument("--threads", type=threads_or_auto, default="auto", metavar="N|auto",
                        help="interpreter threads as edge run takes them (default auto: the tuner briefly holds a "
                             "second interpreter)")
    parser.add_argument("--sinks", type=sink_list, default=(), metavar="LIST",
                        help="comma-separated sinks each camera feeds: json, video, preview (default none)")
    parser.add_argument("--ram", type=ram_size, metavar="SIZE", help="the board's memory for edge run, e.g. 512M")
    parser.add_argument("--json", metavar="PATH|-", help="write the plan as JSON to PATH (or stdout with -)")
    parser.add_argument("--measure", action="store_true",
                        help="also run each model for real in a fresh process and compare, per component")
    parser.add_argument("--frames", type=positive_int, default=60, metavar="N",
                        help="frames per camera for --measure (default 60)")
    parser.add_argument("--measure-baseline", action="store_true",
                        help="measure this runtime's baseline on this machine and write it (see --baseline)")
    parser.add_argument("--baseline", type=Path, metavar="PATH",
                        help="baseline file to read, or to write with --measure-baseline (default edge/plan/baseline.json)")


def _mib(n: int) -> str:
    return f"{n / MIB:.1f}"


def _describe_setup(setup, cores: int) -> str:
    threads = f"threads auto ({cores} usable core{'s' if cores != 1 else ''})" if setup.threads == "auto" else \
        f"{setup.threads} thread{'s' if setup.threads != 1 else ''}"
    detectors = f", {setup.detectors} detectors" if setup.detectors > 1 else ""
    return (f"{setup.width}x{setup.height}, {setup.cameras} camera{'s' if setup.cameras != 1 else ''}{detectors}, "
            f"{threads}, "
            f"sinks {', '.join(setup.sinks) or 'none'}")


def _print_prediction(p, measured_rows: list[dict] | None) -> None:
    facts = p.detector
    if facts.get("detector"):
        kind = (f"SSD detector ({facts['head']} head), input {facts['input_width']}x{facts['input_height']} "
                f"{facts['input_dtype']} ({facts['encoding']})")
    else:
        kind = f"not an SSD detector: {facts.get('reason')}"
    print(f"{Path(p.model).name}: {kind}")
    print(f"  {'component':<48} {'MiB':>8}  note")
    for c in p.components:
        print(f"  {c.name:<48} {_mib(c.bytes):>8}  {c.note}")
    print(f"  {'steady state':<48} {_mib(p.steady):>8}")
    if facts.get("detector"):
        print(f"  {'before the loops (last source built)':<48} {_mib(p.before_loops):>8}")
    print(f"  {'peak RSS':<48} {_mib(p.peak):>8}  at: {p.peak_when}")
    for note in p.notes:
        print(f"  note: {note}")
    if measured_rows:
        print(f"  {'measured':<48} {'predicted':>9} {'measured':>9} {'error':>7}")
        for row in measured_rows:
            err = f"{row['error']:+.1%}" if row["error"] is not None else ""
            print(f"  {row['component']:<48} {_mib(row['predicted']):>9} {_mib(row['measured']):>9} {err:>7}")


def choose(predictions: list, ram: int) -> dict:
    """Which predictions fit in ``ram`` (peak <= ram), their margins, and the most accurate that fits."""
    rows = []
    for p in predictions:
        report = p.report or {}
        accuracy = report.get("map") if report.get("map") is not None else report.get("map50")
        rows.append({"model": p.model, "peak": p.peak, "fits": p.peak <= ram, "margin": ram - p.peak,
                     "map": report.get("map"), "map50": report.get("map50"), "report": report.get("source"),
                     "_accuracy": accuracy})
    fitting = [r for r in rows if r["fits"]]
    ranked = [r for r in fitting if r["_accuracy"] is not None]
    best = max(ranked, key=lambda r: (r["_accuracy"], r["margin"])) if ranked else None
    for r in rows:
        r.pop("_accuracy")
    return {"ram": ram, "candidates": rows, "best": best["model"] if best else None,
            "best_reason": ("highest mAP among those that fit" if best else
                            "none fits" if not fitting else "no model that fits has a report with its mAP")}


def _print_ram(choice: dict) -> None:
    print(f"RAM {_mib(choice['ram'])} MiB:")
    for r in choice["candidates"]:
        accuracy = (f"mAP {100 * r['map']:.1f}" if r["map"] is not None else
                    f"mAP@0.5 {100 * r['map50']:.1f}" if r["map50"] is not None else "mAP unknown (no report)")
        verdict = (f"fits, margin {_mib(r['margin'])} MiB" if r["fits"] else
                   f"does not fit, over by {_mib(-r['margin'])} MiB")
        print(f"  {Path(r['model']).name:<40} peak {_mib(r['peak']):>7} MiB  {verdict}; {accuracy}")
    if choice["best"]:
        print(f"most accurate that fits: {Path(choice['best']).name}")
    else:
        print(f"no choice: {choice['best_reason']}")


def _measure_baseline(args: argparse.Namespace) -> int:
    from edge.files import FILE, atomic_write_json, check_paths
    from edge.models import default_model_path
    from edge.plan.baseline import BASELINE_PATH
    from edge.plan.calibrate import measure_baseline

    target = args.baseline or BASELINE_PATH
    models = list(args.models)
    if not models:
        models = [default_model_path()]
        fixture = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "models" / "ssd_mobilenet_v1_coco_quant.tflite"
        if fixture.is_file():
            models.append(fixture)
    check_paths([("MODEL", m) for m in models], [("--baseline", target, FILE)])
    previous = None
    if Path(target).is_file():
        try:
            previous = json.loads(Path(target).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    from edge.plan.graph import read_graph

    for model in models:
        read_graph(model)  # a bad file is one line before minutes of measuring
    data = measure_baseline([str(m) for m in models], previous=previous,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    atomic_write_json(target, data)
    co = data["coefficients"]
    print(f"wrote {target}: imports {_mib(co['imports_bytes'])} MiB, runtime first use "
          f"{_mib(co['runtime_first_use_bytes'])} MiB, XNNPACK ratio {co['xnnpack_packed_ratio']:.3f}, "
          f"interpreter overhead {_mib(co['interpreter_overhead_bytes'])} MiB")
    return 0


def main(args: argparse.Namespace) -> int:
    from edge.files import FILE, atomic_write_json, check_paths
    from edge.plan.baseline import baseline_mismatch, load_baseline
    from edge.plan.components import Setup
    from edge.plan.predict import predict
    from edge.provenance import usable_cores

    if args.measure_baseline:
        return _measure_baseline(args)
    if not args.models:
        raise EdgeError("edge plan: give at least one MODEL (or --measure-baseline)")
    inputs = [("MODEL", m) for m in args.models] + [("MODEL's report", m.with_name(m.stem + ".report.json"))
                                                     for m in args.models]
    if args.baseline:
        inputs.append(("--baseline", args.baseline))
    if args.json and args.json != "-":
        check_paths(inputs, [("--json", args.json, FILE)])
    baseline = load_baseline(args.baseline) if args.baseline else load_baseline()
    width, height = args.source
    cores = usable_cores()
    detectors_auto = args.detectors == THREADS_AUTO
    if detectors_auto:
        args.detectors = 1
    if args.cameras > 1 and args.detectors > args.cameras:
        raise EdgeError(f"--detectors {args.detectors}: more than the {args.cameras} camera"
                        f"{'s' if args.cameras != 1 else ''} of --cameras (a camera's frames go through one detector "
                        "at a time)")
    if args.detectors > 1 and args.measure:
        raise EdgeError("--measure runs one detector: drop --detectors to check a prediction (an extra "
                        "detector's RSS is measured by benchmarks/detectors_throughput.py)")
    setup = Setup(width, height, args.cameras, args.threads, tuple(args.sinks), cores=cores,
                  detectors=args.detectors, detectors_auto=detectors_auto)
    from edge.plan.graph import read_graph

    graphs = [(model, read_graph(model)) for model in args.models]  # every file checked before any output
    predictions = [predict(model, setup, baseline, graph=graph) for model, graph in graphs]
    mismatch = baseline_mismatch(baseline)
    text = args.json != "-"
    report: dict = {"setup": {"source": f"{width}x{height}", "cameras": args.cameras, "detectors": args.detectors,
                              "threads": args.threads,
                              "sinks": list(args.sinks), "usable_cores": cores},
                    "baseline": {"versions": baseline.get("versions"), "machine": baseline.get("machine"),
                                 "warning": mismatch},
                    "models": []}
    if text:
        print(f"edge plan: {_describe_setup(setup, cores)}; baseline measured with "
              f"ai-edge-litert {baseline.get('versions', {}).get('ai-edge-litert', '?')} on "
              f"{baseline.get('machine', {}).get('machine', '?')}")
        if mismatch:
            print(f"warning: {mismatch}: regenerate with edge plan --measure-baseline on this board")
    for p in predictions:
        entry = p.to_dict()
        rows = None
        if args.measure:
            rows = _measure(p, setup, args, baseline)
            entry["measured"] = rows
        report["models"].append(entry)
        if text:
            _print_prediction(p, rows)
    if args.ram:
        choice = choose(predictions, args.ram)
        report["ram"] = choice
        if text:
            _print_ram(choice)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _measure(prediction, setup, args: argparse.Namespace, baseline: dict) -> list[dict]:
    """Run the model for real (fresh process) and compare; ``--threads auto`` is measured with a fixed
    thread count (all usable cores), so the tuner's transient is left out of that comparison."""
    from dataclasses import replace

    from edge.plan.check import compare, run_fresh
    from edge.plan.predict import predict

    threads = setup.threads if isinstance(setup.threads, int) else setup.cores
    fixed = prediction if isinstance(setup.threads, int) else predict(prediction.model, replace(setup, threads=threads),
                                                                       baseline)
    if not fixed.detector.get("detector"):
        measured = run_fresh(prediction.model, interpreters=1, threads=threads)
        measured = {"imports": measured["imports"], "interpreter_done": measured["imports"] + measured["interpreters"][0],
                    "weights_resident": measured["weights_resident"]}
        return compare(fixed, measured)
    measured = run_fresh(prediction.model, width=setup.width, height=setup.height, cameras=setup.cameras,
                         threads=threads, sinks=setup.sinks, frames=args.frames, arena=True)
    return compare(fixed, measured)
