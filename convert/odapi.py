"""Import TF Object Detection API exports so they convert like our own checkpoints.

TF1 ``frozen_inference_graph.pb`` (``export_inference_graph``): the graph is cut at its raw head --
``concat`` (box encodings ``[1, A, 1, 4]``) and ``concat_1`` (class logits ``[1, A, C + 1]``) -- and
fed at the feature extractor's input (``FeatureExtractor/<net>/<net>/input``, or ``Preprocessor/sub``
in older exports), which takes ``[1, H, W, 3]`` normalised to [-1, 1]. The anchors are taken from
the graph itself (the ``Postprocessor`` decodes against them) and compared with the standard
``ssd_anchor_generator`` for that input size, so the metadata describes them when they match.

TF2 SavedModel from ``export_tflite_graph_tf2.py``: already ends in the post-process function, so it
is converted as it is; the op's attributes are then rewritten to the requested ones (see
:func:`convert.tflite_edit.set_postprocess_attributes`).

Both loaders describe the head they found as a :class:`convert.head.HeadSpec` (their ``head``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.head import HeadSpec
from edge.contract.anchors import AnchorConfig, generate_anchors, ssd_feature_map_sizes
from edge.contract.boxcoding import BoxCoderScales
from edge.contract.modelinfo import Normalization
from edge.errors import EdgeError, first_line

BOX_NODE = "concat"
CLASS_NODE = "concat_1"
IMAGE_NODE = "image_tensor"
ANCHORS_NODE = "Postprocessor/Reshape"  # anchors tiled over the batch, [B * A, 4] yxyx normalised
_LEGACY_INPUT = "Preprocessor/sub"


@dataclass
class FrozenSSD:
    """The raw-head cut of a frozen OD API SSD, ready for :func:`convert.export.build_detection_module`."""

    path: Path
    network: object  # concrete function: normalised [1, H, W, 3] -> (box encodings [1,A,4], logits [1,A,C+1])
    input_size: tuple[int, int]  # (height, width) pixels
    num_classes: int  # foreground
    anchors: np.ndarray  # float32 [A, 4] (ycenter, xcenter, h, w) normalised, from the graph
    anchor_config: AnchorConfig | None  # the standard generator config, when it reproduces the graph's anchors
    score_conversion: str
    input_node: str
    box_coder: BoxCoderScales = BoxCoderScales()
    normalization: Normalization = field(default_factory=lambda: Normalization(127.5, 127.5))

    @property
    def head(self) -> HeadSpec:
        return HeadSpec(self.input_size, self.anchor_config, self.num_classes, self.box_coder, self.normalization,
                        self.score_conversion, self.anchors)


def _parse_graph(path: Path):
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgeError(f"{path}: no such file") from None
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read ({exc.strerror})") from None
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception:  # google.protobuf.message.DecodeError
        raise EdgeError(f"{path}: not a TensorFlow frozen graph (GraphDef protobuf does not parse)") from None
    if not graph_def.node:
        raise EdgeError(f"{path}: not a TensorFlow frozen graph (no nodes)")
    return graph_def


def _input_node(nodes: dict, path: Path) -> str:
    # FeatureExtractor/MobilenetV2/MobilenetV2/input (not .../expanded_conv_3/input)
    candidates = [name for name in nodes if name.startswith("FeatureExtractor/") and name.endswith("/input")
                  and name.count("/") == 3 and name.split("/")[1] == name.split("/")[2]]
    if len(candidates) == 1:
        return candidates[0]
    if _LEGACY_INPUT in nodes:
        return _LEGACY_INPUT
    raise EdgeError(f"{path}: not an OD API SSD graph (no feature-extractor input node "
                    f"'FeatureExtractor/<net>/<net>/input' or '{_LEGACY_INPUT}')")


def _score_conversion(graph_def) -> str:
    ops = {node.op for node in graph_def.node if node.name.startswith("Postprocessor/")}
    if "Sigmoid" in ops:
        return "sigmoid"
    if "Softmax" in ops:
        return "softmax"
    return "identity"


def load_frozen_graph(path: str | Path) -> FrozenSSD:
    """Cut a TF1 OD API SSD frozen graph at its raw head; EdgeError (one line) if it is not one."""
    path = Path(path)
    graph_def = _parse_graph(path)
    nodes = {node.name: node for node in graph_def.node}
    missing = [name for name in (IMAGE_NODE, BOX_NODE, CLASS_NODE) if name not in nodes]
    if missing:
        raise EdgeError(f"{path}: not an OD API SSD frozen graph (no node {', '.join(repr(m) for m in missing)}; "
                        "expected image_tensor -> ... -> concat / concat_1 -> Postprocessor)")
    input_node = _input_node(nodes, path)
    values = _probe(graph_def, input_node, ANCHORS_NODE in nodes, path)
    in_shape, box_shape, cls_shape = values["input"].shape, values["box"].shape, values["cls"].shape
    if len(in_shape) != 4 or in_shape[3] != 3 or box_shape[-1] != 4 or len(cls_shape) != 3 \
            or box_shape[1] != cls_shape[1]:
        raise EdgeError(f"{path}: not an SSD head (input {list(in_shape)}, {BOX_NODE} {list(box_shape)}, "
                        f"{CLASS_NODE} {list(cls_shape)})")
    height, width = int(in_shape[1]), int(in_shape[2])
    num_anchors, columns = int(box_shape[1]), int(cls_shape[2])
    anchors, anchor_config = _graph_anchors(values.get("anchors"), (height, width), num_anchors, path)
    return FrozenSSD(
        path=path,
        network=_cut_at_head(graph_def, input_node, (height, width), num_anchors),
        input_size=(height, width),
        num_classes=columns - 1,
        anchors=anchors,
        anchor_config=anchor_config,
        score_conversion=_score_conversion(graph_def),
        input_node=input_node,
    )


def _probe(graph_def, input_node: str, has_anchors: bool, path: Path) -> dict[str, np.ndarray]:
    """One run of the whole graph on a dummy image: the static shapes and the anchors."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    fetches = {"input": f"{input_node}:0", "box": f"{BOX_NODE}:0", "cls": f"{CLASS_NODE}:0"}
    if has_anchors:
        fetches["anchors"] = f"{ANCHORS_NODE}:0"
    try:
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run(fetches, {f"{IMAGE_NODE}:0": np.zeros((1, 64, 64, 3), np.uint8)})
    except Exception as exc:
        raise EdgeError(f"{path}: the graph does not run as an OD API SSD ({first_line(exc)})") from None


def _graph_anchors(tiled: np.ndarray | None, size: tuple[int, int], num_anchors: int,
                   path: Path) -> tuple[np.ndarray, AnchorConfig | None]:
    """The graph's anchors (yc, xc, h, w), and the standard generator config when it reproduces them."""
    try:
        standard = AnchorConfig(feature_map_sizes=ssd_feature_map_sizes(size), input_size=size)
        standard_anchors = generate_anchors(standard)
    except EdgeError:
        standard, standard_anchors = None, np.zeros((0, 4), np.float32)
    if tiled is not None:
        corners = tiled.reshape(-1, 4)[:num_anchors].astype(np.float32)
        ymin, xmin, ymax, xmax = corners.T
        anchors = np.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=1)
    else:
        anchors = standard_anchors
    if anchors.shape[0] != num_anchors:
        raise EdgeError(f"{path}: {num_anchors} box encodings but {anchors.shape[0]} anchors "
                        "(not a standard ssd_anchor_generator graph)")
    matches = standard_anchors.shape == anchors.shape and np.allclose(standard_anchors, anchors, atol=1e-4)
    return anchors.astype(np.float32), standard if matches else None


def _cut_at_head(graph_def, input_node: str, size: tuple[int, int], num_anchors: int):
    """normalised [1, H, W, 3] -> (box encodings [1, A, 4], class logits [1, A, C + 1]).

    The feature-extractor input becomes a placeholder; only its descendants up to the head are
    kept (the preprocessor's while loop and the TF1 post-processing are dropped).
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    height, width = size
    cut = tf.compat.v1.GraphDef()
    cut.CopyFrom(graph_def)
    for node in cut.node:
        if node.name == input_node:
            node.op = "Placeholder"
            del node.input[:]
            node.attr.clear()
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(tf.TensorShape([1, height, width, 3]).as_proto())
    cut = tf.compat.v1.graph_util.extract_sub_graph(cut, [BOX_NODE, CLASS_NODE])

    def _import():
        tf.graph_util.import_graph_def(cut, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    head = wrapped.prune(feeds=[wrapped.graph.get_tensor_by_name(f"{input_node}:0")],
                         fetches=[wrapped.graph.get_tensor_by_name(f"{BOX_NODE}:0"),
                                  wrapped.graph.get_tensor_by_name(f"{CLASS_NODE}:0")])

    def network(x):
        box, logits = head(x)
        return tf.reshape(box, [1, num_anchors, 4]), logits

    network.keep_alive = (wrapped, head)  # the pruned function references the wrapped graph
    return network


def run_frozen_graph(path: str | Path, image_rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's own detections for one RGB uint8 image (reference for tests and validation).

    Returns ``boxes`` [N, 4] (ymin, xmin, ymax, xmax normalised), ``scores`` [N], ``classes`` [N]
    (the OD API's 1-based ids), N = ``num_detections``.
    """
    return run_frozen_graph_on_images(path, [image_rgb])[0]


def run_frozen_graph_on_images(path: str | Path, images_rgb) -> list[dict[str, np.ndarray]]:
    """:func:`run_frozen_graph` for several images (any sizes) in one session: the graph is parsed
    and imported once, which is most of the cost of a single call."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(_parse_graph(Path(path)), name="")
    results = []
    with tf.compat.v1.Session(graph=graph) as session:
        for image_rgb in images_rgb:
            boxes, scores, classes, count = session.run(
                ["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"],
                {f"{IMAGE_NODE}:0": image_rgb[None]})
            n = int(count[0])
            results.append({"boxes": boxes[0, :n], "scores": scores[0, :n], "classes": classes[0, :n]})
    return results


@dataclass
class TF2Export:
    """A TF2 OD API TFLite-ready SavedModel: normalised image -> post-process op outputs."""

    path: Path
    network: object  # normalised [1, H, W, 3] -> (boxes, classes, scores, count), the op's order
    input_size: tuple[int, int]
    num_classes: int
    attributes: dict  # the op's attributes as exported
    box_coder: BoxCoderScales = BoxCoderScales()
    normalization: Normalization = field(default_factory=lambda: Normalization(127.5, 127.5))

    @property
    def head(self) -> HeadSpec:
        return HeadSpec(self.input_size, None, self.num_classes, self.box_coder, self.normalization,
                        "identity", None)


def _implements_attributes(text: str) -> dict:
    """Parse ``attr { key: "k" value { i: 3 } }`` pairs of an ``experimental_implements`` string."""
    import re

    attributes = {}
    for key, kind, value in re.findall(r'key:\s*"([^"]+)"\s*value\s*\{\s*([ifb]):\s*([^\s}]+)\s*\}', text):
        attributes[key] = int(value) if kind == "i" else (value == "true") if kind == "b" else float(value)
    return attributes


def load_tf2_saved_model(path: str | Path) -> TF2Export:
    """A SavedModel written by ``export_tflite_graph_tf2.py``; EdgeError if it is not one."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    path = Path(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise EdgeError(f"{path}: cannot load the SavedModel ({first_line(exc)})") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise EdgeError(f"{path}: the SavedModel has no serving signature")
    signature = signatures.get("serving_default") or next(iter(signatures.values()))
    specs = [s for s in signature.structured_input_signature[1].values()] + list(signature.structured_input_signature[0])
    if len(specs) != 1 or specs[0].shape.rank != 4 or specs[0].shape[-1] != 3 or not specs[0].shape.is_fully_defined():
        raise EdgeError(f"{path}: expected one fixed image input [1, H, W, 3] (export_tflite_graph_tf2.py), "
                        f"found {[str(s.shape) for s in specs]}")
    attributes = None
    for function in signature.graph.as_graph_def().library.function:
        implements = function.attr.get("_implements")
        if implements is None:
            continue
        text = implements.s.decode() if implements.s else str(implements.func)
        if "TFLite_Detection_PostProcess" in text:
            attributes = _implements_attributes(text) if implements.s else {
                k: (v.i if v.HasField("i") else v.f if v.HasField("f") else v.b) for k, v in implements.func.attr.items()}
            break
    if attributes is None or "num_classes" not in attributes:
        raise EdgeError(f"{path}: not an SSD exported by export_tflite_graph_tf2.py "
                        "(no TFLite_Detection_PostProcess function in its graph)")
    input_name = next(iter(signature.structured_input_signature[1]))
    output_names = sorted(signature.structured_outputs)

    def network(x):
        outputs = signature(**{input_name: x})
        return tuple(outputs[name] for name in output_names)

    network.keep_alive = loaded
    shape = specs[0].shape
    coder = BoxCoderScales(*(float(attributes.get(k, d)) for k, d in
                             (("y_scale", 10.0), ("x_scale", 10.0), ("h_scale", 5.0), ("w_scale", 5.0))))
    return TF2Export(path=path, network=network, input_size=(int(shape[1]), int(shape[2])),
                     num_classes=int(attributes["num_classes"]), attributes=attributes, box_coder=coder)
