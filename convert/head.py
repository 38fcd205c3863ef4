"""The one description of an SSD head, its post-process attributes, and the metadata an export carries.

Every source ``edge convert`` reads ends up as a :class:`HeadSpec`: an edgekit ``config.json``
(:attr:`convert.config.SSDConfig.head`), a TF1 OD API frozen graph (:attr:`convert.odapi.FrozenSSD.head`)
or a TF2 OD API SavedModel (:attr:`convert.odapi.TF2Export.head`). The exporter builds the graph
from it, and :meth:`HeadSpec.model_info` turns it into the board's :class:`ModelInfo`, so nothing
translates between descriptions by hand. Pure Python and numpy: no TensorFlow here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edge.contract.anchors import AnchorConfig, generate_anchors
from edge.contract.boxcoding import BoxCoderScales
from edge.contract.modelinfo import HEAD_POSTPROCESS, ModelInfo, Normalization
from edge.errors import EdgeError

# What every exported model expects: raw pixels (the network's own normalisation is inside the graph).
RAW_PIXELS = Normalization(mean=0.0, std=1.0)


@dataclass
class PostprocessOptions:
    """Attributes of ``TFLite_Detection_PostProcess``, chosen explicitly rather than inherited.

    The OD API exporters default to ``max_detections=10`` and a score threshold of 1e-8 (every
    anchor enters NMS); here the defaults keep 100 detections (COCO evaluation's cap) and drop
    scores below 0.05 before NMS, which costs nothing measurable in mAP and keeps NMS cheap.
    """

    max_detections: int = 100  # detections the op returns (output shape [1, N, ...])
    score_threshold: float = 0.05  # candidates below this never enter NMS
    iou_threshold: float = 0.6  # NMS IoU
    detections_per_class: int = 100  # regular NMS only: candidates kept per class
    max_classes_per_detection: int = 1  # fast NMS: classes reported per box
    use_regular_nms: bool = False  # False: the op's fast class-agnostic NMS (the OD API default)

    def validate(self) -> None:
        if self.max_detections < 1:
            raise EdgeError(f"--max-detections must be at least 1, not {self.max_detections}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise EdgeError(f"--score-threshold must be in [0, 1), not {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise EdgeError(f"--iou-threshold must be in (0, 1], not {self.iou_threshold}")
        if self.detections_per_class < 1:
            raise EdgeError(f"--detections-per-class must be at least 1, not {self.detections_per_class}")

    def op_attributes(self, num_classes: int, box_coder: BoxCoderScales) -> dict:
        """Every attribute the op reads, as stored in the model (and in its metadata)."""
        return {
            "max_detections": int(self.max_detections),
            "max_classes_per_detection": int(self.max_classes_per_detection),
            "detections_per_class": int(self.detections_per_class),
            "use_regular_nms": bool(self.use_regular_nms),
            "nms_score_threshold": float(self.score_threshold),
            "nms_iou_threshold": float(self.iou_threshold),
            "y_scale": float(box_coder.y),
            "x_scale": float(box_coder.x),
            "h_scale": float(box_coder.h),
            "w_scale": float(box_coder.w),
            "num_classes": int(num_classes),  # foreground classes; the op skips column 0
        }

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadSpec:
    """What the exporter must know about a network's raw head to put the op behind it."""

    input_size: tuple[int, int]  # (height, width) pixels
    anchors: AnchorConfig | None  # the generator config (None: only ``anchor_values`` known)
    num_classes: int  # foreground classes
    box_coder: BoxCoderScales
    normalization: Normalization  # what the network itself expects (applied inside the export)
    score_conversion: str = "sigmoid"
    anchor_values: np.ndarray | None = None  # [A, 4] (yc, xc, h, w); overrides ``anchors`` (imported graphs)

    def anchor_array(self) -> np.ndarray:
        if self.anchor_values is not None:
            return np.asarray(self.anchor_values, dtype=np.float32)
        if self.anchors is None:
            raise EdgeError("export: no anchors for the post-process op")
        return generate_anchors(self.anchors)

    def op_attributes(self, postprocess: PostprocessOptions) -> dict:
        """The post-process op's attributes for this head."""
        return postprocess.op_attributes(self.num_classes, self.box_coder)

    def model_info(self, labels: list[str], postprocess: PostprocessOptions, provenance: dict) -> ModelInfo:
        """The metadata of an exported model of this head: raw pixels in, the post-process op's outputs out."""
        return ModelInfo(
            labels=list(labels), normalization=RAW_PIXELS, head=HEAD_POSTPROCESS,
            anchors=self.anchors, box_coder=self.box_coder, score_conversion=self.score_conversion,
            has_background=True, nms_iou_threshold=postprocess.iou_threshold,
            max_detections=postprocess.max_detections, postprocess=self.op_attributes(postprocess),
            provenance=provenance,
        )
