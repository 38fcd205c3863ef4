"""Pretrained weights already on disk, mapped onto :func:`convert.model.build_ssd`'s layers by name.

One job: put an export's tensors (read by :mod:`convert.pretrained_sources`) into our model under
the name correspondence of :mod:`convert.pretrained_names`, all or nothing. Nothing is loaded unless
every tensor our model needs for the requested part is in the source with the right shape; otherwise
one :class:`EdgeError` line says what is missing or differs (a wrong width, a different network, a
truncated export). For TF1 frozen graphs the result is then *verified* (:mod:`convert.pretrained_verify`):
our feature maps (and head outputs, with ``--init-from``) are computed on a fixed probe image and
compared with the export's own tensors for the same input; a difference over
:data:`~convert.pretrained_verify.VERIFY_TOLERANCE` is an EdgeError too, and the model keeps its
weights from before the load.

Parts: ``--backbone-weights`` loads the MobileNetV2 backbone and, from a frozen graph and for a model
without ``--fpn``, the SSDLite extra layers (class-agnostic features); ``--init-from`` adds the box
and class predictors, which needs the same number of classes and anchors per cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.pretrained_names import SCOPE, TF1_ATTRS, backbone_layer_names, extra_layer_rows, head_layer_rows
from convert.pretrained_sources import ExportWeights, read_export
from convert.pretrained_verify import VERIFY_TOLERANCE, compare_with_frozen_graph
from edge.errors import EdgeError


@dataclass(frozen=True)
class InitFrom:
    """``--init-from``: backbone, extra layers and heads from one OD API export (``build_ssd`` takes it
    as ``backbone_weights``)."""

    path: str

    def __str__(self) -> str:
        return f"init-from:{self.path}"


@dataclass
class LoadReport:
    """What was loaded from where, and how well our tensors reproduce the export's."""

    path: Path
    kind: str
    parts: list[str]
    layers: int  # our layers that received weights
    tensors: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # our layer -> vs the export's tensor
    unused: int = 0  # source tensors in no requested part (e.g. the heads, without --init-from)

    def describe(self) -> str:
        text = (f"pretrained {self.path} ({self.kind}): {'+'.join(self.parts)}, {self.layers} layers, "
                f"{self.tensors} tensors")
        if self.max_abs_diff:
            worst = max(self.max_abs_diff, key=self.max_abs_diff.get)
            text += (f"; verified {len(self.max_abs_diff)} outputs against the export, max abs diff "
                     f"{self.max_abs_diff[worst]:.2e} ({worst})")
        return text


# ---------------------------------------------------------------- mapping

def _plan(model, export: ExportWeights, heads: bool) -> tuple[list[tuple[object, list[str]]], list[str]]:
    """``[(our layer, [source tensor per layer weight])]`` and the part names, or EdgeError."""
    by_name = {layer.name: layer for layer in model.layers}
    parts = ["backbone"]
    if export.kind == "keras_h5":
        rows = [(name, [f"{name}/{w.name.split('/')[-1].split(':')[0]}" for w in by_name[name].weights])
                for name, _, _ in backbone_layer_names()]
    elif export.kind == "odapi_tf2":
        if heads:
            raise EdgeError(f"--init-from {export.path}: heads are mapped from TF1 frozen graphs only; "
                            "use --backbone-weights for a TF2 checkpoint")
        rows = [(name, [f"layer_with_weights-{n}/{w.name.split('/')[-1].split(':')[0]}" for w in by_name[name].weights])
                for n, (name, _, _) in enumerate(backbone_layer_names())]
    else:
        if not any(name.startswith(SCOPE + "/") for name in export.tensors):
            nets = sorted({n.split("/")[1] for n in export.tensors if n.startswith("FeatureExtractor/")})
            raise EdgeError(f"{export.path}: not an SSD MobileNetV2 export (no {SCOPE} weights"
                            + (f"; its feature extractor is {', '.join(nets)})" if nets else ")"))
        if not any(name.endswith("/BatchNorm/moving_mean") for name in export.tensors if name.startswith(SCOPE)):
            raise EdgeError(f"{export.path}: its BatchNorm is folded into the conv weights (no BatchNorm "
                            "constants); export it with export_inference_graph.py unchanged")
        scopes = {name.rsplit("/", 1)[0] for name in export.tensors}
        table = backbone_layer_names() + extra_layer_rows(model, scopes)
        if len(table) > len(backbone_layer_names()):
            parts.append("extras")
        if heads:
            _check_heads(model, export)
            table += head_layer_rows(model)
            parts.append("heads")
        rows = [(name, [f"{scope}/{TF1_ATTRS[kind][w.name.split('/')[-1].split(':')[0]]}"
                        for w in by_name[name].weights]) for name, kind, scope in table]
    missing = [name for layer, names in rows for name in names if name not in export.tensors]
    plan = [(by_name[layer], names) for layer, names in rows]
    total = sum(len(names) for _, names in plan)
    if missing:
        hint = ""
        if export.kind == "odapi_frozen" and all("/layer_19_" in name for name in missing):
            hint = (" -- its extra layers are not SSDLite's (an SSD, not SSDLite, export?); with --fpn the "
                    "model has none and only the backbone is loaded")
        raise EdgeError(f"{export.path}: partial match, {len(missing)} of {total} tensors our model needs "
                        f"({'+'.join(parts)}) are not in the export (first: {missing[0]}){hint}; nothing loaded")
    wrong = [(layer, w, export.tensors[name]) for layer, names in plan for w, name in zip(layer.weights, names)
             if tuple(w.shape) != tuple(export.tensors[name].shape)]
    if wrong:
        layer, w, value = wrong[0]
        raise EdgeError(f"{export.path}: {len(wrong)} of {total} tensors differ in shape (first: "
                        f"{w.name.split(':')[0]} {tuple(w.shape)} in the model, {tuple(value.shape)} in the "
                        f"export){_width_hint(model, export)}; nothing loaded")
    return plan, parts


def _width_hint(model, export: ExportWeights) -> str:
    key = {"keras_h5": "Conv1/kernel", "odapi_tf2": "layer_with_weights-0/kernel"}.get(
        export.kind, f"{SCOPE}/Conv/weights")
    theirs = export.tensors.get(key)
    ours = model.get_layer("Conv1").weights[0]
    if theirs is None or theirs.shape[-1] == ours.shape[-1]:
        return ""
    where = ("Keras files name theirs: ..._kernels_<width>_<size>_no_top.h5" if export.kind == "keras_h5"
             else "OD API SSDLite MobileNetV2 exports are width 1.0")
    return (f" -- the export's MobileNetV2 starts with {theirs.shape[-1]} filters, the model's with "
            f"{ours.shape[-1]}: a different --width ({where})")


def _check_heads(model, export: ExportWeights) -> None:
    """Same classes and anchors per cell, said in those words rather than as a shape difference."""
    names = {layer.name for layer in model.layers}
    columns = int(model.get_layer("class_0_pw").filters) // (int(model.get_layer("box_0_pw").filters) // 4)
    i = 0
    while f"box_{i}_pw" in names:
        box = export.tensors.get(f"BoxPredictor_{i}/BoxEncodingPredictor/biases")
        cls = export.tensors.get(f"BoxPredictor_{i}/ClassPredictor/biases")
        if box is None or cls is None:
            raise EdgeError(f"--init-from {export.path}: the export has no box predictor {i} "
                            f"(BoxPredictor_{i}); its heads do not fit a model with {i + 1}+ feature maps")
        ours_boxes = int(model.get_layer(f"box_{i}_pw").filters) // 4
        theirs_boxes = box.shape[0] // 4
        if theirs_boxes != ours_boxes:
            raise EdgeError(f"--init-from {export.path}: {theirs_boxes} anchors per cell on feature map {i} in the "
                            f"export, {ours_boxes} in the model; use --backbone-weights to load the features only")
        theirs_columns = cls.shape[0] // theirs_boxes
        if theirs_columns != columns:
            raise EdgeError(f"--init-from {export.path}: the export predicts {theirs_columns - 1} class(es), "
                            f"the model {columns - 1}; use --backbone-weights to load the features only")
        i += 1
    if f"BoxPredictor_{i}/ClassPredictor/biases" in export.tensors:
        raise EdgeError(f"--init-from {export.path}: the export has more feature maps than the model ({i}); "
                        "use --backbone-weights to load the features only")


def load_pretrained(model, source: str | Path | InitFrom, verify: bool = True) -> LoadReport:
    """Load ``source`` into ``model`` (built by ``build_ssd``), all or nothing; returns the report.

    ``InitFrom(path)`` adds the heads. Frozen graphs are verified unless ``verify=False`` (tests that
    measure the difference themselves).
    """
    heads = isinstance(source, InitFrom)
    export = read_export(source.path if heads else source)
    if heads and export.kind == "keras_h5":
        raise EdgeError(f"--init-from {export.path}: a Keras weights file has no detection heads; "
                        "use --backbone-weights")
    plan, parts = _plan(model, export, heads)
    before = [layer.get_weights() for layer, _ in plan]
    for layer, names in plan:
        layer.set_weights([export.tensors[name].astype(np.float32) for name in names])
    used = {name for _, names in plan for name in names}
    report = LoadReport(export.path, export.kind, parts, len(plan), len(used), unused=len(set(export.tensors) - used))
    if verify and export.kind == "odapi_frozen":
        try:
            report.max_abs_diff = compare_with_frozen_graph(model, export, heads)
            worst = max(report.max_abs_diff, key=report.max_abs_diff.get)
            if report.max_abs_diff[worst] > VERIFY_TOLERANCE:
                raise EdgeError(f"{export.path}: the mapped weights do not reproduce the export: {worst} differs "
                                f"by {report.max_abs_diff[worst]:.3g} (tolerance {VERIFY_TOLERANCE}); a different "
                                "MobileNetV2 variant (explicit padding?); nothing loaded")
        except EdgeError:
            for (layer, _), weights in zip(plan, before):
                layer.set_weights(weights)
            raise
    return report
