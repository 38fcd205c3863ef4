"""``edge convert SOURCE -o OUT.tflite``: a trained checkpoint or OD API export -> int8 TFLite + report."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.commands._args import thread_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="training run directory (config.json + checkpoints), Keras model "
                        "file with config.json beside it, OD API frozen_inference_graph.pb, or TF2 SavedModel dir")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output .tflite, or .onnx with --format onnx (report: OUT.report.json)")
    parser.add_argument("--format", choices=("tflite", "onnx"), default="tflite",
                        help="tflite (default): int8 or float TFLite; onnx: the float model with box decoding and "
                             "NMS in the graph, for ONNX Runtime (TensorRT, CUDA, CPU), checked against the float "
                             "TFLite model on --val or --calib images (exit 3, nothing written, if they differ)")
    parser.add_argument("--calib", type=Path, help="calibration images for int8 (default: the --data images)")
    parser.add_argument("--calib-images", type=int, default=100, help="calibration images used (default 100)")
    parser.add_argument("--val", type=Path, help="held-out VOC folder (or a folder with one COCO .json) for mAP")
    parser.add_argument("--coco", type=Path, help="held-out COCO annotation .json (with --images)")
    parser.add_argument("--images", type=Path, help="image folder of --coco")
    parser.add_argument("--data", type=Path, help="training data (VOC/COCO) for pruning and QAT fine-tuning")
    parser.add_argument("--labels", type=Path, help="label file (one per line) for OD API sources")
    parser.add_argument("--sparsity", type=float, default=0.5,
                        help="zero this fraction of the Conv2D weights (TFMOT magnitude pruning; default 0.5; 0 "
                             "disables). A download-size option: the .tflite stays as large and as fast (int8 "
                             "kernels do not skip zeros), only its gzip shrinks. For a smaller, faster model use "
                             "--prune-channels")
    parser.add_argument("--prune-steps", type=int, default=300, help="fine-tuning steps while pruning (default 300)")
    parser.add_argument("--prune-channels", type=float, default=None, metavar="R",
                        help="remove this fraction of the prunable channels (MobileNetV2 expansion channels, "
                             "SSDLite head inputs), per block where measured int8 latency gains most; the model "
                             "really gets smaller and faster (unlike --sparsity)")
    parser.add_argument("--latency-target", type=float, default=None, metavar="F",
                        help="remove channels until the int8 network's invoke time is at most F x the dense "
                             "model's, measured on this machine's interpreter")
    from convert.convert_options import DEFAULT_CHANNEL_STEPS

    parser.add_argument("--channel-steps", type=int, default=DEFAULT_CHANNEL_STEPS,
                        help=f"fine-tuning steps after channel pruning (default {DEFAULT_CHANNEL_STEPS}; "
                             "removing 40%% of a converged 2,000-step run needed 1800 to lose under 1.5 "
                             "mAP@0.5 points, README)")
    parser.add_argument("--channel-lr", type=float, default=None, metavar="LR",
                        help="peak learning rate of that fine-tuning (default: the rate the run was trained at, "
                             "from its config.json; 2e-3 for sources without one)")
    parser.add_argument("--distill-weight", type=float, default=1.0,
                        help="channel-pruned fine-tuning learns the unpruned model's outputs with this weight "
                             "beside the ground truth (default 1.0; 0: ground truth only)")
    parser.add_argument("--qat", action="store_true",
                        help="quantization-aware fine-tuning instead of PTQ (sparsity-preserving PQAT when pruning)")
    parser.add_argument("--qat-steps", type=int, default=300, help="QAT fine-tuning steps (default 300)")
    parser.add_argument("--float", dest="float_model", action="store_true", help="write a float32 model instead of int8")
    parser.add_argument("--max-map-drop", type=float,
                        help="fail (exit 3, nothing written) if mAP@0.5 drops more than this many points vs float")
    parser.add_argument("--max-detections", type=int, default=100, help="detections the model returns (default 100)")
    parser.add_argument("--score-threshold", type=float, default=0.05,
                        help="scores below this never enter NMS (default 0.05)")
    parser.add_argument("--iou-threshold", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--detections-per-class", type=int, default=100,
                        help="regular NMS: candidates kept per class (default 100)")
    parser.add_argument("--nms", choices=("fast", "regular"), default="fast",
                        help="fast: one class-agnostic NMS (OD API default); regular: per-class NMS")
    parser.add_argument("--batch-size", type=int, default=8, help="fine-tuning batch size (default 8)")
    parser.add_argument("--threads", type=thread_count, help="interpreter threads for validation (default: all cores)")


def main(args: argparse.Namespace) -> int:
    from convert.conversion import convert
    from convert.convert_options import ConvertOptions
    from convert.report import report_path

    options = ConvertOptions.from_args(args)
    convert(options)
    print(f"wrote {options.output} and {report_path(options.output)}")
    return 0
