"""Telling a detector's tensors apart: the image input, recurrent state, the head kind, output roles.

Pure functions over engine-neutral tensor specs (anything with ``index``, ``name``, ``shape``,
``dtype``), so ``edge run``, ``edge inspect`` and ``edge bench`` classify a model the same way,
whichever backend loaded it. Output order is found by name, then by shape, never assumed: it changed
across TensorFlow versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edge.contract.modelinfo import HEAD_POSTPROCESS, HEAD_RAW
from edge.errors import EdgeError

POSTPROCESS_ROLES = ("boxes", "classes", "scores", "count")
RAW_ROLES = ("encodings", "logits")

# Output names that signatures of TF2 exports (and our ONNX exports) use.
SIGNATURE_NAMES = {
    "boxes": ("detection_boxes", "boxes"),
    "classes": ("detection_classes", "classes"),
    "scores": ("detection_scores", "scores"),
    "count": ("num_detections", "count", "num_boxes"),
}
# TF1 exports name the op's outputs TFLite_Detection_PostProcess, :1, :2, :3.
_TF1_SUFFIXES = {"": "boxes", ":0": "boxes", ":1": "classes", ":2": "scores", ":3": "count"}
_STATE_IN, _STATE_OUT = "raw_inputs/init_", "raw_outputs/"


def _shape(spec) -> tuple[int, ...]:
    return tuple(int(v) for v in spec.shape)


def image_input(inputs: Sequence, model: str | Path = "model"):
    """The one ``[1, H, W, 3]`` input, or EdgeError naming what was found."""
    images = [d for d in inputs if len(d.shape) == 4 and d.shape[-1] == 3]
    if len(images) != 1:
        shapes = ", ".join(f"{d.name} {list(_shape(d))}" for d in inputs)
        raise EdgeError(f"{model}: expected one image input [1, H, W, 3], found {shapes}")
    return images[0]


def recurrent_state_pairs(inputs: Sequence, outputs: Sequence, image, model: str | Path = "model") -> list:
    """``(output, input)`` pairs of LSTM-style state: ``raw_outputs/X`` feeds ``raw_inputs/init_X``.

    Any other non-image input is an error: the detector would not know what to put in it.
    """
    by_name = {d.name: d for d in outputs}
    pairs = []
    for d in inputs:
        if d.index == image.index:
            continue
        stem = d.name.split(_STATE_IN, 1)[-1] if _STATE_IN in d.name else None
        match = by_name.get(f"{_STATE_OUT}{stem}") if stem else None
        if match is None or _shape(match) != _shape(d):
            raise EdgeError(f"{model}: input {d.name} {list(_shape(d))} is neither the image nor "
                            f"a recurrent state fed by a {_STATE_OUT} output")
        pairs.append((match, d))
    return pairs


def classify_head(outputs: Sequence, has_postprocess: bool, declared: str | None = None,
                  model: str | Path = "model") -> str:
    """:data:`HEAD_POSTPROCESS` or :data:`HEAD_RAW` for the detection ``outputs`` (state removed).

    ``has_postprocess``: the model holds a post-process op; ``declared``: the head its metadata names
    (a model can carry the op yet be meant to be decoded raw).
    """
    if has_postprocess and declared != HEAD_RAW:
        if len(outputs) != 4:
            raise EdgeError(f"{model}: TFLite_Detection_PostProcess model with {len(outputs)} "
                            "outputs, expected 4 (boxes, classes, scores, count)")
        return HEAD_POSTPROCESS
    shapes = [_shape(d) for d in outputs]
    if len(outputs) == 2 and any(len(s) in (3, 4) and s[-1] == 4 for s in shapes):
        return HEAD_RAW
    raise EdgeError(
        f"{model}: not an SSD detector: outputs {', '.join(str(list(s)) for s in shapes)}; "
        "expected TFLite_Detection_PostProcess or box encodings [1, A, 4] + class scores [1, A, C]"
    )


def postprocess_roles(outputs: Sequence, signature_names: dict[int, str] | None = None,
                      model: str | Path = "model") -> dict:
    """``{"boxes", "classes", "scores", "count"} -> spec``: by signature name, op-output name, then shape."""
    signature_names = signature_names or {}
    roles = {}
    for d in outputs:
        name = signature_names.get(d.index, "")
        for role, names in SIGNATURE_NAMES.items():
            if name in names:
                roles[role] = d
    if len(roles) != 4:
        roles = {}
        for d in outputs:
            base, _, suffix = d.name.partition(":")
            if base.endswith("TFLite_Detection_PostProcess"):
                role = _TF1_SUFFIXES.get(f":{suffix}" if suffix else "")
                if role:
                    roles[role] = d
    if len(roles) != 4:
        roles = {}
        for d in outputs:  # our ONNX exports and most others name the outputs plainly
            for role, names in SIGNATURE_NAMES.items():
                if d.name in names:
                    roles[role] = d
    if len(roles) != 4:  # by shape: boxes [1,N,4], count [1]; classes before scores in index order
        by_index = sorted(outputs, key=lambda d: d.index)
        boxes = [d for d in by_index if len(d.shape) == 3 and d.shape[-1] == 4]
        count = [d for d in by_index if len(d.shape) == 1]
        pairs = [d for d in by_index if len(d.shape) == 2]
        if len(boxes) != 1 or len(count) != 1 or len(pairs) != 2:
            raise EdgeError(f"{model}: cannot tell the post-process outputs apart by name or shape")
        roles = {"boxes": boxes[0], "count": count[0], "classes": pairs[0], "scores": pairs[1]}
    for role, d in roles.items():
        if np.dtype(d.dtype) != np.float32:
            raise EdgeError(f"{model}: post-process output '{role}' is {np.dtype(d.dtype)}, expected float32")
    return roles


def raw_head_roles(outputs: Sequence) -> dict:
    """``{"encodings": [.., A, 4] spec, "logits": [.., A, C] spec}`` of a raw head."""
    encodings = next(d for d in outputs if d.shape[-1] == 4)
    logits = next(d for d in outputs if d is not encodings)
    return {"encodings": encodings, "logits": logits}


def anchor_count(spec) -> int:
    """Anchors in a raw head output ``[1, A, 4]`` / ``[1, A, 1, 4]`` / ``[1, A, C]``."""
    return int(np.prod(_shape(spec)[:-1]))


def describe_head(kind: str, roles: dict) -> str:
    """A short description for ``edge inspect``: the head kind, with the anchor count of a raw head."""
    if kind == HEAD_POSTPROCESS:
        return "TFLite_Detection_PostProcess"
    return f"raw SSD head ({anchor_count(roles['encodings'])} anchors)"
