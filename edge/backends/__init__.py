"""Inference engines behind one seam, :class:`edge.backends.base.Backend`: the detector writes its input into a
view, invokes, and reads outputs by role, whatever engine runs underneath.

:func:`open_backend` picks the engine from the model file; ``runtime`` names one explicitly. Engines
are imported only when a model needs them, so a board carries only the one it uses.
"""

from __future__ import annotations

from pathlib import Path

from edge.errors import EdgeError

#: ``--runtime`` choices: TFLite interpreters (for ``.tflite`` files).
TFLITE_RUNTIMES = ("litert", "tflite-runtime", "tensorflow")
RUNTIMES = TFLITE_RUNTIMES


def open_backend(model_path: str | Path, runtime: str | None = None, num_threads: int | None = None, **options):
    """A loaded, allocated :class:`~edge.backends.base.Backend` for ``model_path``."""
    path = Path(model_path)
    if runtime is not None and runtime not in RUNTIMES:
        raise EdgeError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    from edge.backends.tflite import TFLiteBackend

    return TFLiteBackend(path, runtime, num_threads, **options)
