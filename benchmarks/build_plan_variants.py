"""Build the model variants ``edge plan``'s accuracy is checked on: widths, input sizes, float and int8,
and a channel-pruned int8 model, all our SSDLite MobileNetV2 through ``edge convert``'s own export.

Memory does not depend on the weights' values, so the models are untrained (int8 calibrated on the
fixture photos, or noise without ../shared); the channel-pruned one is narrowed at R = 0.5 by MACs
(no latency probes, no fine-tuning). Then check the planner on them:

    .venv/bin/python benchmarks/build_plan_variants.py --out /tmp/plan_variants        # ~5 min on 2 cores
    .venv/bin/python benchmarks/plan_accuracy.py --quick --extra --models /tmp/plan_variants \\
        --out benchmarks/results/plan_accuracy_variants
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from int8_size_by_width import calibration_frames  # noqa: E402  (benchmarks/int8_size_by_width.py)

CLASSES = ["circle", "square", "triangle"]


def export(model, config, path: Path, int8: bool, frames, workdir: Path) -> None:
    from convert import export as tf_export, quantize
    from convert.head import PostprocessOptions

    module = tf_export.build_detection_module(tf_export.keras_network(model), config.head, PostprocessOptions(),
                                              trackable=model)
    saved = tf_export.save_module(module, workdir / f"{path.stem}_savedmodel")
    data = tf_export.tflite_from_saved_model(
        saved, int8=int8, representative=quantize.representative_dataset(frames) if int8 else None)
    path.write_bytes(data)


def channel_pruned(model, config, frames):
    from convert import channel_plan, channels

    norm = config.normalization
    images = np.concatenate([(f - norm.mean) / norm.std for f in frames[:8]]).astype(np.float32)
    groups = channels.find_groups(model)
    importance = channels.channel_importance(model, groups, images)
    by_macs = channel_plan.LatencyTable(dense_ms=10.0, ms_per_channel={
        g.name: 1e-7 * channels.group_macs(model, g) / g.channels for g in groups})
    widths = channel_plan.choose_widths(groups, importance, by_macs, remove_fraction=0.5)
    kept = {g.name: channels.keep_indices(importance[g.name]["score"], widths[g.name]) for g in groups}
    return channels.narrow_model(model, groups, kept, importance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.35, 0.5, 1.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 320])
    args = parser.parse_args()

    from convert.config import SSDConfig
    from convert.model import build_ssd

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-plan-variants-") as scratch:
        workdir = Path(scratch)
        for size in args.sizes:
            frames = calibration_frames(size)
            for width in args.widths:
                config = SSDConfig.create(CLASSES, input_size=size, width=width)
                model = build_ssd(config, backbone_weights="none")
                for int8 in (False, True):
                    path = args.out / f"ssdlite_w{width:g}_{size}_{'int8' if int8 else 'float'}.tflite"
                    export(model, config, path, int8, frames, workdir)
                    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", flush=True)
        size, width = max(args.sizes), 0.5 if 0.5 in args.widths else args.widths[0]
        config = SSDConfig.create(CLASSES, input_size=size, width=width)
        frames = calibration_frames(size)
        narrow = channel_pruned(build_ssd(config, backbone_weights="none"), config, frames)
        path = args.out / f"ssdlite_w{width:g}_{size}_int8_channel_pruned.tflite"
        export(narrow, config, path, True, frames, workdir)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
