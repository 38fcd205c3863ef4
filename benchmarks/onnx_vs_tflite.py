"""The same detector on LiteRT and on ONNX Runtime (CPU), side by side on the same frames.

The OD API SSDLite MobileNetV2 person detector of ../shared/fixtures is converted twice by `edge
convert` (float `.tflite`, and `--format onnx` with its parity gate), then `edge bench` runs both on
the looped traffic video: bare engine call, our pipeline, memory per frame. On x86 the latency is
context, not a goal (the GPU providers are what the ONNX path is for, on a Jetson). Run from the
project root (desktop install, ~6 min on 2 cores):

    .venv/bin/python benchmarks/onnx_vs_tflite.py      # writes benchmarks/results/onnx_vs_tflite.{json,md}
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT.parent / "shared" / "fixtures"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default=str(FIXTURES / "odapi" / "ssdlite_mobilenet_v2_person_frozen.pb"))
    parser.add_argument("--calib", default=str(FIXTURES / "images"))
    parser.add_argument("--video", default=str(FIXTURES / "video" / "traffic_960x540.mp4"))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    for path in (args.graph, args.calib, args.video):
        if not Path(path).exists():
            print(f"{path} is absent (../shared/fixtures beside the project)", file=sys.stderr)
            return 2

    from edge.cli import main as edge

    load = [round(os.getloadavg()[0], 2)]
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.txt"
        labels.write_text("person\n")
        tflite, onnx = Path(tmp) / "person.tflite", Path(tmp) / "person.onnx"
        common = [args.graph, "--calib", args.calib, "--labels", str(labels)]
        if edge(["convert", *common, "-o", str(tflite), "--float"]) != 0:
            return 1
        if edge(["convert", *common, "--format", "onnx", "-o", str(onnx)]) != 0:
            return 1
        load.append(round(os.getloadavg()[0], 2))
        # A fresh process, as on the board: no TensorFlow in it to weigh on the RSS figures.
        code = subprocess.run([sys.executable, "-m", "edge.cli", "bench", str(tflite), str(onnx), "--providers", "cpu",
                               "--source", args.video, "--frames", str(args.frames), "--threads", args.threads,
                               "--no-progress", "--json", str(RESULTS / "onnx_vs_tflite.json"),
                               "--report", tmp + "/report"], cwd=ROOT).returncode
        load.append(round(os.getloadavg()[0], 2))
        report = Path(tmp, "report", "bench.md")
        if code == 0 and report.exists():
            text = report.read_text()
            (RESULTS / "onnx_vs_tflite.md").write_text(
                f"Command: `python benchmarks/onnx_vs_tflite.py` (load average {load} at start / after the "
                f"exports / at the end; 2 shared x86 cores, CPU providers only).\n\n" + text)
    print(f"load average: {load}")
    return code


if __name__ == "__main__":
    sys.exit(main())
