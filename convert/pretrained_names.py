"""The name table: our Keras layers (:func:`convert.model.build_ssd`) and the OD API export tensors they take.

Name correspondence, our Keras layer -> TF1 export scope (``S`` = ``FeatureExtractor/MobilenetV2``).
Weights: conv ``kernel`` = ``weights``, depthwise ``depthwise_kernel`` = ``depthwise_weights``, conv
``bias`` = ``biases``; the BatchNormalization layer after a conv (``_BN``, ``_bn``) takes
``<scope>/BatchNorm/{gamma, beta, moving_mean, moving_variance}`` (:func:`name_correspondence` lists
every tensor)::

    Conv1, bn_Conv1                          S/Conv
    expanded_conv_depthwise[_BN]             S/expanded_conv/depthwise
    expanded_conv_project[_BN]               S/expanded_conv/project
    block_N_expand[_BN]      (N = 1..16)     S/expanded_conv_N/expand
    block_N_depthwise[_BN]                   S/expanded_conv_N/depthwise
    block_N_project[_BN]                     S/expanded_conv_N/project
    Conv_1, Conv_1_bn                        S/Conv_1
    extra_K_reduce_conv, _bn  (K = 0..3)     S/layer_19_1_Conv2d_{K+2}_1x1_{D/2}
    extra_K_dw, extra_K_dw_bn                S/layer_19_2_Conv2d_{K+2}_3x3_s2_{D}_depthwise
    extra_K_expand_conv, _bn                 S/layer_19_2_Conv2d_{K+2}_3x3_s2_{D}
    box_I_dw, box_I_dw_bn     (I = 0..5)     BoxPredictor_I/BoxEncodingPredictor_depthwise
    box_I_pw (kernel, bias)                  BoxPredictor_I/BoxEncodingPredictor
    class_I_dw, class_I_dw_bn                BoxPredictor_I/ClassPredictor_depthwise
    class_I_pw (kernel, bias)                BoxPredictor_I/ClassPredictor
"""

from __future__ import annotations

import re

SCOPE = "FeatureExtractor/MobilenetV2"
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
# Keras weight attribute -> OD API TF1 variable name, per layer kind.
TF1_ATTRS = {"conv": {"kernel": "weights"}, "dw": {"depthwise_kernel": "depthwise_weights"},
             "bn": {a: a for a in _BN}, "conv_bias": {"kernel": "weights", "bias": "biases"}}


def backbone_layer_names() -> list[tuple[str, str, str]]:
    """Our MobileNetV2 layers with weights, in Keras construction order: ``(name, kind, TF1 scope)``."""
    rows = [("Conv1", "conv", "Conv"), ("bn_Conv1", "bn", "Conv/BatchNorm"),
            ("expanded_conv_depthwise", "dw", "expanded_conv/depthwise"),
            ("expanded_conv_depthwise_BN", "bn", "expanded_conv/depthwise/BatchNorm"),
            ("expanded_conv_project", "conv", "expanded_conv/project"),
            ("expanded_conv_project_BN", "bn", "expanded_conv/project/BatchNorm")]
    for i in range(1, 17):
        for ours, kind, theirs in (("expand", "conv", "expand"), ("depthwise", "dw", "depthwise"),
                                   ("project", "conv", "project")):
            rows.append((f"block_{i}_{ours}", kind, f"expanded_conv_{i}/{theirs}"))
            rows.append((f"block_{i}_{ours}_BN", "bn", f"expanded_conv_{i}/{theirs}/BatchNorm"))
    rows += [("Conv_1", "conv", "Conv_1"), ("Conv_1_bn", "bn", "Conv_1/BatchNorm")]
    return [(name, kind, f"{SCOPE}/{scope}") for name, kind, scope in rows]


def extra_layer_rows(model, scopes: set[str]) -> list[tuple[str, str, str]]:
    """SSDLite extra layers ``extra_K`` of our model; the export's scope found by pattern (its depth
    is in the name, so a depth mismatch shows as a shape difference, not as a missing layer)."""
    names = {layer.name for layer in model.layers}
    rows = []
    k = 0
    while f"extra_{k}_expand_conv" in names:
        n = k + 2
        patterns = {"reduce": rf"layer_19_1_Conv2d_{n}_1x1_\d+", "dw": rf"layer_19_2_Conv2d_{n}_3x3_s2_\d+_depthwise",
                    "expand": rf"layer_19_2_Conv2d_{n}_3x3_s2_\d+"}
        found = {}
        for part, pattern in patterns.items():
            hits = sorted(s for s in scopes if re.fullmatch(f"{re.escape(SCOPE)}/{pattern}", s))
            found[part] = hits[0] if hits else f"{SCOPE}/{pattern.replace(chr(92) + 'd+', 'D')}"
        rows += [(f"extra_{k}_reduce_conv", "conv", found["reduce"]),
                 (f"extra_{k}_reduce_bn", "bn", f"{found['reduce']}/BatchNorm"),
                 (f"extra_{k}_dw", "dw", found["dw"]), (f"extra_{k}_dw_bn", "bn", f"{found['dw']}/BatchNorm"),
                 (f"extra_{k}_expand_conv", "conv", found["expand"]),
                 (f"extra_{k}_expand_bn", "bn", f"{found['expand']}/BatchNorm")]
        k += 1
    return rows


def head_layer_rows(model) -> list[tuple[str, str, str]]:
    names = {layer.name for layer in model.layers}
    rows = []
    i = 0
    while f"box_{i}_pw" in names:
        for ours, theirs in (("box", "BoxEncodingPredictor"), ("class", "ClassPredictor")):
            rows += [(f"{ours}_{i}_dw", "dw", f"BoxPredictor_{i}/{theirs}_depthwise"),
                     (f"{ours}_{i}_dw_bn", "bn", f"BoxPredictor_{i}/{theirs}_depthwise/BatchNorm"),
                     (f"{ours}_{i}_pw", "conv_bias", f"BoxPredictor_{i}/{theirs}")]
        i += 1
    return rows


def name_correspondence(model, heads: bool = False, scopes: set[str] | None = None) -> list[tuple[str, str]]:
    """``(our weight, TF1 export tensor)`` for every tensor a frozen-graph load sets in ``model``."""
    rows = backbone_layer_names() + extra_layer_rows(model, scopes or set()) + (head_layer_rows(model) if heads else [])
    return [(f"{name}/{ours}", f"{scope}/{theirs}") for name, kind, scope in rows
            for ours, theirs in TF1_ATTRS[kind].items()]
