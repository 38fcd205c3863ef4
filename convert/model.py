"""MobileNetV2 SSD / SSDLite as a flat tf-keras Functional model (the contract in convert/config.py).

Why these choices:
- tf-keras, flat graph: tensorflow-model-optimization prunes and quantizes only tf-keras models, and
  ``quantize_model`` does not take nested models, so the backbone is built on our input tensor and
  its layers live directly in the detector's graph.
- No ``Rescaling`` layer: it blocks ``prune_low_magnitude``/``quantize_model``; inputs arrive already
  normalised to [-1, 1] (the tf.data pipeline in training, the FrameBuffer on the board).
- Feature maps follow the TF OD API ``ssd_mobilenet_v2`` layout: stride 16 (expansion of block 13),
  stride 32 (the final 1x1 conv), then stride-2 extra layers; SSDLite heads are depthwise 3x3 +
  pointwise 1x1 predictors whose outputs are reshaped cell by cell so the encodings line up with
  :func:`edge.contract.anchors.generate_anchors` (layer, row, column, box spec).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from convert import pretrained
from convert.config import SSDConfig
from convert.pretrained_sources import source_kind
from convert.tf import import_keras
from edge.errors import EdgeError

log = logging.getLogger(__name__)
BOX_OUTPUT = "box_encodings"
CLASS_OUTPUT = "class_logits"
# Focal-loss prior (RetinaNet): foreground scores start near 0.01 so the many easy negatives do not
# swamp the first steps; the background column starts near 0.99.
_PRIOR_PROBABILITY = 0.01
_EXTRA_LAYER_DEPTHS = (512, 256, 256, 128)
_MIN_DEPTH = 16


def _depth(d: int, width: float) -> int:
    return max(int(d * width), _MIN_DEPTH)


def _conv_bn_relu(keras, x, filters: int, name: str, kernel: int = 1, strides: int = 1):
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def _dw_bn_relu(keras, x, name: str, strides: int = 1):
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                     name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"{name}_dw_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)


def _extra_layer(keras, x, depth: int, name: str):
    """SSDLite extra feature layer: 1x1 (depth/2) -> depthwise 3x3 stride 2 -> 1x1 (depth)."""
    x = _conv_bn_relu(keras, x, depth // 2, f"{name}_reduce")
    x = _dw_bn_relu(keras, x, name, strides=2)
    return _conv_bn_relu(keras, x, depth, f"{name}_expand")


def _backbone(keras, inputs, width: float, weights: str | None):
    try:
        return keras.applications.MobileNetV2(input_tensor=inputs, alpha=width, include_top=False,
                                              weights=weights)
    except (OSError, ValueError) as exc:  # no network for imagenet, bad weights file, bad alpha
        raise EdgeError(f"--backbone-weights {weights}: cannot load MobileNetV2 weights ({exc})") from None
    except Exception as exc:  # urllib errors when the download fails
        if weights == "imagenet":
            raise EdgeError("--backbone-weights imagenet: download failed (no internet?); "
                            f"use a local weights file or 'none' ({exc})") from None
        raise


def _fpn_features(keras, c4, c5, config: SSDConfig, sizes: list[tuple[int, int]]):
    """FPN-lite: top-down fusion of strides 16 and 32, then stride-2 separable extra layers."""
    depth = _depth(128, config.architecture.width * 2)
    p5 = _conv_bn_relu(keras, c5, depth, "fpn_lateral_c5")
    p4 = _conv_bn_relu(keras, c4, depth, "fpn_lateral_c4")
    up = keras.layers.UpSampling2D(2, interpolation="nearest", name="fpn_upsample_p5")(p5)
    (h4, w4), (h5, w5) = sizes[0], sizes[1]
    if (2 * h5, 2 * w5) != (h4, w4):  # odd stride-16 grid (e.g. 300 px: 19 vs 2*10)
        up = keras.layers.Cropping2D(((0, 2 * h5 - h4), (0, 2 * w5 - w4)), name="fpn_crop_p5")(up)
    p4 = keras.layers.Add(name="fpn_add_p4")([p4, up])
    p4 = _dw_bn_relu(keras, p4, "fpn_smooth_p4")
    p4 = _conv_bn_relu(keras, p4, depth, "fpn_smooth_p4_pw")
    features = [p4, p5]
    x = p5
    for i in range(len(sizes) - 2):
        x = _dw_bn_relu(keras, x, f"fpn_down_{i}", strides=2)
        x = _conv_bn_relu(keras, x, depth, f"fpn_down_{i}_pw")
        features.append(x)
    return features


def _predictor(keras, x, boxes_per_cell: int, columns: int, name: str, layer: int):
    """SSDLite predictor: depthwise 3x3 + BN + ReLU6, then a pointwise conv to boxes*columns."""
    y = _dw_bn_relu(keras, x, f"{name}_{layer}")
    y = keras.layers.Conv2D(boxes_per_cell * columns, 1, padding="same", name=f"{name}_{layer}_pw")(y)
    # (row, col, box) order, the order the anchors are generated in.
    return keras.layers.Reshape((-1, columns), name=f"{name}_{layer}_reshape")(y)


def set_batchnorm_momentum(model, momentum: float) -> None:
    """Set every BatchNormalization layer's moving-average momentum.

    Keras' MobileNetV2 uses 0.999, tuned for ImageNet-length runs: after a few hundred steps from
    scratch its moving statistics are still near their initial values and inference (which uses
    them) is garbage although the training loss looks fine. Short runs need a faster average.
    """
    keras = import_keras()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)


def build_ssd(config: SSDConfig, backbone_weights: str | Path | None = "none"):
    """Build the detector for ``config``; returns an (uncompiled) tf-keras Functional model.

    ``backbone_weights``: ``"none"`` (random init), ``"imagenet"`` (Keras download, needs internet),
    or weights on disk, mapped by layer name and all-or-nothing by :mod:`convert.pretrained`: a Keras
    MobileNetV2 weights file (.h5), or a TF OD API SSD MobileNetV2 export (frozen graph .pb, TF2
    checkpoint / SavedModel; backbone and extra layers). ``pretrained.InitFrom(export)`` loads the
    heads too. The load's :class:`convert.pretrained.LoadReport` is ``model.pretrained_report``.
    Input ``[B, S, S, 3]`` float32 normalised to [-1, 1] RGB; outputs ``box_encodings`` ``[B, A, 4]``
    and ``class_logits`` ``[B, A, num_classes + 1]`` (column 0 background), always float32.
    """
    keras = import_keras()
    arch = config.architecture
    arch.validate()
    if arch.backbone != "mobilenet_v2":
        raise EdgeError(f"architecture.backbone {arch.backbone!r}: only 'mobilenet_v2' is supported")
    if arch.head != "ssdlite":
        raise EdgeError(f"architecture.head {arch.head!r}: only 'ssdlite' is supported")
    sizes = [tuple(s) for s in config.anchors.feature_map_sizes]
    per_location = config.anchors.anchors_per_location()
    if len(sizes) < 2:
        raise EdgeError("anchors: at least 2 feature map layers are needed (strides 16 and 32)")

    weights = None if backbone_weights in (None, "none", "") else backbone_weights
    on_disk = None  # weights from a file or export: built random, then mapped by convert.pretrained
    if weights is not None and weights != "imagenet":
        on_disk, weights = weights, None
        _pretrained_call(on_disk, lambda: source_kind(getattr(on_disk, "path", on_disk)))
    size = arch.input_size
    inputs = keras.Input((size, size, 3), name="image", dtype="float32")
    backbone = _backbone(keras, inputs, arch.width, weights)
    c4 = backbone.get_layer("block_13_expand_relu").output  # stride 16
    c5 = backbone.get_layer("out_relu").output  # stride 32

    if arch.fpn:
        features = _fpn_features(keras, c4, c5, config, sizes)
    else:
        features = [c4, c5]
        x = c5
        for i in range(len(sizes) - 2):
            depth = _depth(_EXTRA_LAYER_DEPTHS[min(i, len(_EXTRA_LAYER_DEPTHS) - 1)], arch.width)
            x = _extra_layer(keras, x, depth, f"extra_{i}")
            features.append(x)

    for i, (feature, expected) in enumerate(zip(features, sizes)):
        got = tuple(int(v) for v in feature.shape[1:3])
        if got != expected:
            raise EdgeError(f"anchors: feature map {i} of a {size} px model is {got}, but the anchor "
                            f"config says {expected}; regenerate anchors with AnchorConfig.for_input({size})")

    columns = arch.num_classes + 1
    boxes, logits = [], []
    for i, (feature, n) in enumerate(zip(features, per_location)):
        boxes.append(_predictor(keras, feature, n, 4, "box", i))
        logits.append(_predictor(keras, feature, n, columns, "class", i))
    # float32 outputs even under mixed_float16, so losses and exported heads stay in full precision.
    box_out = keras.layers.Concatenate(axis=1, name=BOX_OUTPUT, dtype="float32")(boxes)
    class_out = keras.layers.Concatenate(axis=1, name=CLASS_OUTPUT, dtype="float32")(logits)
    model = keras.Model(inputs, [box_out, class_out], name=f"ssdlite_mobilenet_v2_{arch.width:g}_{size}")

    num_anchors = int(model.outputs[0].shape[1])
    if num_anchors != config.anchors.num_anchors:
        raise EdgeError(f"model predicts {num_anchors} boxes but the anchor config has "
                        f"{config.anchors.num_anchors}")
    _init_class_bias(model, per_location, columns)
    if on_disk is not None:
        model.pretrained_report = _pretrained_call(on_disk, lambda: pretrained.load_pretrained(model, on_disk))
        log.info("%s", model.pretrained_report.describe())
    return model


def _pretrained_call(source, call):
    """Run a :mod:`convert.pretrained` call; its one-line errors name the option."""
    option = "--init-from" if isinstance(source, pretrained.InitFrom) else "--backbone-weights"
    try:
        return call()
    except EdgeError as exc:
        text = str(exc)
        raise EdgeError(text if text.startswith("--") else f"{option} {text}") from None


def _init_class_bias(model, per_location: list[int], columns: int) -> None:
    """Start foreground logits at the focal-loss prior and background at its complement."""
    prior = -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY)
    for i, n in enumerate(per_location):
        layer = model.get_layer(f"class_{i}_pw")
        kernel, bias = layer.get_weights()
        bias = np.full((n, columns), prior, dtype=np.float32)
        bias[:, 0] = -prior
        layer.set_weights([kernel, bias.reshape(-1)])
