"""Loading a TFLite interpreter from whichever runtime the board has.

Preference order: ai-edge-litert (LiteRT), tflite-runtime, then TensorFlow's own ``tf.lite``
(imported only as the last resort, and only here). The choice is reported because it matters:
on the fixture int8 SSD (2 x86 cores) LiteRT 2.3 invokes in ~17 ms and tflite-runtime 2.14 in
~156 ms, since the latter has no int8 XNNPACK kernels.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

RUNTIMES: dict[str, tuple[str, str]] = {
    # name: (module holding Interpreter, distribution name for the version)
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite", "tensorflow"),
}

SLOW_RUNTIME_NOTE = {
    "tflite-runtime": (
        "tflite-runtime has no int8 XNNPACK kernels: int8 models run several times slower than with "
        "ai-edge-litert (fixture SSD on 2 x86 cores: ~156 ms vs ~17 ms per invoke); "
        "pip install ai-edge-litert where a wheel exists"
    ),
}


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str
    num_threads: int
    note: str | None = None  # a warning the user should see (slow runtime)

    def describe(self) -> str:
        return f"{self.name} {self.version}, {self.num_threads} thread(s)"


def default_num_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "unknown"


def _numpy_conflict(name: str) -> str | None:
    """tflite-runtime 2.14 imports under NumPy 2 but its interpreter then fails with SystemError."""
    if name != "tflite-runtime" or importlib.util.find_spec("tflite_runtime") is None:
        return None
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2 or not _version("tflite-runtime").startswith("2.1"):
        return None
    return (f"tflite-runtime {_version('tflite-runtime')} was compiled against NumPy 1.x and cannot run under "
            f"NumPy {numpy.__version__}: pip install 'numpy<2' (edgekit[legacy] pins it) or use ai-edge-litert")


def _interpreter_class(name: str):
    module_name, _ = RUNTIMES[name]
    if name == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(module_name)
    return module.Interpreter


def available_runtimes() -> list[str]:
    found = []
    for name, (module_name, _) in RUNTIMES.items():
        try:
            if importlib.util.find_spec(module_name.split(".")[0]) is not None:
                found.append(name)
        except (ImportError, ValueError):
            continue
    return found


def load_interpreter(model_path: str | Path, runtime: str | None = None, num_threads: int | None = None):
    """Return ``(interpreter, RuntimeInfo)`` for ``model_path``, tensors not yet allocated.

    ``runtime`` forces one of :data:`RUNTIMES`; otherwise the first importable one is used.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise EdgeError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    threads = num_threads or default_num_threads()
    if threads < 1:
        raise EdgeError(f"--threads {num_threads}: must be at least 1")
    candidates = [runtime] if runtime else list(RUNTIMES)
    errors = []
    for name in candidates:
        conflict = _numpy_conflict(name)
        if conflict:
            if runtime:
                raise EdgeError(f"--runtime {runtime}: {conflict}")
            errors.append(conflict)
            continue
        try:
            interpreter_class = _interpreter_class(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        try:
            interpreter = interpreter_class(model_path=str(model_path), num_threads=threads)
        except (ValueError, RuntimeError, SystemError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgeError(f"{model_path}: the {name} interpreter cannot load it ({first_line})") from None
        info = RuntimeInfo(name, _version(RUNTIMES[name][1]), threads, SLOW_RUNTIME_NOTE.get(name))
        return interpreter, info
    if runtime:
        raise EdgeError(f"--runtime {runtime}: not installed ({errors[0]})")
    conflicts = [e for e in errors if "NumPy" in e]
    if conflicts:
        raise EdgeError(conflicts[0])
    raise EdgeError(
        "no TFLite runtime found: pip install ai-edge-litert (or edgekit[legacy] for tflite-runtime)"
    )


def tensor_bytes(interpreter) -> int:
    """Sum of every tensor's size (weights and activations) after ``allocate_tensors()``, in bytes."""
    import numpy as np

    total = 0
    for detail in interpreter.get_tensor_details():
        shape = detail["shape"]
        if len(shape):
            total += int(np.prod(shape)) * np.dtype(detail["dtype"]).itemsize
    return total
