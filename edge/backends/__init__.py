"""Inference engines behind one seam, :class:`edge.backends.base.Backend`: the detector writes its input into a
view, invokes, and reads outputs by role, whatever engine runs underneath.

:func:`open_backend` picks the engine from the model file (``.onnx``: ONNX Runtime; anything else: a
TFLite runtime); ``runtime`` names one explicitly. Engines are imported only when a model needs
them, so a board carries only the one it uses.
"""

from __future__ import annotations

from pathlib import Path

from edge.errors import EdgeError

#: ``--runtime`` choices: TFLite interpreters (for ``.tflite`` files).
TFLITE_RUNTIMES = ("litert", "tflite-runtime", "tensorflow")
#: ``--runtime`` choices for ``.onnx`` files.
ONNX_RUNTIMES = ("onnxruntime",)
RUNTIMES = TFLITE_RUNTIMES + ONNX_RUNTIMES
ONNX_SUFFIXES = (".onnx",)
#: Options only the ONNX Runtime backend takes (``open_backend(..., providers=...)``), and the
#: command-line flag of each (the error lines name what the user typed).
ONNX_OPTION_FLAGS = {"providers": "--providers", "trt_cache_dir": "--trt-cache", "trt_fp16": "--trt-fp16",
                     "trt_int8": "--trt-int8", "calib": "--calib"}
ONNX_OPTIONS = tuple(ONNX_OPTION_FLAGS)


def is_onnx(model_path: str | Path) -> bool:
    return Path(model_path).suffix.lower() in ONNX_SUFFIXES


def open_backend(model_path: str | Path, runtime: str | None = None, num_threads: int | None = None, **options):
    """A loaded, allocated :class:`~edge.backends.base.Backend` for ``model_path``.

    ``options`` go to the backend: for ONNX Runtime ``providers`` (names in preference order, e.g.
    ``("tensorrt", "cuda", "cpu")``) and the TensorRT ones (``trt_cache_dir``, ``trt_fp16``,
    ``trt_int8``, ``calib``); options left at None are dropped, so callers can pass every option they
    parsed whatever the model.
    """
    path = Path(model_path)
    if runtime is not None and runtime not in RUNTIMES:
        raise EdgeError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    options = {k: v for k, v in options.items() if v is not None}
    onnx_model = is_onnx(path)
    if runtime in ONNX_RUNTIMES or (runtime is None and onnx_model):
        if not onnx_model:
            raise EdgeError(f"--runtime {runtime}: {path} is not an .onnx model (ONNX Runtime runs .onnx files; "
                            f"for .tflite use {', '.join(TFLITE_RUNTIMES)})")
        from edge.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, num_threads, **options)
    if onnx_model:
        raise EdgeError(f"--runtime {runtime}: {path} is an ONNX model; run it with --runtime onnxruntime")
    onnx_only = [k for k in ONNX_OPTIONS if k in options and options[k] not in (False, ())]
    if onnx_only:
        flags = ", ".join(ONNX_OPTION_FLAGS[k] for k in onnx_only)
        raise EdgeError(f"{flags}: for .onnx models on ONNX Runtime only, and {path.name} is a TFLite model")
    options = {k: v for k, v in options.items() if k not in ONNX_OPTIONS}
    from edge.backends.tflite import TFLiteBackend

    return TFLiteBackend(path, runtime, num_threads, **options)
