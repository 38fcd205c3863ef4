"""int8 file size as a fraction of float32, by MobileNetV2 width: where the fixed per-channel cost stops mattering.

Weights shrink 4x under int8, but every output channel of every conv also carries a float32 scale
and an int64 zero point (for the kernel and again for its int32 bias). That cost grows with the
number of channels (linear in the width) while the weights grow with its square, so small models
stay well above 0.25 of float. This builds our SSDLite at each width (untrained: file sizes do not
depend on the weights' values; gzip sizes do, so they are not reported here), exports it through
``edge convert``'s own export path as float32 and as int8 (calibrated on the fixture photos), and
counts where the bytes go. Run from the project root:

    .venv/bin/python benchmarks/int8_size_by_width.py                       # ~4 min on 2 cores
    .venv/bin/python benchmarks/int8_size_by_width.py --widths 0.35 1.0 --input-size 224

Writes benchmarks/results/int8_size_by_width.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ROOT.parent / "shared" / "fixtures" / "images"
RESULTS = ROOT / "benchmarks" / "results" / "int8_size_by_width"


def quantization_overhead(model_path: Path) -> tuple[int, int]:
    """(per-channel entries, bytes they take as float32 scale + int64 zero point) in a .tflite."""
    from edge.backends.tflite import load_interpreter

    interpreter, _ = load_interpreter(model_path, None, 1)
    entries = 0
    for detail in interpreter.get_tensor_details():
        scales = len(detail["quantization_parameters"]["scales"])
        if scales > 1:
            entries += scales
    return entries, entries * (4 + 8)


def calibration_frames(size: int) -> list[np.ndarray]:
    from convert.quantize import list_images, load_calibration_frames

    if PHOTOS.is_dir():
        return load_calibration_frames(list_images(PHOTOS), size, size)
    rng = np.random.default_rng(0)  # a clone without ../shared: noise calibrates the sizes just as well
    return [rng.integers(0, 256, (1, size, size, 3)).astype(np.float32) for _ in range(4)]


def measure(width: float, input_size: int, workdir: Path) -> dict:
    from convert import export, quantize
    from convert.config import SSDConfig
    from convert.head import PostprocessOptions
    from convert.model import build_ssd

    config = SSDConfig.create(["circle", "square", "triangle"], input_size=input_size, width=width)
    model = build_ssd(config)
    module = export.build_detection_module(export.keras_network(model), config.head, PostprocessOptions(),
                                           trackable=model)
    saved = export.save_module(module, workdir / f"w{width}_savedmodel")
    frames = calibration_frames(input_size)
    sizes = {}
    for name, int8 in (("float32", False), ("int8", True)):
        data = export.tflite_from_saved_model(
            saved, int8=int8, representative=quantize.representative_dataset(frames) if int8 else None)
        path = workdir / f"w{width}_{name}.tflite"
        path.write_bytes(data)
        sizes[name] = path.stat().st_size
        if int8:
            entries, overhead = quantization_overhead(path)
    return {
        "width": width, "input_size": input_size, "params": int(model.count_params()),
        "float32_bytes": sizes["float32"], "int8_bytes": sizes["int8"],
        "int8_over_float": sizes["int8"] / sizes["float32"],
        "per_channel_entries": entries, "per_channel_bytes": overhead,
        "per_channel_share_of_int8": overhead / sizes["int8"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.35, 0.5, 0.75, 1.0])
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-width-") as tmp:
        for width in args.widths:
            rows.append(measure(width, args.input_size, Path(tmp)))
            r = rows[-1]
            print(f"width {width}: {r['params'] / 1e6:.2f} M params, float {r['float32_bytes'] / 1024:.0f} KiB, "
                  f"int8 {r['int8_bytes'] / 1024:.0f} KiB ({r['int8_over_float']:.3f} of float), "
                  f"per-channel parameters {r['per_channel_bytes'] / 1024:.0f} KiB", flush=True)

    command = "benchmarks/int8_size_by_width.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "| width | params | float32 KiB | int8 KiB | int8 / float | per-channel entries | their KiB | share of int8 file |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['width']} | {r['params'] / 1e6:.2f} M | {r['float32_bytes'] / 1024:.0f} | "
                     f"{r['int8_bytes'] / 1024:.0f} | {r['int8_over_float']:.3f} | {r['per_channel_entries']} | "
                     f"{r['per_channel_bytes'] / 1024:.0f} | {r['per_channel_share_of_int8']:.2f} |")
    text = "\n".join(lines) + (
        f"\n\nSSDLite MobileNetV2, {args.input_size} px, 3 classes, with TFLite_Detection_PostProcess; per-channel "
        "entries counted from the int8 model's tensors (float32 scale + int64 zero point each).\n\n    "
        f".venv/bin/python {command}\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    report = {"benchmark": "int8_size_by_width", "command": command, "rows": rows,
              "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
