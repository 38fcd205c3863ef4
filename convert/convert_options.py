"""What ``edge convert`` is asked to do: :class:`ConvertOptions`, built from the command line by
:meth:`ConvertOptions.from_args`, and the checks that need no file read (:func:`check_options`),
so a bad number or a path onto an input fails before anything is loaded.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from convert.head import PostprocessOptions
from edge.errors import EdgeError

FORMAT_TFLITE, FORMAT_ONNX = "tflite", "onnx"
FORMATS = (FORMAT_TFLITE, FORMAT_ONNX)


# Fine-tuning after removing half the channels of the tests' tiny SSD: 300 steps left it 3.2-5.5 mAP@0.5
# points below the dense model, 600 came back to it (benchmarks/results/channel_recovery_long.json).
DEFAULT_CHANNEL_STEPS = 600


@dataclass
class ConvertOptions:
    source: Path
    output: Path
    calib: Path | None = None  # calibration images (int8); default: the fine-tuning data's images
    val: Path | None = None  # held-out VOC folder (or a folder with one COCO json)
    coco: Path | None = None  # held-out COCO annotation json (with images)
    images: Path | None = None
    data: Path | None = None  # training data for pruning / QAT fine-tuning
    labels: Path | None = None  # label file for OD API sources
    sparsity: float = 0.5  # 0 disables pruning
    prune_steps: int = 300
    prune_channels: float | None = None  # fraction of the prunable channels removed
    latency_target: float | None = None  # fraction of the dense int8 network's invoke time
    channel_steps: int = DEFAULT_CHANNEL_STEPS  # fine-tuning steps after channel pruning
    distill_weight: float = 1.0  # channel-pruned fine-tuning learns from the unpruned model; 0: ground truth only
    channel_lr: float | None = None  # peak learning rate after channel pruning; None: the run's own training rate
    qat: bool = False
    qat_steps: int = 300
    float_model: bool = False
    max_map_drop: float | None = None  # mAP@0.5 points
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)
    calib_images: int = 100
    batch_size: int = 8
    latency_runs: int = 30
    num_threads: int | None = None
    seed: int = 0
    command: str | None = None  # for provenance
    format: str = "tflite"  # "onnx": the float model as ONNX (convert.onnx_export), parity-gated

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ConvertOptions":
        """From ``edge convert``'s parsed arguments (convert/commands/convert.py)."""
        from edge.provenance import command_line

        return cls(
            source=args.source, output=args.output, calib=args.calib, val=args.val, coco=args.coco,
            images=args.images, data=args.data, labels=args.labels, sparsity=args.sparsity,
            prune_steps=args.prune_steps, qat=args.qat, prune_channels=args.prune_channels,
            latency_target=args.latency_target, channel_steps=args.channel_steps,
            distill_weight=args.distill_weight, channel_lr=args.channel_lr, qat_steps=args.qat_steps,
            float_model=args.float_model, max_map_drop=args.max_map_drop,
            postprocess=PostprocessOptions(
                max_detections=args.max_detections, score_threshold=args.score_threshold,
                iou_threshold=args.iou_threshold, detections_per_class=args.detections_per_class,
                use_regular_nms=args.nms == "regular"),
            calib_images=args.calib_images, batch_size=args.batch_size, num_threads=args.threads,
            command=command_line(), format=args.format,
        )


def check_options(opts: ConvertOptions) -> Path:
    opts.postprocess.validate()
    output = Path(opts.output)
    if opts.format not in FORMATS:
        raise EdgeError(f"--format {opts.format!r}: choose {' or '.join(FORMATS)}")
    if output.suffix.lower() != f".{opts.format}":
        raise EdgeError(f"-o {output}: the output must be a .{opts.format} file (--format {opts.format})")
    if opts.format == FORMAT_ONNX:
        if opts.qat:
            raise EdgeError("--qat: --format onnx exports the float model; QAT applies to int8 TFLite only")
        if opts.val is None and opts.coco is None and opts.calib is None:
            raise EdgeError("--format onnx checks the export against the float TFLite model on images: "
                            "pass --val DIR (or --coco ANN.json --images DIR) or --calib DIR")
    if output.parent.exists() and not output.parent.is_dir():
        raise EdgeError(f"-o {output}: {output.parent} is not a directory")
    if opts.max_map_drop is not None and opts.val is None and opts.coco is None:
        raise EdgeError("--max-map-drop needs a held-out set to measure on: --val DIR or --coco ANN.json --images DIR")
    if not 0.0 <= opts.sparsity < 1.0:
        raise EdgeError(f"--sparsity {opts.sparsity}: must be in [0, 1) (0 disables pruning)")
    if opts.prune_channels is not None and not 0.0 <= opts.prune_channels < 1.0:
        raise EdgeError(f"--prune-channels {opts.prune_channels}: must be in [0, 1) "
                        "(the fraction of the prunable channels removed)")
    if opts.latency_target is not None and not 0.0 < opts.latency_target < 1.0:
        raise EdgeError(f"--latency-target {opts.latency_target}: must be between 0 and 1 "
                        "(a fraction of the dense int8 model's invoke time)")
    if opts.channel_steps < 0:
        raise EdgeError(f"--channel-steps {opts.channel_steps}: must be 0 or more")
    if opts.distill_weight < 0:
        raise EdgeError(f"--distill-weight {opts.distill_weight}: must be 0 or more (0: no teacher)")
    if opts.channel_lr is not None and not 0 < opts.channel_lr < 1:
        raise EdgeError(f"--channel-lr {opts.channel_lr}: must be between 0 and 1")
    if wants_channel_pruning(opts) and opts.format == FORMAT_ONNX:
        raise EdgeError("--prune-channels / --latency-target: --format onnx exports the float model as trained; "
                        "channel pruning applies to --format tflite")
    _check_paths(opts, output)
    return output


def _check_paths(opts: ConvertOptions, output: Path) -> None:
    """Before any work: the model and its report may land on no input and must be writable."""
    from convert.report import report_path
    from edge.files import FILE, FOLDER, check_paths

    inputs = [("SOURCE", opts.source), ("--calib", opts.calib), ("--val", opts.val), ("--coco", opts.coco),
              ("--images", opts.images), ("--data", opts.data), ("--labels", opts.labels)]
    check_paths(inputs, [("-o", output.parent, FOLDER), ("-o", output, FILE),
                         ("the report", report_path(output), FILE)])


def wants_channel_pruning(opts: ConvertOptions) -> bool:
    return opts.prune_channels is not None or opts.latency_target is not None
