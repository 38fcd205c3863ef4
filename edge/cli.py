"""The ``edge`` command: a dispatcher that imports only the subcommand being run.

Desktop subcommands live in ``convert.commands`` and import TensorFlow lazily, so ``edge run`` on a
board never touches it. Every :class:`~edge.errors.EdgeError` becomes one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from edge.errors import EdgeError
from edge.signals import install_stop_signals, interrupted

# name -> (module, one-line help); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge.commands.run", "live detection from a camera, file, stream or synthetic source"),
    "detect": ("edge.commands.detect", "detect objects in image files"),
    "inspect": ("edge.commands.inspect", "show a model's tensors, operators, metadata and memory"),
    "models": ("edge.commands.models", "list the model catalogue and pull (download, verify, cache) a detector"),
    "plan": ("edge.commands.plan", "predict edge run's peak RSS per model (arena, weights, cameras, sinks) and what fits in --ram"),
    "bench": ("edge.commands.bench", "benchmark memory per frame and latency against the usual pipeline"),
    "data": ("convert.commands.data", "make datasets (synthetic shapes) [desktop]"),
    "train": ("convert.commands.train", "train a MobileNetV2 SSD/SSDLite [desktop]"),
    "convert": ("convert.commands.convert", "checkpoint or OD API export -> pruned int8 .tflite [desktop]"),
    "eval": ("convert.commands.eval", "mAP of any detector .tflite on VOC or COCO data [desktop]"),
}


def _version() -> str:
    from edge.provenance import package_version

    return package_version("edgekit") or "unknown"  # unknown: a source tree that was not installed


def _quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class _Parser(argparse.ArgumentParser):
    """argparse's own checks as one :class:`EdgeError` line, like every other bad input."""

    def error(self, message: str):
        raise EdgeError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="edge", description="edgekit: SSD detectors on small boards, memory measured.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"edgekit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show tracebacks for errors")
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    restore_signals = install_stop_signals()
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not getattr(args, "_main", None):
            parser.print_help()
            return 2
        return int(args._main(args) or 0)
    except EdgeError as exc:
        if debug:
            raise
        if interrupted():
            print(f"edge: interrupted ({interrupted()})", file=sys.stderr)
            return 130
        print(f"edge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"edge: interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return 130
    except Exception:
        # A stop signal raised inside a C extension (TensorFlow's tracing) can surface as a
        # SystemError or TypeError instead of KeyboardInterrupt; it is still a stop, not a bug.
        name = interrupted()
        if name is None or debug:
            raise
        print(f"edge: interrupted ({name})", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    finally:
        restore_signals()


if __name__ == "__main__":
    sys.exit(main())
