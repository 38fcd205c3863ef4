"""edgekit's board-side runtime: SSD detection on small boards with low, steady memory.

Imports numpy, OpenCV and a TFLite runtime only -- never TensorFlow. The package itself imports
nothing heavy: ``import edge.contract.anchors`` (as training does) loads neither OpenCV nor a
runtime; the names below are imported on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Detector": "edge.detector.detector",
    "Detections": "edge.contract.detections",
    "FrameBuffer": "edge.detector.buffer",
    "EdgeError": "edge.errors",
    "stream": "edge.streaming",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
