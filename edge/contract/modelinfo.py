"""What travels with a model: labels, input normalisation, head decoding, provenance.

Stored as JSON inside the ``.tflite`` (a flatbuffer metadata entry named ``edgekit``, see
:mod:`edge.contract.tflite_file`) or in a sidecar ``<model>.json`` next to it; the sidecar wins so that a
third-party model can be described without rewriting it.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from edge.contract.anchors import AnchorConfig
from edge.contract.boxcoding import BoxCoderScales
from edge.errors import EdgeError, first_line

FORMAT = "edgekit-model/1"
HEAD_POSTPROCESS = "postprocess"
HEAD_RAW = "raw"
HEAD_KINDS = (HEAD_POSTPROCESS, HEAD_RAW)
SCORE_CONVERSIONS = ("sigmoid", "softmax", "identity")
RESIZE_MODES = ("stretch", "letterbox")
COLORS = ("RGB", "BGR")

# Bounds on what metadata may ask of a detector: well above any real SSD, far below a memory blow-up.
MAX_DETECTIONS = 10_000
MAX_LABELS = 65_536
MAX_ANCHORS = 200_000
MAX_FEATURE_MAP_SIDE = 1024
MAX_INPUT_SIDE = 16_384
MAX_ASPECT_RATIO = 100.0
MAX_SIDECAR_BYTES = 16 << 20


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
        """Build from the JSON object of a sidecar or the embedded entry, checking every key.

        Anything a detector could not use (``std`` 0, a non-finite number, ``max_detections`` over
        :data:`MAX_DETECTIONS`, an anchor grid of millions of boxes, an unknown head, resize or colour
        name, a value of the wrong type) is one EdgeError line naming ``source`` and the key.
        """
        if not isinstance(data, dict):
            raise EdgeError(f"{source}: edgekit metadata must be a JSON object, not {_type_name(data)}")
        check = _Checker(source)
        labels = check.labels(data.get("labels", []))
        norm = check.mapping("normalization", data.get("normalization"), ("mean", "std"))
        normalization = Normalization(
            mean=check.number("normalization.mean", norm.get("mean", 127.5)),
            std=check.number("normalization.std", norm.get("std", 127.5), positive=True),
        )
        color = check.choice("color", data.get("color", "RGB"), COLORS)
        resize = check.choice("resize", data.get("resize", "stretch"), RESIZE_MODES)
        head = data.get("head")
        if head is not None:
            head = check.choice("head", head, HEAD_KINDS)
        anchors = check.anchors(data["anchors"]) if data.get("anchors") is not None else None
        coder = check.mapping("box_coder", data.get("box_coder"), ("y", "x", "h", "w"))
        box_coder = BoxCoderScales(**{k: check.number(f"box_coder.{k}", coder[k], positive=True) for k in coder})
        score_conversion = check.choice("score_conversion", data.get("score_conversion", "sigmoid"),
                                        SCORE_CONVERSIONS)
        has_background = data.get("has_background", True)
        if has_background not in (True, False) or isinstance(has_background, float):  # 0 and 1 pass
            check.fail("has_background", f"must be true or false, not {_show(has_background)}")
        has_background = bool(has_background)
        iou = check.number("nms_iou_threshold", data.get("nms_iou_threshold", 0.6))
        if not 0.0 <= iou <= 1.0:
            check.fail("nms_iou_threshold", f"must be within 0..1, not {iou:g}")
        max_detections = check.integer("max_detections", data.get("max_detections", 100), 1, MAX_DETECTIONS)
        postprocess = check.mapping("postprocess", data.get("postprocess"))
        provenance = check.mapping("provenance", data.get("provenance"))
        return cls(labels=labels, normalization=normalization, color=color, resize=resize, head=head,
                   anchors=anchors, box_coder=box_coder, score_conversion=score_conversion,
                   has_background=has_background, nms_iou_threshold=iou, max_detections=max_detections,
                   postprocess=postprocess, provenance=provenance)

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
    """The sidecar's :class:`ModelInfo`; EdgeError (one line naming the file and the key) otherwise."""
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read
            raise EdgeError(f"{path}: model sidecar is not a regular file")
        if st.st_size > MAX_SIDECAR_BYTES:
            raise EdgeError(f"{path}: model sidecar is {st.st_size / 1e6:.0f} MB; a sidecar is a few kilobytes of JSON")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read model sidecar ({exc.strerror or first_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise EdgeError(f"{path}: model sidecar is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise EdgeError(f"{path}: model sidecar is not valid JSON (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise EdgeError(f"{path}: model sidecar is not valid JSON for edgekit (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise EdgeError(f"{path}: model sidecar is not valid JSON ({first_line(exc, 120)})") from None
    if not isinstance(data, dict):
        raise EdgeError(f"{path}: model sidecar must be a JSON object")
    return ModelInfo.from_dict(data, source=str(path))


# ---- validation -----------------------------------------------------------------------------------


def _type_name(value) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _show(value, limit: int = 40) -> str:
    if isinstance(value, (list, dict)):
        text = f"{_type_name(value)} of {len(value)}"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    """Type and range checks of metadata values; every failure is one EdgeError naming source and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str):
        raise EdgeError(f"{self.source}: {key} {message}")

    def number(self, key: str, value, *, positive: bool = False, low: float | None = None,
               high: float | None = None) -> float:
        if not _is_number(value):
            self.fail(key, f"must be a number, not {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.fail(key, f"must be a finite number, not {_show(value)}")
        if positive and number <= 0:
            self.fail(key, f"must be a positive number, not {_show(value)}")
        if low is not None and number < low:
            self.fail(key, f"must be at least {low:g}, not {_show(value)}")
        if high is not None and number > high:
            self.fail(key, f"must be at most {high:g}, not {_show(value)}")
        return number

    def integer(self, key: str, value, low: int, high: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_number(value) or not isinstance(value, int):
            self.fail(key, f"must be a whole number, not {_show(value)}")
        if not low <= value <= high:
            self.fail(key, f"must be within {low}..{high}, not {_show(value)}")
        return value

    def choice(self, key: str, value, options) -> str:
        if not isinstance(value, str) or value not in options:
            self.fail(key, f"must be {' or '.join(repr(o) for o in options)}, not {_show(value)}")
        return value

    def mapping(self, key: str, value, allowed=None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, not {_type_name(value)}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                self.fail(f"{key}.{unknown[0][:40]}", f"is not a known key (known: {', '.join(allowed)})")
        return dict(value)

    def labels(self, value) -> list[str]:
        if not isinstance(value, list):
            self.fail("labels", f"must be a list of class names, not {_type_name(value)}")
        if len(value) > MAX_LABELS:
            self.fail("labels", f"has {len(value)} entries, more than {MAX_LABELS}")
        for i, label in enumerate(value):
            if not isinstance(label, (str, int, float)) or isinstance(label, bool):
                self.fail(f"labels[{i}]", f"must be a string, not {_type_name(label)}")
        return [str(label) for label in value]

    def pair(self, key: str, value, check) -> list:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            self.fail(key, f"must be a pair [height, width], not {_show(value)}")
        return [check(f"{key}[{i}]", v) for i, v in enumerate(value)]

    def anchors(self, value) -> AnchorConfig:
        """An :class:`AnchorConfig` whose grid is sane: sizes, scales, ratios and box count bounded."""
        from dataclasses import fields

        if not isinstance(value, dict):
            self.fail("anchors", f"must be an object, not {_type_name(value)}")
        self.mapping("anchors", value, [f.name for f in fields(AnchorConfig)])
        sizes = value.get("feature_map_sizes")
        if not isinstance(sizes, list) or not sizes:
            self.fail("anchors.feature_map_sizes", f"must be a non-empty list of [height, width], not {_show(sizes)}")
        if len(sizes) > 32:
            self.fail("anchors.feature_map_sizes", f"has {len(sizes)} layers, more than 32")
        side = lambda key, v: self.integer(key, v, 1, MAX_FEATURE_MAP_SIDE)  # noqa: E731
        args = dict(value)
        args["feature_map_sizes"] = [self.pair(f"anchors.feature_map_sizes[{i}]", s, side) for i, s in enumerate(sizes)]
        if "input_size" in value:
            args["input_size"] = self.pair("anchors.input_size", value["input_size"],
                                           lambda key, v: self.integer(key, v, 1, MAX_INPUT_SIDE))
        scale = lambda key, v: self.number(key, v, positive=True, high=2.0)  # noqa: E731
        for key in ("min_scale", "max_scale"):
            if key in value:
                args[key] = scale(f"anchors.{key}", value[key])
        if value.get("scales") is not None:
            scales = value["scales"]
            if not isinstance(scales, list) or len(scales) != len(sizes):
                self.fail("anchors.scales", f"must be a list of {len(sizes)} scales (one a layer), not {_show(scales)}")
            args["scales"] = [scale(f"anchors.scales[{i}]", s) for i, s in enumerate(scales)]
        ratio = lambda key, v: self.number(key, v, positive=True, low=1.0 / MAX_ASPECT_RATIO,  # noqa: E731
                                           high=MAX_ASPECT_RATIO)
        if "aspect_ratios" in value:
            ratios = value["aspect_ratios"]
            if not isinstance(ratios, list) or not ratios:
                self.fail("anchors.aspect_ratios", f"must be a non-empty list of ratios, not {_show(ratios)}")
            if len(ratios) > 64:
                self.fail("anchors.aspect_ratios", f"has {len(ratios)} ratios, more than 64")
            args["aspect_ratios"] = [ratio(f"anchors.aspect_ratios[{i}]", r) for i, r in enumerate(ratios)]
        if "interpolated_scale_aspect_ratio" in value:
            key, raw = "anchors.interpolated_scale_aspect_ratio", value["interpolated_scale_aspect_ratio"]
            number = self.number(key, raw)
            args["interpolated_scale_aspect_ratio"] = ratio(key, raw) if number > 0 else number  # <= 0: off
        if "reduce_boxes_in_lowest_layer" in value and not isinstance(value["reduce_boxes_in_lowest_layer"], bool):
            self.fail("anchors.reduce_boxes_in_lowest_layer", "must be true or false")
        if "base_anchor_size" in value:
            args["base_anchor_size"] = self.pair("anchors.base_anchor_size", value["base_anchor_size"],
                                                 lambda key, v: self.number(key, v, positive=True, high=100.0))
        try:
            config = AnchorConfig(**args)
        except (EdgeError, TypeError, ValueError) as exc:
            self.fail("anchors", f"is not a valid anchor config ({first_line(exc, 120)})")
        count = config.num_anchors
        if count > MAX_ANCHORS:
            self.fail("anchors", f"describe {count} anchors, more than {MAX_ANCHORS} (feature_map_sizes "
                                 f"{[list(s) for s in config.feature_map_sizes][:3]}...)")
        return config
