"""Arguments every command shares, checked once, in argparse types: a bad value is one line naming
the option (argparse's own ``error: argument --x: ...``), before any model is loaded."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from edge.backends import ONNX_OPTION_FLAGS, RUNTIMES, is_onnx
from edge.detector.buffer import LETTERBOX, STRETCH
from edge.errors import EdgeError
from edge.provenance import usable_cores

#: More interpreter threads than this many per usable core only adds contention (and 40000 crashes
#: XNNPACK): refuse it.
MAX_THREADS_PER_CORE = 4
THREADS_AUTO = "auto"


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be 0 or more")
    return value


def unit_interval(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} must be between 0 and 1")
    return value


#: Where frames are read (edge.live.inline_capture.CAPTURE_MODES; here so that building the parser
#: imports nothing heavy).
CAPTURE_CHOICES = ["auto", "thread", "inline"]


def max_threads() -> int:
    return MAX_THREADS_PER_CORE * usable_cores()


def thread_count(text: str) -> int:
    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(f"{value} is more than {max_threads()} ({MAX_THREADS_PER_CORE} per usable "
                                         f"core, {usable_cores()} here)")
    return value


def threads_or_auto(text: str) -> int | str:
    return THREADS_AUTO if text.strip().lower() == THREADS_AUTO else thread_count(text)


def count_or_auto(text: str) -> int | str:
    """``auto`` or a whole number of at least 1 (``--detectors``)."""
    return THREADS_AUTO if text.strip().lower() == THREADS_AUTO else positive_int(text)


def provider_list(text: str) -> tuple[str, ...]:
    """``--providers tensorrt,cuda,cpu``: known names, in preference order; an unknown one names what is available."""
    from edge.backends.onnx_providers import PROVIDERS, available_text, installed_providers

    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    installed = installed_providers()
    here = available_text(installed) if installed else "ONNX Runtime is not installed here"
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: name at least one of {', '.join(PROVIDERS)} ({here})")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown provider {unknown[0]!r}: choose from {', '.join(PROVIDERS)} "
                                         f"({here})")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a provider is named twice")
    return names


def add_onnx_args(parser: argparse.ArgumentParser) -> None:
    """``--providers``, ``--trt-cache``, ``--trt-fp16``, ``--trt-int8`` and ``--calib`` (``.onnx`` models only)."""
    group = parser.add_argument_group("ONNX Runtime (.onnx models only)")
    group.add_argument("--providers", type=provider_list, metavar="LIST",
                       help="ONNX Runtime execution providers in preference order, comma-separated, from tensorrt, "
                            "cuda, cpu (default: every installed one, best first). A provider that is not available "
                            "here is an error unless a later one in the list is, e.g. tensorrt,cuda,cpu falls back "
                            "to the CPU with a warning")
    group.add_argument("--trt-cache", type=Path, metavar="DIR",
                       help="TensorRT engine cache: the first run builds the engine (minutes on a Jetson), later "
                            "starts load it from DIR (default: ~/.cache/edgekit/tensorrt/MODEL-HASH)")
    group.add_argument("--trt-fp16", action="store_true", help="let TensorRT run layers in FP16")
    group.add_argument("--trt-int8", action="store_true",
                       help="let TensorRT run layers in INT8 (FP16 where INT8 cannot); needs a calibration table "
                            "in the engine cache, made once from --calib DIR")
    group.add_argument("--calib", type=Path, metavar="DIR",
                       help="with --trt-int8: images like the camera's, for the INT8 calibration table (made once, "
                            "on the CPU, and kept in the engine cache)")


def onnx_options_from_args(args: argparse.Namespace, models) -> dict:
    """The ONNX Runtime options the user gave, checked against the ``models`` they apply to.

    One line (EdgeError) naming the option when it cannot apply: no ``.onnx`` model among ``models``
    (None is the bundled demo, a .tflite), ``--calib`` without ``--trt-int8``, or TensorRT options
    with a ``--providers`` list that leaves TensorRT out. Whether a provider is available is the
    backend's to say (it knows what this machine's ONNX Runtime offers).
    """
    from edge.models import default_model_path

    options = {"providers": getattr(args, "providers", None), "trt_cache_dir": getattr(args, "trt_cache", None),
               "trt_fp16": getattr(args, "trt_fp16", False), "trt_int8": getattr(args, "trt_int8", False),
               "calib": getattr(args, "calib", None)}
    given = {k: v for k, v in options.items() if v not in (None, False)}
    if not given:
        return {}
    models = models if isinstance(models, list) else [models]
    models = [default_model_path() if m is None else Path(m) for m in models]
    flags = ", ".join(ONNX_OPTION_FLAGS[k] for k in given)
    if not any(is_onnx(m) for m in models):
        which = models[0].name if len(models) == 1 else "every MODEL"
        raise EdgeError(f"{flags}: for .onnx models (ONNX Runtime) only, and {which} is a TFLite model")
    if "calib" in given and "trt_int8" not in given:
        raise EdgeError(f"--calib {given['calib']}: the images calibrate TensorRT INT8; add --trt-int8")
    if "calib" in given and not Path(given["calib"]).is_dir():
        raise EdgeError(f"--calib {given['calib']}: no such folder")
    trt = [ONNX_OPTION_FLAGS[k] for k in ("trt_cache_dir", "trt_fp16", "trt_int8") if k in given]
    providers = given.get("providers")
    if trt and providers is not None and "tensorrt" not in providers:
        raise EdgeError(f"{', '.join(trt)}: TensorRT options, but --providers {','.join(providers)} leaves TensorRT "
                        f"out; add it, e.g. --providers tensorrt,{','.join(providers)}")
    return given


def runtime_lines(info) -> list[str]:
    """What the runtime wants said once at start: ``warning: ...`` (a fallback) and ``note: ...`` lines."""
    return [f"warning: {w}" for w in getattr(info, "warnings", ())] + ([f"note: {info.note}"] if info.note else [])


def add_model_args(parser: argparse.ArgumentParser, *, positional: bool = True, auto_threads: bool = False) -> None:
    """``[MODEL]`` / ``--model``, ``--labels``, ``--runtime``, ``--threads``, ``--resize``, ``--score`` and
    the ONNX Runtime options (:func:`add_onnx_args`)."""
    if positional:
        parser.add_argument("model_path", nargs="?", metavar="MODEL", type=Path,
                            help="detector model file (.tflite or .onnx) or catalogue name (same as --model)")
    parser.add_argument("--model", type=Path, help="detector model file (.tflite, or .onnx for ONNX Runtime), or a "
                                                   "catalogue name such as coco-ssd (pulled "
                                                   "on first use; see edge models); default: the bundled demo model")
    parser.add_argument("--labels", type=Path, help="labels file, one per line (default: the model's own labels)")
    parser.add_argument("--runtime", "--backend", dest="runtime", choices=list(RUNTIMES), metavar="NAME",
                        help=f"force the engine behind the Backend: {', '.join(RUNTIMES)} (default: the first "
                             "found for .tflite models; .onnx models run on onnxruntime)")
    if auto_threads:
        parser.add_argument("--threads", type=threads_or_auto, default=THREADS_AUTO, metavar="N|auto",
                            help="interpreter threads; auto (default) measures all cores against one left for "
                                 "capture during the warm-up and keeps the faster end to end")
    else:
        parser.add_argument("--threads", type=thread_count, metavar="N", help="interpreter threads (default: all cores)")
    parser.add_argument("--resize", choices=[STRETCH, LETTERBOX], help="how frames fit the input (default: the model's)")
    parser.add_argument("--score", type=unit_interval, default=0.5, metavar="S", help="minimum score, 0..1 (default 0.5)")
    add_onnx_args(parser)


def model_from_args(args: argparse.Namespace) -> Path | None:
    """The one model the user named (positional or ``--model``), or None for the bundled demo.

    A catalogue name (``edge models``) gives the cached model, pulled on first use; the result is
    kept in ``args`` so that every later call sees the same file.
    """
    positional = getattr(args, "model_path", None)
    if positional and args.model and Path(positional) != Path(args.model):
        raise EdgeError(f"two models given: {positional} and --model {args.model}; give one")
    named = positional or args.model
    if named is None or Path(named).exists():
        return named
    from edge.download import resolve_model

    resolved = resolve_model(named)
    args.model, args.model_path = resolved, None
    return resolved


def detector_from_args(args: argparse.Namespace, *, threads: int | None = None):
    """A :class:`~edge.detector.detector.Detector` for the shared model arguments."""
    from edge.detector.detector import Detector

    if threads is None and isinstance(args.threads, int):
        threads = args.threads
    model = model_from_args(args)
    return Detector(model, labels=args.labels, score_threshold=args.score, num_threads=threads,
                    runtime=args.runtime, resize=args.resize, backend_options=onnx_options_from_args(args, model))
