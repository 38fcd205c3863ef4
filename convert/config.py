"""``config.json``: the complete description of a trained SSD, written by training, read by conversion.

A run directory holds ``config.json`` and ``tf.train.CheckpointManager`` checkpoints under
``checkpoints/``. The config is enough to rebuild the Keras model (architecture), decode its head
(anchors, box coder) and describe the exported ``.tflite`` (labels, normalisation) -- conversion
needs nothing else. Pure Python: no TensorFlow import here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from convert.head import HeadSpec
from edge.contract.anchors import AnchorConfig
from edge.contract.boxcoding import BoxCoderScales
from edge.contract.modelinfo import Normalization
from edge.errors import EdgeError
from edge.files import atomic_write_json

CONFIG_NAME = "config.json"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Architecture:
    backbone: str = "mobilenet_v2"
    width: float = 0.5  # MobileNetV2 alpha, 0.35..1.0
    input_size: int = 320  # square, pixels, 160..320
    head: str = "ssdlite"  # depthwise-separable predictors
    fpn: bool = False  # FPN-lite feature fusion
    num_classes: int = 1  # foreground classes, background excluded

    def validate(self, source: str = CONFIG_NAME) -> None:
        if not 0.35 <= self.width <= 1.0:
            raise EdgeError(f"{source}: width {self.width} outside 0.35..1.0")
        if not 96 <= self.input_size <= 640:
            raise EdgeError(f"{source}: input_size {self.input_size} outside 96..640")
        if self.num_classes < 1:
            raise EdgeError(f"{source}: num_classes must be at least 1")


@dataclass
class SSDConfig:
    """Everything that defines a trained model. Keras model contract (``convert.model.build_ssd``):

    - input ``[B, S, S, 3]`` float32 RGB, already normalised as ``normalization`` says ([-1, 1]);
    - outputs ``box_encodings`` ``[B, A, 4]`` (ty, tx, th, tw; OD API faster_rcnn_box_coder) and
      ``class_logits`` ``[B, A, num_classes + 1]`` (column 0 is background), A = anchors.num_anchors,
      anchors in :func:`edge.contract.anchors.generate_anchors` order.
    """

    architecture: Architecture
    labels: list[str]
    anchors: AnchorConfig
    box_coder: BoxCoderScales = field(default_factory=BoxCoderScales)
    normalization: Normalization = field(default_factory=Normalization)
    score_conversion: str = "sigmoid"
    training: dict = field(default_factory=dict)  # hyper-parameters and data, for provenance

    @classmethod
    def create(cls, labels: list[str], input_size: int = 320, width: float = 0.5, fpn: bool = False,
               num_layers: int = 6) -> "SSDConfig":
        arch = Architecture(width=width, input_size=input_size, fpn=fpn, num_classes=len(labels))
        arch.validate()
        return cls(architecture=arch, labels=list(labels),
                   anchors=AnchorConfig.for_input(input_size, num_layers))

    @property
    def head(self) -> HeadSpec:
        """The head this config describes, as the exporter and the model metadata take it."""
        arch = self.architecture
        return HeadSpec((arch.input_size, arch.input_size), self.anchors, arch.num_classes, self.box_coder,
                        self.normalization, self.score_conversion)

    def to_dict(self) -> dict:
        return {
            "architecture": asdict(self.architecture),
            "labels": list(self.labels),
            "anchors": self.anchors.to_dict(),
            "box_coder": self.box_coder.to_dict(),
            "normalization": self.normalization.to_dict(),
            "score_conversion": self.score_conversion,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_NAME) -> "SSDConfig":
        try:
            config = cls(
                architecture=Architecture(**data["architecture"]),
                labels=[str(x) for x in data["labels"]],
                anchors=AnchorConfig.from_dict(data["anchors"]),
                box_coder=BoxCoderScales.from_dict(data.get("box_coder")),
                normalization=Normalization(**data.get("normalization", {})),
                score_conversion=data.get("score_conversion", "sigmoid"),
                training=dict(data.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeError(f"{source}: not a valid edgekit model config ({exc!r})") from None
        config.architecture.validate(source)
        if len(config.labels) != config.architecture.num_classes:
            raise EdgeError(f"{source}: {len(config.labels)} labels but num_classes is "
                            f"{config.architecture.num_classes}")
        return config

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, run_dir_or_file: str | Path) -> "SSDConfig":
        path = Path(run_dir_or_file)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise EdgeError(f"{path}: no {CONFIG_NAME} (is this an edgekit training run directory?)") from None
        except json.JSONDecodeError as exc:
            raise EdgeError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, source=str(path))
