"""Models shipped inside the package (the bundled demo detector)."""

from __future__ import annotations

from pathlib import Path

from edge.errors import EdgeError

MODELS_DIR = Path(__file__).resolve().parent
DEMO_MODEL = MODELS_DIR / "demo_ssd_int8.tflite"
# The demo's float source: the training run it was converted from, model variables only. Desktop work
# (edge convert --format onnx, --float, other settings) reads it from a source checkout; the package
# installed on a board leaves it out.
DEMO_RUN = MODELS_DIR / "demo_run"


def default_model_path() -> Path:
    """The bundled int8 demo detector (synthetic shapes), used when no ``--model`` is given."""
    if not DEMO_MODEL.is_file():
        raise EdgeError(f"no --model given and the bundled demo model {DEMO_MODEL} is missing; pass --model")
    return DEMO_MODEL
