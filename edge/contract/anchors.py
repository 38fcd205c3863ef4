"""SSD anchors, defined once for training, conversion and the runtime.

Follows the TF Object Detection API ``ssd_anchor_generator`` (``create_ssd_anchors`` +
``GridAnchorGenerator``) so that models exported by the OD API and models trained here decode
with the same code. Anchors are normalised to the input image: ``(ycenter, xcenter, h, w)``,
ordered layer by layer, then row, column, and box spec within a cell -- the order the OD API's
box predictors emit their encodings in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edge.errors import EdgeError


def ssd_feature_map_sizes(input_size: int | tuple[int, int], num_layers: int = 6) -> list[tuple[int, int]]:
    """Feature map sizes of a MobileNet SSD: stride 16, stride 32, then stride-2 'same' layers.

    300 px -> 19, 10, 5, 3, 2, 1 (the OD API's 1917 anchors); 320 px -> 20, 10, 5, 3, 2, 1.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    sizes = []
    h, w = math.ceil(height / 16), math.ceil(width / 16)
    for _ in range(num_layers):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


@dataclass
class AnchorConfig:
    """Parameters of the OD API ``ssd_anchor_generator`` (its defaults) plus the grid sizes."""

    feature_map_sizes: list[tuple[int, int]]
    input_size: tuple[int, int] = (300, 300)  # (height, width) in pixels; only the ratio matters
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = True
    base_anchor_size: tuple[float, float] = (1.0, 1.0)
    scales: list[float] | None = field(default=None)  # explicit per-layer scales override min/max

    def __post_init__(self) -> None:
        self.feature_map_sizes = [tuple(int(v) for v in s) for s in self.feature_map_sizes]
        self.input_size = tuple(int(v) for v in self.input_size)
        self.aspect_ratios = tuple(float(a) for a in self.aspect_ratios)
        self.base_anchor_size = tuple(float(v) for v in self.base_anchor_size)
        if not self.feature_map_sizes:
            raise EdgeError("anchor config: feature_map_sizes is empty")
        if self.scales is not None and len(self.scales) != len(self.feature_map_sizes):
            raise EdgeError(
                f"anchor config: {len(self.scales)} scales for {len(self.feature_map_sizes)} layers"
            )

    @classmethod
    def for_input(cls, input_size: int, num_layers: int = 6, **kwargs) -> "AnchorConfig":
        """The standard MobileNet SSD anchors for a square input of ``input_size`` pixels."""
        return cls(
            feature_map_sizes=ssd_feature_map_sizes(input_size, num_layers),
            input_size=(input_size, input_size),
            **kwargs,
        )

    @classmethod
    def from_dict(cls, data: dict) -> "AnchorConfig":
        try:
            return cls(**data)
        except TypeError as exc:
            raise EdgeError(f"anchor config: {exc}") from None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature_map_sizes"] = [list(s) for s in self.feature_map_sizes]
        data["input_size"] = list(self.input_size)
        data["aspect_ratios"] = list(self.aspect_ratios)
        data["base_anchor_size"] = list(self.base_anchor_size)
        return data

    def layer_box_specs(self) -> list[list[tuple[float, float]]]:
        """(scale, aspect ratio) of every box in a cell, per layer, as ``create_ssd_anchors``."""
        num_layers = len(self.feature_map_sizes)
        if self.scales is not None:
            scales = [float(s) for s in self.scales]
        elif num_layers == 1:
            scales = [self.min_scale]
        else:
            scales = [
                self.min_scale + (self.max_scale - self.min_scale) * i / (num_layers - 1)
                for i in range(num_layers)
            ]
        scales.append(1.0)
        specs = []
        for layer in range(num_layers):
            scale, scale_next = scales[layer], scales[layer + 1]
            if layer == 0 and self.reduce_boxes_in_lowest_layer:
                layer_specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
            else:
                layer_specs = [(scale, ratio) for ratio in self.aspect_ratios]
                if self.interpolated_scale_aspect_ratio > 0.0:
                    layer_specs.append(
                        (math.sqrt(scale * scale_next), self.interpolated_scale_aspect_ratio)
                    )
            specs.append(layer_specs)
        return specs

    def anchors_per_location(self) -> list[int]:
        """How many boxes each cell of each layer predicts (the predictor heads' multiplier)."""
        return [len(specs) for specs in self.layer_box_specs()]

    @property
    def num_anchors(self) -> int:
        return sum(
            h * w * n for (h, w), n in zip(self.feature_map_sizes, self.anchors_per_location())
        )


def generate_anchors(config: AnchorConfig) -> np.ndarray:
    """All anchors as float32 ``[A, 4]`` of normalised ``(ycenter, xcenter, h, w)``."""
    im_h, im_w = config.input_size
    min_dim = min(im_h, im_w)
    # The OD API keeps anchors square in pixels on non-square inputs.
    base_h = config.base_anchor_size[0] * min_dim / im_h
    base_w = config.base_anchor_size[1] * min_dim / im_w
    layers = []
    for (grid_h, grid_w), specs in zip(config.feature_map_sizes, config.layer_box_specs()):
        scales = np.array([s for s, _ in specs], dtype=np.float64)
        ratio_sqrts = np.sqrt(np.array([r for _, r in specs], dtype=np.float64))
        heights = scales / ratio_sqrts * base_h
        widths = scales * ratio_sqrts * base_w
        stride_y, stride_x = 1.0 / grid_h, 1.0 / grid_w
        y_centers = (np.arange(grid_h) + 0.5) * stride_y
        x_centers = (np.arange(grid_w) + 0.5) * stride_x
        yc, xc, k = np.meshgrid(y_centers, x_centers, np.arange(len(specs)), indexing="ij")
        layer = np.stack([yc, xc, heights[k], widths[k]], axis=-1).reshape(-1, 4)
        layers.append(layer)
    return np.concatenate(layers, axis=0).astype(np.float32)
