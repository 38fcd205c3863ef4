"""``edge data synth``: write a synthetic shapes dataset (Pascal VOC layout) for training and tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import EdgeError
from edge.live.synthetic import SHAPE_CLASSES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    synth = sub.add_parser("synth", help="coloured shapes with exact boxes, written as VOC",
                           description="Coloured shapes (edge.live.synthetic) on noise, gradients or your photos, "
                                       "with exact boxes, written as Pascal VOC. Same seed, same files.")
    synth.add_argument("--out", required=True, help="output folder (Annotations/, JPEGImages/, labels.txt)")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--classes", default=",".join(SHAPE_CLASSES),
                       help=f"comma-separated shape classes (default {','.join(SHAPE_CLASSES)})")
    synth.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--backgrounds", default=None, help="folder of photos to paste shapes on")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "synth":
        raise EdgeError("edge data: choose an action, e.g. edge data synth --out DIR --n 500")
    from convert.data.synth import write_synthetic_voc
    from edge.files import FOLDER, check_paths

    check_paths([("--backgrounds", args.backgrounds)], [("--out", Path(args.out), FOLDER)])

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    dataset = write_synthetic_voc(args.out, args.n, classes=classes, size=args.size, seed=args.seed,
                                  backgrounds=args.backgrounds)
    print(f"wrote {args.out}: {dataset.summary()} ({', '.join(dataset.labels)})")
    return 0
