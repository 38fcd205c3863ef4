"""``edge bench MODEL...``: memory per frame and stage latency, ours vs the usual pipeline vs bare invoke().

``.tflite`` and ``.onnx`` models side by side: the usual pipeline is the TFLite examples' code, so an
``.onnx`` model is compared with bare ``invoke()`` only, and the report says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.backends import TFLITE_RUNTIMES
from edge.commands._args import (CAPTURE_CHOICES, THREADS_AUTO, add_onnx_args, count_or_auto, threads_or_auto,
                                 unit_interval)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                        help=".tflite or .onnx model(s); several give one comparison table (e.g. float vs int8 vs "
                             "pruned, or the same model as .tflite and .onnx). The usual pipeline is TFLite-only: "
                             ".onnx models are compared with bare invoke()")
    parser.add_argument("--source", default="synthetic",
                        help="frames to run on: video file (looped), folder, camera, stream or synthetic[:WxH] "
                             "(default: synthetic)")
    parser.add_argument("--frames", type=int, default=500, help="timed frames per pipeline (default: 500)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up frames per pipeline (default: 50)")
    parser.add_argument("--mem-frames", type=int, default=None,
                        help="frames measured under tracemalloc per pipeline (default: same as --frames)")
    parser.add_argument("--traced-warmup", type=int, default=None,
                        help="frames run under tracemalloc before recording (default: what the source asks for, "
                             "at least 30; synthetic asks for 400, a few cycles of its shapes)")
    parser.add_argument("--threads", type=threads_or_auto, default=THREADS_AUTO, metavar="N|auto",
                        help="interpreter threads; auto (default): ours measures all cores against one left for "
                             "capture and keeps the faster end to end, as edge run does, the baseline runs at "
                             "each and its best is compared, bare invoke() uses all cores")
    parser.add_argument("--capture", choices=CAPTURE_CHOICES, default="auto",
                        help="where ours reads frames, as edge run --capture: auto (default: on the loop's thread "
                             "for a source that is not live on one usable core, else a thread of its own), thread, "
                             "inline")
    parser.add_argument("--detectors", type=count_or_auto, default=THREADS_AUTO, metavar="K|auto",
                        help="ours runs K copies of the model taking the frames in turn, as edge run --detectors K "
                             "(with --threads auto, usable cores / K threads each); auto (default), as edge run's: "
                             "with --threads auto on several cores the tuner also tries two")
    parser.add_argument("--runtime", "--backend", dest="runtime", choices=list(TFLITE_RUNTIMES) + ["onnxruntime"],
                        metavar="NAME", help=f"{', '.join(TFLITE_RUNTIMES)}: force the TFLite runtime of the .tflite models (ours, bare invoke() and the usual "
                             "pipeline alike); .onnx models run on ONNX Runtime (see --providers), and onnxruntime "
                             "here asks that every MODEL be one")
    parser.add_argument("--labels", type=Path, help="labels file (only names the classes; not needed to bench)")
    parser.add_argument("--score", type=unit_interval, default=0.5, metavar="S", help="score threshold (default: 0.5)")
    parser.add_argument("--rss-every", type=int, default=10, help="sample RSS every N frames (default: 10)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="timed frames of bare invoke, ours and usual alternate in this many rounds (default: 10)")
    parser.add_argument("--no-usual", "--no-baseline", dest="no_baseline", action="store_true",
                        help="skip the usual-pipeline baseline")
    parser.add_argument("--json", dest="json_path", type=Path,
                        help="write every figure and the machine to this JSON file")
    parser.add_argument("--report", dest="report_dir", type=Path,
                        help="write a markdown report and PNG plots (matplotlib) into this directory")
    parser.add_argument("--name", default="bench", help="file name stem inside --report (default: bench)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_onnx_args(parser)


def main(args: argparse.Namespace) -> int:
    from edge.bench.report import format_summary, write_json, write_report
    from edge.bench.run import run_bench
    from edge.bench.settings import BenchSettings

    from edge.files import FILE, FOLDER, check_paths

    outputs = [("--report", args.report_dir, FOLDER)] if args.report_dir else []
    if args.json_path:
        outputs += [("--json", args.json_path.parent, FOLDER), ("--json", args.json_path, FILE)]
    check_paths([("MODEL", m) for m in args.models] + [("--labels", args.labels), ("--source", args.source)], outputs)
    report = run_bench(BenchSettings.from_args(args), progress=not args.no_progress)
    print(format_summary(report))
    if args.json_path:
        write_json(report, args.json_path)
        print(f"json: {args.json_path}")
    if args.report_dir:
        md_path, plots, note = write_report(report, args.report_dir, args.name)
        print(f"report: {md_path}")
        for plot in plots:
            print(f"plot: {plot}")
        if note:
            print(f"edge bench: {note}", file=sys.stderr)
    return 0
