"""The load-time check of a frozen-graph load: our feature maps against the export's own, on one probe image.

After the weights of a TF1 frozen graph are mapped, our feature maps (and head outputs, with
``--init-from``) are computed on a fixed probe image (:func:`probe_image`) and compared with the
export's own tensors for the same input (:func:`compare_with_frozen_graph`); a difference over
:data:`VERIFY_TOLERANCE` makes :func:`convert.pretrained.load_pretrained` refuse the load.

Feature maps compared (``S`` = ``FeatureExtractor/MobilenetV2``): ``block_13_expand_relu`` =
``S/expanded_conv_13/expansion_output`` (stride 16), ``out_relu`` = ``S/Conv_1/Relu6`` (stride 32),
``extra_K_expand_relu`` = ``S/layer_19_2_Conv2d_{K+2}_3x3_s2_{D}/Relu6``; with heads, ``box_I_pw`` /
``class_I_pw`` = ``BoxPredictor_I/{BoxEncodingPredictor,ClassPredictor}/BiasAdd``.
"""

from __future__ import annotations

import numpy as np

from convert.pretrained_names import SCOPE, extra_layer_rows
from convert.pretrained_sources import ExportWeights
from edge.errors import EdgeError, first_line

# Our feature maps against the export's, on the probe image (activations are ReLU6-bounded, logits a
# few units): float32 sums over ~17 blocks differ by ~1e-5 between kernels; a wrong tensor by >0.1.
VERIFY_TOLERANCE = 1e-3


def verification_pairs(model, export: ExportWeights, heads: bool) -> list[tuple[str, str]]:
    """``(our layer, export tensor)`` pairs compared by :func:`compare_with_frozen_graph`."""
    nodes = {node.name for node in export.graph_def.node}
    pairs = [("block_13_expand_relu", f"{SCOPE}/expanded_conv_13/expansion_output"),
             ("out_relu", f"{SCOPE}/Conv_1/Relu6")]
    names = {layer.name for layer in model.layers}
    scopes = {name.rsplit("/", 1)[0] for name in export.tensors}
    for name, kind, scope in extra_layer_rows(model, scopes):
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
