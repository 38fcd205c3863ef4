"""The post-process tail of ``--format onnx``, written with the ``onnx.helper`` API.

:func:`append_postprocess` replaces the network's two raw-head outputs
(:data:`convert.onnx_network.RAW_BOXES`, :data:`~convert.onnx_network.RAW_SCORES`) by: the anchors as
a constant, the OD API box decoding, the score threshold and ONNX ``NonMaxSuppression``
(class-agnostic "fast" NMS, or per-class "regular" NMS with a final top-k, the two modes of
``TFLite_Detection_PostProcess``), then padding to fixed shapes.

Outputs are those of ``TFLite_Detection_PostProcess``, so the detector decodes both the same way:
``boxes`` [1, N, 4] (ymin, xmin, ymax, xmax, normalised), ``classes`` [1, N] (0-based, float),
``scores`` [1, N] and ``count`` [1] (float). ``NonMaxSuppression`` selects a variable number K of
boxes; the tail pads the K rows with zeros to N and ``count`` says how many are valid, so every
output has a fixed shape and ONNX Runtime writes into buffers bound once.

Needs ``onnx`` only (no TensorFlow): a test can append the tail to a hand-made graph.
"""

from __future__ import annotations

import numpy as np

from convert.onnx_network import RAW_BOXES, RAW_SCORES, import_onnx_tool
from edge.errors import EdgeError

OUTPUT_NAMES = ("boxes", "classes", "scores", "count")
_TAIL = "edgekit_tail/"


class _Tail:
    """Nodes and constants appended to a graph, every name under :data:`_TAIL`."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.onnx = import_onnx_tool("onnx")
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{_TAIL}{stem}_{self.count}"

    def const(self, stem: str, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, stem: str, *values: int) -> str:
        return self.const(stem, np.array(values, np.int64), np.int64)

    def node(self, op: str, inputs: list[str], output: str | None = None, outputs: int = 1, **attributes):
        names = [output] if output else [self.name(op.lower()) for _ in range(outputs)]
        self.graph.node.append(self.onnx.helper.make_node(op, inputs, names, name=self.name(op), **attributes))
        return names[0] if outputs == 1 else names


def _free_names(graph, names) -> None:
    """Rename tensors of the network that already use one of ``names`` (the tail's output names)."""
    taken = set(names)
    clash = {t for t in ([i.name for i in graph.initializer] + [o for n in graph.node for o in n.output]
                         + [i.name for i in graph.input]) if t in taken}
    rename = {t: f"{_TAIL}network/{t}" for t in clash}
    if not rename:
        return
    for tensor in list(graph.initializer) + list(graph.input) + list(graph.value_info):
        tensor.name = rename.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]


def append_postprocess(model, anchors: np.ndarray, attributes: dict):
    """Replace the two raw-head outputs of ``model`` by the post-process tail (in place; returns ``model``).

    ``attributes`` are the TFLite op's (:meth:`convert.head.PostprocessOptions.op_attributes`):
    max_detections N, nms_score_threshold, nms_iou_threshold, use_regular_nms, detections_per_class,
    num_classes and the box coder's scales.
    """
    onnx = import_onnx_tool("onnx")
    from onnx import TensorProto, helper

    graph = model.graph
    by_name = {o.name: o for o in graph.output}
    if set(by_name) != {RAW_BOXES, RAW_SCORES}:
        raise EdgeError(f"tf2onnx gave outputs {sorted(by_name)}, expected {RAW_BOXES} and {RAW_SCORES}")
    if int(attributes.get("max_classes_per_detection", 1)) != 1:
        raise EdgeError("--format onnx: only max_classes_per_detection 1 is supported (the default)")
    anchors = np.asarray(anchors, np.float32)
    num_anchors = int(anchors.shape[0])
    num_classes = int(attributes["num_classes"])
    columns = [d.dim_value for d in by_name[RAW_SCORES].type.tensor_type.shape.dim][-1] or num_classes + 1
    n = int(attributes["max_detections"])
    _free_names(graph, OUTPUT_NAMES)
    t = _Tail(graph)

    # Box decoding (faster_rcnn_box_coder): centre = t / scale * anchor size + anchor centre,
    # size = exp(t / scale) * anchor size; corners ymin, xmin, ymax, xmax.
    enc = t.node("Reshape", [RAW_BOXES, t.ints("shape_a4", num_anchors, 4)])
    enc_yx, enc_hw = t.node("Split", [enc, t.ints("split", 2, 2)], outputs=2, axis=1)
    scale_yx = t.const("scale_yx", [attributes["y_scale"], attributes["x_scale"]])
    scale_hw = t.const("scale_hw", [attributes["h_scale"], attributes["w_scale"]])
    anchor_yx, anchor_hw = t.const("anchor_yx", anchors[:, :2]), t.const("anchor_hw", anchors[:, 2:])
    centre = t.node("Add", [t.node("Mul", [t.node("Div", [enc_yx, scale_yx]), anchor_hw]), anchor_yx])
    half = t.node("Mul", [t.node("Mul", [t.node("Exp", [t.node("Div", [enc_hw, scale_hw])]), anchor_hw]),
                          t.const("half", 0.5)])
    boxes = t.node("Concat", [t.node("Sub", [centre, half]), t.node("Add", [centre, half])], axis=1)  # [A, 4]
    boxes_batch = t.node("Unsqueeze", [boxes, t.ints("axis0", 0)])  # [1, A, 4]

    # Foreground scores: the op skips the leading background column(s).
    offset = columns - num_classes
    fg = t.node("Slice", [RAW_SCORES, t.ints("fg_start", offset), t.ints("fg_end", columns), t.ints("axis2", 2)])
    nms_args = [t.const("iou", [attributes["nms_iou_threshold"]]), t.const("score", [attributes["nms_score_threshold"]])]
    gather_col = lambda sel, col: t.node("Gather", [sel, t.const(f"col{col}", col, np.int64)], axis=1)  # noqa: E731
    if attributes.get("use_regular_nms"):
        per_class = t.node("Transpose", [fg], perm=[0, 2, 1])  # [1, C, A]
        selected = t.node("NonMaxSuppression", [boxes_batch, per_class,
                                                t.ints("per_class_max", int(attributes["detections_per_class"])),
                                                *nms_args])
        class_box = t.node("Slice", [selected, t.ints("cb_start", 1), t.ints("cb_end", 3), t.ints("axis1", 1)])
        candidates = t.node("GatherND", [t.node("Squeeze", [per_class, t.ints("sq0", 0)]), class_box])  # [K]
        k = t.node("Min", [t.node("Shape", [candidates]), t.ints("n", n)])
        scores_k, order = t.node("TopK", [candidates, k], outputs=2, axis=0, largest=1, sorted=1)
        box_index = t.node("Gather", [gather_col(selected, 2), order], axis=0)
        class_k = t.node("Gather", [gather_col(selected, 1), order], axis=0)
    else:
        best = t.node("ReduceMax", [fg], axes=[2], keepdims=0)  # [1, A]
        best_class = t.node("ArgMax", [fg], axis=2, keepdims=0)  # [1, A]
        selected = t.node("NonMaxSuppression", [boxes_batch, t.node("Unsqueeze", [best, t.ints("axis1u", 1)]),
                                                t.ints("max_out", n), *nms_args])
        box_index = gather_col(selected, 2)  # [K], best first
        flat = t.ints("shape_a", num_anchors)
        scores_k = t.node("Gather", [t.node("Reshape", [best, flat]), box_index], axis=0)
        class_k = t.node("Gather", [t.node("Reshape", [best_class, flat]), box_index], axis=0)

    # Fixed shapes: K rows, then zeros, cut at N.
    def padded(values: str, row: tuple[int, ...], output: str) -> None:
        filled = t.node("Concat", [values, t.const("zeros", np.zeros((n, *row), np.float32))], axis=0)
        first_n = t.node("Slice", [filled, t.ints("start0", 0), t.ints("end_n", n), t.ints("axis0s", 0)])
        t.node("Reshape", [first_n, t.ints("shape_out", 1, n, *row)], output=output)

    padded(t.node("Gather", [boxes, box_index], axis=0), (4,), "boxes")
    padded(t.node("Cast", [class_k], to=TensorProto.FLOAT), (), "classes")
    padded(scores_k, (), "scores")
    t.node("Cast", [t.node("Shape", [box_index])], output="count", to=TensorProto.FLOAT)

    del graph.output[:]
    for name, shape in zip(OUTPUT_NAMES, ([1, n, 4], [1, n], [1, n], [1])):
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    return model
