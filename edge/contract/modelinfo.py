"""What travels with a model: labels, input normalisation, head decoding, provenance.

Stored as JSON inside the ``.tflite`` (a flatbuffer metadata entry named ``edgekit``, see
:mod:`edge.contract.tflite_file`) or in a sidecar ``<model>.json`` next to it; the sidecar wins so that a
third-party model can be described without rewriting it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.contract.anchors import AnchorConfig
from edge.contract.boxcoding import BoxCoderScales
from edge.errors import EdgeError

FORMAT = "edgekit-model/1"
HEAD_POSTPROCESS = "postprocess"
HEAD_RAW = "raw"
SCORE_CONVERSIONS = ("sigmoid", "softmax", "identity")


@dataclass
class Normalization:
    """Float inputs are ``(pixel - mean) / std`` on RGB pixels in 0..255; default -> [-1, 1]."""

    mean: float = 127.5
    std: float = 127.5

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


@dataclass
class ModelInfo:
    labels: list[str] = field(default_factory=list)
    normalization: Normalization = field(default_factory=Normalization)
    color: str = "RGB"  # channel order the model was trained on
    resize: str = "stretch"  # "stretch" or "letterbox", how training images were fitted
    head: str | None = None  # None: found from the model's outputs
    anchors: AnchorConfig | None = None
    box_coder: BoxCoderScales = field(default_factory=BoxCoderScales)
    score_conversion: str = "sigmoid"  # raw heads: how class logits become scores
    has_background: bool = True  # raw heads: class column 0 is background
    nms_iou_threshold: float = 0.6  # raw heads: per-class NMS
    max_detections: int = 100  # raw heads: capacity of the decoded detections
    postprocess: dict = field(default_factory=dict)  # attributes of the post-process op, as built
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model metadata") -> "ModelInfo":
        try:
            info = cls(
                labels=[str(label) for label in data.get("labels", [])],
                normalization=Normalization(**data.get("normalization", {})),
                color=data.get("color", "RGB"),
                resize=data.get("resize", "stretch"),
                head=data.get("head"),
                anchors=AnchorConfig.from_dict(data["anchors"]) if data.get("anchors") else None,
                box_coder=BoxCoderScales.from_dict(data.get("box_coder")),
                score_conversion=data.get("score_conversion", "sigmoid"),
                has_background=bool(data.get("has_background", True)),
                nms_iou_threshold=float(data.get("nms_iou_threshold", 0.6)),
                max_detections=int(data.get("max_detections", 100)),
                postprocess=dict(data.get("postprocess", {})),
                provenance=dict(data.get("provenance", {})),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise EdgeError(f"{source}: invalid edgekit metadata ({exc})") from None
        if info.score_conversion not in SCORE_CONVERSIONS:
            raise EdgeError(
                f"{source}: score_conversion must be one of {', '.join(SCORE_CONVERSIONS)}, "
                f"not {info.score_conversion!r}"
            )
        if info.resize not in ("stretch", "letterbox"):
            raise EdgeError(f"{source}: resize must be 'stretch' or 'letterbox', not {info.resize!r}")
        if info.color not in ("RGB", "BGR"):
            raise EdgeError(f"{source}: color must be 'RGB' or 'BGR', not {info.color!r}")
        return info

    def to_dict(self) -> dict:
        data = {
            "format": FORMAT,
            "labels": list(self.labels),
            "normalization": self.normalization.to_dict(),
            "color": self.color,
            "resize": self.resize,
            "head": self.head,
            "box_coder": self.box_coder.to_dict(),
            "score_conversion": self.score_conversion,
            "has_background": self.has_background,
            "nms_iou_threshold": self.nms_iou_threshold,
            "max_detections": self.max_detections,
            "postprocess": self.postprocess,
            "provenance": self.provenance,
        }
        if self.anchors is not None:
            data["anchors"] = self.anchors.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def sidecar_path(model_path: str | Path) -> Path:
    """``model.tflite`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


def read_sidecar(path: str | Path) -> ModelInfo:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read model sidecar ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise EdgeError(f"{path}: model sidecar is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise EdgeError(f"{path}: model sidecar must be a JSON object")
    return ModelInfo.from_dict(data, source=str(path))
