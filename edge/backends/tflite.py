"""The TFLite backend: a ``.tflite`` model on whichever TFLite runtime the board has.

Preference order: ai-edge-litert (LiteRT), tflite-runtime, then TensorFlow's own ``tf.lite``
(imported only as the last resort, and only here). The choice is reported because it matters:
tflite-runtime has no int8 XNNPACK kernels, so int8 models run several times slower on it (the
README's runtime section has the measured figures).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, BackendInfo, TensorSpec
from edge.contract.tflite_file import load_model_info, read_tflite
from edge.errors import EdgeError, first_line
from edge.provenance import package_version, usable_cores

RUNTIMES: dict[str, tuple[str, str]] = {
    # name: (module holding Interpreter, distribution name for the version)
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite", "tensorflow"),
}

SLOW_RUNTIME_NOTE = {
    "tflite-runtime": (
        "tflite-runtime has no int8 XNNPACK kernels: int8 models run several times slower than with "
        "ai-edge-litert; pip install ai-edge-litert where a wheel exists"
    ),
}


RuntimeInfo = BackendInfo  # what load_interpreter reports about the runtime it chose


def default_num_threads() -> int:
    return usable_cores()


def _version(dist: str) -> str:
    return package_version(dist) or "unknown"


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


def load_interpreter(model_path: str | Path, runtime: str | None = None, num_threads: int | None = None,
                     *, allocate: bool = False):
    """Return ``(interpreter, RuntimeInfo)`` for ``model_path``; tensors allocated when ``allocate``.

    ``runtime`` forces one of :data:`RUNTIMES`; otherwise the first importable one is used. Every
    failure is one :class:`EdgeError` line naming the model.
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
            raise EdgeError(f"{model_path}: the {name} interpreter cannot load it ({first_line(exc)})") from None
        if allocate:
            try:
                interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise EdgeError(f"{model_path}: cannot allocate tensors ({first_line(exc)})") from None
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
    total = 0
    for detail in interpreter.get_tensor_details():
        shape = detail["shape"]
        if len(shape):
            total += int(np.prod(shape)) * np.dtype(detail["dtype"]).itemsize
    return total


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    return TensorSpec(int(detail["index"]), detail["name"], tuple(int(v) for v in detail["shape"]),
                      np.dtype(detail["dtype"]), (float(scale), int(zero_point)))


class TFLiteBackend(Backend):
    """A ``.tflite`` model on a TFLite interpreter (LiteRT, tflite-runtime or tf.lite), tensors allocated.

    Views are ``interpreter.tensor(i)`` functions: each call gives a fresh view, which callers drop
    before the next :meth:`invoke`.
    """

    def __init__(self, model_path: str | Path, runtime: str | None = None, num_threads: int | None = None,
                 *, tflite=None) -> None:
        self.model_path = Path(model_path)
        self.tflite = tflite if tflite is not None else read_tflite(self.model_path)
        self.operators = list(self.tflite.operators)
        self.interpreter, self.info = load_interpreter(self.model_path, runtime, num_threads, allocate=True)
        self.inputs = [_spec(d) for d in self.interpreter.get_input_details()]
        self.outputs = [_spec(d) for d in self.interpreter.get_output_details()]
        self._setup_state()

    @property
    def has_postprocess(self) -> bool:
        return self.tflite.has_postprocess

    @property
    def postprocess_options(self) -> dict | None:
        return self.tflite.postprocess_options

    def model_info(self):
        return load_model_info(self.model_path, self.tflite)

    def view(self, spec: TensorSpec):
        return self.interpreter.tensor(spec.index)

    def _run(self) -> None:
        self.interpreter.invoke()

    def signature_output_names(self) -> dict[int, str]:
        try:
            signatures = self.interpreter._get_full_signature_list()
        except AttributeError:  # runtimes without signature introspection
            return {}
        names = {}
        for signature in signatures.values():
            for name, index in signature.get("outputs", {}).items():
                names[int(index)] = name
        return names

    def memory(self) -> dict:
        return {"tensor_bytes": tensor_bytes(self.interpreter), "model_file_bytes": self.model_path.stat().st_size}
