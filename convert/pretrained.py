"""Pretrained weights already on disk, mapped onto :func:`convert.model.build_ssd`'s layers by name.

One job: read an export's tensors and put them into our model under the name correspondence below,
all or nothing. Nothing is loaded unless every tensor our model needs for the requested part is in
the source with the right shape; otherwise one :class:`EdgeError` line says what is missing or
differs (a wrong width, a different network, a truncated export). For TF1 frozen graphs the result is
then *verified*: our feature maps (and head outputs, with ``--init-from``) are computed on a fixed
probe image and compared with the export's own tensors for the same input; a difference over
:data:`VERIFY_TOLERANCE` is an EdgeError too.

Sources (:func:`source_kind`):

- ``keras_h5``: a Keras applications MobileNetV2 weights file (``save_weights`` HDF5, e.g.
  ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``, what ``imagenet`` downloads).
  Read with h5py and matched by layer name (Keras applications names, which our backbone keeps);
  layers of the file we do not have (``Logits`` of an ``include_top`` file) are ignored.
- ``odapi_frozen``: a TF1 OD API ``frozen_inference_graph.pb``. Its variables are ``Const`` nodes under
  their variable names. In the exports this was written against (the fixture
  ``ssdlite_mobilenet_v2_person_frozen.pb``, ``export_inference_graph``) BatchNorm is **not** folded:
  every conv is followed by ``FusedBatchNorm`` (epsilon 0.001, as ours) with ``gamma``, ``beta``,
  ``moving_mean`` and ``moving_variance`` constants, so they map one to one onto our
  BatchNormalization layers. A graph whose convs have no BatchNorm constants (folded by a graph
  transform) is refused with one line rather than guessed at.
- ``odapi_tf2``: a TF2 OD API checkpoint (``checkpoint/ckpt-0``) or SavedModel (its
  ``variables/variables``). The TF2 SSD MobileNetV2 feature extractor wraps Keras' MobileNetV2 as
  ``_feature_extractor/classification_backbone``; its variables are keyed by object path
  (``layer_with_weights-N/kernel``), N in the Keras construction order, which :func:`backbone_layer_names`
  reproduces. Only the backbone is mapped (the TF2 extras and heads are laid out differently), and
  with no graph to run it is checked by name, order and shape, not by feature maps.

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

Feature maps compared in the verification: ``block_13_expand_relu`` = ``S/expanded_conv_13/expansion_output``
(stride 16), ``out_relu`` = ``S/Conv_1/Relu6`` (stride 32), ``extra_K_expand_relu`` =
``S/layer_19_2_Conv2d_{K+2}_3x3_s2_{D}/Relu6``; with heads, ``box_I_pw`` / ``class_I_pw`` =
``BoxPredictor_I/{BoxEncodingPredictor,ClassPredictor}/BiasAdd``.

Parts: ``--backbone-weights`` loads the MobileNetV2 backbone and, from a frozen graph and for a model
without ``--fpn``, the SSDLite extra layers (class-agnostic features); ``--init-from`` adds the box
and class predictors, which needs the same number of classes and anchors per cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, first_line

SCOPE = "FeatureExtractor/MobilenetV2"
# Our feature maps against the export's, on the probe image (activations are ReLU6-bounded, logits a
# few units): float32 sums over ~17 blocks differ by ~1e-5 between kernels; a wrong tensor by >0.1.
VERIFY_TOLERANCE = 1e-3
KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
# Keras weight attribute -> OD API TF1 variable name, per layer kind.
_TF1_ATTRS = {"conv": {"kernel": "weights"}, "dw": {"depthwise_kernel": "depthwise_weights"},
              "bn": {a: a for a in _BN}, "conv_bias": {"kernel": "weights", "bias": "biases"}}
_TF2_KEY = re.compile(r"(?:^|/)_feature_extractor/classification_backbone/layer_with_weights-(\d+)/(\w+)"
                      r"/\.ATTRIBUTES/VARIABLE_VALUE$")


@dataclass(frozen=True)
class InitFrom:
    """``--init-from``: backbone, extra layers and heads from one OD API export (``build_ssd`` takes it
    as ``backbone_weights``)."""

    path: str

    def __str__(self) -> str:
        return f"init-from:{self.path}"


@dataclass
class ExportWeights:
    """The tensors of one source, keyed by their own names."""

    path: Path
    kind: str  # keras_h5 | odapi_frozen | odapi_tf2
    tensors: dict[str, np.ndarray]
    graph_def: object = None  # odapi_frozen: for the verification run


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


# ---------------------------------------------------------------- the name table

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


def _extra_rows(model, scopes: set[str]) -> list[tuple[str, str, str]]:
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


def _head_rows(model) -> list[tuple[str, str, str]]:
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
    rows = backbone_layer_names() + _extra_rows(model, scopes or set()) + (_head_rows(model) if heads else [])
    return [(f"{name}/{ours}", f"{scope}/{theirs}") for name, kind, scope in rows
            for ours, theirs in _TF1_ATTRS[kind].items()]


# ---------------------------------------------------------------- reading sources

def _tf2_prefix(path: Path) -> str | None:
    """The checkpoint prefix of a TF2 export (checkpoint prefix, its folder, a SavedModel, or the
    exporter's output folder holding ``checkpoint/`` and ``saved_model/``), or None."""
    if path.is_dir():
        if (path / "checkpoint").is_dir():
            path = path / "checkpoint"
        elif (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file():
            return str(path / "variables" / "variables")
        elif (path / "saved_model" / "saved_model.pb").is_file():
            return _tf2_prefix(path / "saved_model")
        indexes = sorted(path.glob("*.index"), key=lambda p: p.stat().st_mtime)
        state = path / "checkpoint"  # tf.train.CheckpointManager's state file names the newest
        match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(), re.M) if state.is_file() else None
        if match and Path(f"{path / match.group(1)}.index").is_file():
            return str(path / match.group(1))
        return str(indexes[-1])[: -len(".index")] if indexes else None
    if path.suffix == ".index" and path.is_file():
        return str(path)[: -len(".index")]
    if Path(str(path) + ".index").is_file():
        return str(path)
    return None


def source_kind(path: str | Path) -> str:
    """``keras_h5``, ``odapi_frozen`` or ``odapi_tf2``; EdgeError (one line) for anything else."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
        return "keras_h5"
    if path.is_file() and path.suffix.lower() == ".pb" and path.name != "saved_model.pb":
        return "odapi_frozen"
    if path.name == "saved_model.pb" and path.is_file():
        path = path.parent
    if _tf2_prefix(path) is not None:
        return "odapi_tf2"
    if not path.exists() and not Path(str(path) + ".index").exists():
        raise EdgeError(f"{path}: no such file or folder")
    raise EdgeError(f"{path}: not a pretrained-weights source (expected a Keras MobileNetV2 .h5 weights file, "
                    "an OD API frozen_inference_graph.pb, or a TF2 OD API checkpoint / SavedModel)")


def read_export(path: str | Path) -> ExportWeights:
    """All weight tensors of ``path`` (see :func:`source_kind`), keyed by their own names."""
    path = Path(path)
    kind = source_kind(path)
    if kind == "keras_h5":
        return ExportWeights(path, kind, _read_h5(path))
    if kind == "odapi_frozen":
        from convert.odapi import _parse_graph
        from convert.tf import import_tensorflow

        tf = import_tensorflow()
        graph_def = _parse_graph(path)
        tensors = {}
        for node in graph_def.node:
            if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum \
                    and (node.name.startswith("FeatureExtractor/") or node.name.startswith("BoxPredictor_")):
                tensors[node.name] = tf.make_ndarray(node.attr["value"].tensor)
        return ExportWeights(path, kind, tensors, graph_def)
    return ExportWeights(path, kind, _read_tf2(path))


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    """``layer/weight`` -> array of a Keras ``save_weights`` HDF5 file (or a whole saved model's)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise EdgeError(f"{path}: not a Keras weights file (no layer_names attribute)")
            tensors = {}
            for layer in group.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                for weight in group[layer].attrs.get("weight_names", []):
                    weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                    attr = weight.split("/")[-1].split(":")[0]
                    tensors[f"{layer}/{attr}"] = np.asarray(group[layer][weight])
            return tensors
    except OSError as exc:
        raise EdgeError(f"{path}: not a readable HDF5 weights file ({first_line(exc)})") from None


def _read_tf2(path: Path) -> dict[str, np.ndarray]:
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    prefix = _tf2_prefix(path if path.name != "saved_model.pb" else path.parent)
    try:
        reader = tf.train.load_checkpoint(prefix)
        keys = reader.get_variable_to_shape_map()
    except Exception as exc:  # DataLossError, NotFoundError, ...
        raise EdgeError(f"{path}: unreadable TF2 checkpoint {prefix} ({first_line(exc)})") from None
    tensors = {}
    for key in keys:
        match = _TF2_KEY.search(key)
        if match and ".OPTIMIZER_SLOT" not in key:
            tensors[f"layer_with_weights-{int(match.group(1))}/{match.group(2)}"] = reader.get_tensor(key)
    if not tensors:
        raise EdgeError(f"{path}: not a TF2 OD API SSD MobileNetV2 checkpoint (no "
                        f"_feature_extractor/classification_backbone variables in {prefix})")
    return tensors


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
        table = backbone_layer_names() + _extra_rows(model, scopes)
        if len(table) > len(backbone_layer_names()):
            parts.append("extras")
        if heads:
            _check_heads(model, export)
            table += _head_rows(model)
            parts.append("heads")
        rows = [(name, [f"{scope}/{_TF1_ATTRS[kind][w.name.split('/')[-1].split(':')[0]]}"
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


# ---------------------------------------------------------------- verification

def verification_pairs(model, export: ExportWeights, heads: bool) -> list[tuple[str, str]]:
    """``(our layer, export tensor)`` pairs compared by :func:`compare_with_frozen_graph`."""
    nodes = {node.name for node in export.graph_def.node}
    pairs = [("block_13_expand_relu", f"{SCOPE}/expanded_conv_13/expansion_output"),
             ("out_relu", f"{SCOPE}/Conv_1/Relu6")]
    names = {layer.name for layer in model.layers}
    scopes = {name.rsplit("/", 1)[0] for name in export.tensors}
    for name, kind, scope in _extra_rows(model, scopes):
        if name.endswith("_expand_conv"):
            pairs.append((name.replace("_expand_conv", "_expand_relu"), f"{scope}/Relu6"))
    if heads:
        i = 0
        while f"box_{i}_pw" in names:
            pairs += [(f"box_{i}_pw", f"BoxPredictor_{i}/BoxEncodingPredictor/BiasAdd"),
                      (f"class_{i}_pw", f"BoxPredictor_{i}/ClassPredictor/BiasAdd")]
            i += 1
    return [(ours, theirs) for ours, theirs in pairs if theirs in nodes]


def probe_image(size: int) -> np.ndarray:
    """The fixed [1, size, size, 3] input of the load-time check: smooth colour ramps plus noise, in [-1, 1]."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                      ramp[::-1][None, :].repeat(size, 0)], -1)
    return np.clip(0.6 * image + rng.uniform(-0.4, 0.4, image.shape).astype(np.float32), -1, 1)[None]


def frozen_graph_tensors(export: ExportWeights, image: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The export's own tensors ``names`` with ``image`` ([1, H, W, 3], normalised) fed at its feature
    extractor input (any H, W: the input node becomes a placeholder of that shape)."""
    from convert.odapi import _input_node
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    nodes = {node.name: node for node in export.graph_def.node}
    input_node = _input_node(nodes, export.path)
    cut = tf.compat.v1.GraphDef()
    cut.CopyFrom(export.graph_def)
    for node in cut.node:
        if node.name == input_node:
            node.op = "Placeholder"
            del node.input[:]
            node.attr.clear()
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(tf.TensorShape(list(image.shape)).as_proto())
    cut = _subgraph(cut, names)  # the rest (preprocessor, post-processing) has fixed 300 px shapes
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(cut, name="")
    try:
        with tf.compat.v1.Session(graph=graph) as session:
            values = session.run([f"{n}:0" for n in names], {f"{input_node}:0": image.astype(np.float32)})
    except Exception as exc:
        raise EdgeError(f"{export.path}: cannot run its feature extractor for the check ({first_line(exc)})") from None
    return dict(zip(names, values))


def _subgraph(graph_def, names: list[str]):
    """The nodes ``names`` depend on (the non-deprecated ``extract_sub_graph``)."""
    from convert.tf import import_tensorflow

    nodes = {node.name: node for node in graph_def.node}
    keep, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in keep or name not in nodes:
            continue
        keep.add(name)
        todo += [i.lstrip("^").split(":")[0] for i in nodes[name].input]
    out = import_tensorflow().compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(node for node in graph_def.node if node.name in keep)
    return out


def compare_with_frozen_graph(model, export: ExportWeights, heads: bool = False,
                              image: np.ndarray | None = None) -> dict[str, float]:
    """Max abs difference, per feature map (and head output), between ``model`` and the export on
    ``image`` ([1, S, S, 3] in [-1, 1] at the model's input size; default :func:`probe_image`)."""
    from convert.tf import import_keras

    keras = import_keras()
    if any(layer.compute_dtype == "float16" for layer in model.layers):
        # mixed_float16 differs from the export by ~0.05: compare the weights' float32 twin instead.
        twin = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(
            {**layer.get_config(), "dtype": "float32"}))
        twin.set_weights(model.get_weights())
        model = twin
    pairs = verification_pairs(model, export, heads)
    if not pairs:
        raise EdgeError(f"{export.path}: none of the feature-map tensors to verify against are in the graph")
    size = int(model.input_shape[1])
    image = probe_image(size) if image is None else image
    probe = keras.Model(model.input, [model.get_layer(ours).output for ours, _ in pairs])
    ours = probe(image, training=False)
    theirs = frozen_graph_tensors(export, image, [t for _, t in pairs])
    diffs = {}
    for (name, tensor), value in zip(pairs, ours):
        value, reference = np.asarray(value), theirs[tensor]
        if value.shape != reference.shape:
            raise EdgeError(f"{export.path}: {name} is {value.shape} in the model but {tensor} is "
                            f"{reference.shape} in the export")
        diffs[name] = float(np.max(np.abs(value - reference)))
    return diffs
