"""Arguments every command shares, checked once, in argparse types: a bad value is one line naming
the option (argparse's own ``error: argument --x: ...``), before any model is loaded."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from edge.backends import RUNTIMES
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


def add_model_args(parser: argparse.ArgumentParser, *, positional: bool = True, auto_threads: bool = False) -> None:
    """``[MODEL]`` / ``--model``, ``--labels``, ``--runtime``, ``--threads``, ``--resize`` and ``--score``."""
    if positional:
        parser.add_argument("model_path", nargs="?", metavar="MODEL", type=Path,
                            help="detector model file or catalogue name (same as --model)")
    parser.add_argument("--model", type=Path, help="detector model file, or a catalogue name such as coco-ssd (pulled "
                                                   "on first use; see edge models); default: the bundled demo model")
    parser.add_argument("--labels", type=Path, help="labels file, one per line (default: the model's own labels)")
    parser.add_argument("--runtime", choices=list(RUNTIMES), help="force a runtime (default: the first found)")
    if auto_threads:
        parser.add_argument("--threads", type=threads_or_auto, default=THREADS_AUTO, metavar="N|auto",
                            help="interpreter threads; auto (default) measures all cores against one left for "
                                 "capture during the warm-up and keeps the faster end to end")
    else:
        parser.add_argument("--threads", type=thread_count, metavar="N", help="interpreter threads (default: all cores)")
    parser.add_argument("--resize", choices=[STRETCH, LETTERBOX], help="how frames fit the input (default: the model's)")
    parser.add_argument("--score", type=unit_interval, default=0.5, metavar="S", help="minimum score, 0..1 (default 0.5)")


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
    return Detector(model_from_args(args), labels=args.labels, score_threshold=args.score, num_threads=threads,
                    runtime=args.runtime, resize=args.resize)
