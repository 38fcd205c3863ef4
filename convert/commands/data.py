"""``edge data synth``: write a synthetic shapes dataset (Pascal VOC layout) for training and tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import EdgeError
from edge.live.synthetic import SHAPE_CLASSES


def _presets_help() -> str:
    # Built from the generator's own constants so the help cannot drift from what is drawn.
    from convert.data import synth as S

    pct = lambda f: f"{100 * f:g}"  # noqa: E731
    hues = " or ".join(S.HARD_HUES)
    step = 2 * abs(list(S.HARD_HUES.values())[1] - list(S.HARD_HUES.values())[0])
    return (
        f"default: 1-4 shapes ({', '.join(SHAPE_CLASSES)}), {pct(S.MIN_SIZE_FRACTION)}-{pct(S.MAX_SIZE_FRACTION)}%% "
        f"of the image side, palette or bright colours, box IoU <= {S.MAX_OVERLAP_IOU:g} (what the bundled demo "
        f"model learnt); hard: {len(S.HARD_CLASSES)} confusable classes ({', '.join(S.HARD_SHAPES)}, each {hues}: "
        f"hues {step} degrees apart), {S.HARD_OBJECTS[0]}-{S.HARD_OBJECTS[1]} objects of "
        f"{pct(S.HARD_MIN_SIZE_FRACTION)}-{pct(S.HARD_MAX_SIZE_FRACTION)}%% of the side (log-uniform, mostly small), "
        f"boxes of different classes overlapping up to IoU {S.HARD_MAX_OVERLAP_IOU:g} (never more than "
        f"{pct(S.HARD_MAX_COVER)}%% covered), {S.HARD_CLUTTER[0]}-{S.HARD_CLUTTER[1]} unlabelled strokes and blobs "
        f"underneath (a third in the objects' hues) and {S.HARD_STROKES_ON_TOP[0]}-{S.HARD_STROKES_ON_TOP[1]} thin "
        "strokes across them; labels are SHAPE-HUE, e.g. circle-red"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from convert.data.synth import PRESETS

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    synth = sub.add_parser("synth", help="coloured shapes with exact boxes, written as VOC",
                           description="Coloured shapes (edge.live.synthetic) on noise, gradients or your photos, "
                                       "with exact boxes, written as Pascal VOC. Same seed, same files. "
                                       "--preset hard is a harder task, for measuring what compression costs.")
    synth.add_argument("--out", required=True, help="output folder (Annotations/, JPEGImages/, labels.txt)")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--preset", choices=PRESETS, default="default",
                       help=f"what the images hold (default: default). {_presets_help()}")
    synth.add_argument("--classes", default=None,
                       help=f"comma-separated classes, a subset of the preset's (default all: "
                            f"{','.join(SHAPE_CLASSES)}; with --preset hard circle-red,circle-orange,...,"
                            "diamond-orange)")
    synth.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--backgrounds", default=None, help="folder of photos to paste shapes on")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "synth":
        raise EdgeError("edge data: choose an action, e.g. edge data synth --out DIR --n 500")
    from convert.data.synth import write_synthetic_voc
    from edge.files import FOLDER, check_paths

    check_paths([("--backgrounds", args.backgrounds)], [("--out", Path(args.out), FOLDER)])

    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    dataset = write_synthetic_voc(args.out, args.n, classes=classes, size=args.size, seed=args.seed,
                                  backgrounds=args.backgrounds, preset=args.preset)
    print(f"wrote {args.out}: {dataset.summary()} ({', '.join(dataset.labels)})")
    return 0
