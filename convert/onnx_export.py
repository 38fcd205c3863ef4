"""``edge convert SOURCE --format onnx -o model.onnx``: the float network, its anchors, box decoding and NMS
in one ONNX graph that ONNX Runtime runs with fixed-shape, preallocated outputs.

The graph, in order:

- ``image``: uint8 ``[1, H, W, 3]`` raw RGB pixels; the cast and the network's own normalisation are
  the first ops inside the graph (the metadata says ``normalization = {mean: 0, std: 1}``, as for
  the TFLite exports), so a camera frame goes in with no arithmetic.
- the network, converted by tf2onnx from the *float* source (a run directory, a Keras file, an OD
  API frozen graph cut at its raw head, or a TF2 OD API SavedModel cut before its post-process
  function) -- never from an int8 ``.tflite``;
- the tail, written here with the ``onnx.helper`` API: the anchors as a constant, the OD API box
  decoding, the score threshold and ONNX ``NonMaxSuppression`` (class-agnostic "fast" NMS, or
  per-class "regular" NMS with a final top-k, the two modes of ``TFLite_Detection_PostProcess``),
  then padding to fixed shapes.

Outputs are those of ``TFLite_Detection_PostProcess``, so the detector decodes both the same way:
``boxes`` [1, N, 4] (ymin, xmin, ymax, xmax, normalised), ``classes`` [1, N] (0-based, float),
``scores`` [1, N] and ``count`` [1] (float). ``NonMaxSuppression`` selects a variable number K of
boxes; the tail pads the K rows with zeros to N and ``count`` says how many are valid, so every
output has a fixed shape and ONNX Runtime writes into buffers bound once.

Labels, anchors, normalisation and provenance travel as ``metadata_props["edgekit"]``: the same
JSON the TFLite metadata carries (:meth:`edge.contract.modelinfo.ModelInfo.to_json`).

Before anything is written, :func:`check_parity` runs ONNX Runtime (CPU) and the float TFLite
model over the same images through the board's :class:`~edge.detector.detector.Detector`.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge.contract.tflite_file import METADATA_NAME
from edge.errors import EdgeError, first_line

OPSET = 17  # NonMaxSuppression needs 11; 17 runs on ONNX Runtime 1.14+ (JetPack 5 builds included)
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "classes", "scores", "count")
METADATA_KEY = METADATA_NAME  # "edgekit", as in the TFLite metadata
ONNX_DISTS = ("tf2onnx", "onnx", "onnxruntime")
_RAW_BOXES, _RAW_SCORES = "raw_box_encodings", "raw_class_scores"
_TAIL = "edgekit_tail/"

# The parity gate: ONNX Runtime against the float TFLite model on the same images.
PARITY_MIN_IOU = 0.95
PARITY_MAX_SCORE_DIFF = 0.02
PARITY_MAX_MAP_POINTS = 0.5
PARITY_SCORE = 0.3  # detections at or above this score (in either model) must have a partner


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise EdgeError(f"onnx is not installed ({exc}); --format onnx needs the desktop extra: "
                        'pip install "edgekit[convert,onnx]" (tf2onnx, onnx, onnxruntime)') from None
    return onnx


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError as exc:
        raise EdgeError(f"tf2onnx is not installed ({exc}); --format onnx needs the desktop extra: "
                        'pip install "edgekit[convert,onnx]" (tf2onnx, onnx, onnxruntime)') from None
    return tf2onnx


# ---------------------------------------------------------------- the network (tf2onnx)

def raw_head_network(source):
    """``normalised float [1, H, W, 3] -> (box encodings [1, A, 4], class scores [1, A, C + 1])`` of ``source``.

    Scores are after the head's score conversion (sigmoid, softmax or none), background column 0
    kept, exactly what ``TFLite_Detection_PostProcess`` is given in the TFLite export.
    """
    from convert import export
    from convert.inputs import KIND_SAVED_MODEL

    if source.kind == KIND_SAVED_MODEL:
        return tf2_raw_head(source)
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    head = source.head
    network = export.keras_network(source.model) if source.model is not None else source.network
    convert_scores = {"sigmoid": tf.sigmoid, "softmax": tf.nn.softmax, "identity": tf.identity}[head.score_conversion]
    anchors = int(head.anchor_array().shape[0])

    def raw(x):
        box_encodings, class_logits = network(x)
        box_encodings = tf.reshape(box_encodings, [1, anchors, 4])
        return box_encodings, convert_scores(tf.reshape(class_logits, [1, anchors, head.num_classes + 1]))

    return raw, head.anchor_array()


def _implements_postprocess(function) -> bool:
    attr = function.attr.get("_implements")
    if attr is None:
        return False
    return "TFLite_Detection_PostProcess" in (attr.s.decode("utf-8", "replace") if attr.s else attr.func.name)


def _rename_functions(graph_def) -> None:
    """Give every library function a fresh name (the loaded SavedModel already registered the originals)."""
    import uuid

    suffix = f"_edgekit_{uuid.uuid4().hex[:8]}"
    renamed = {f.signature.name: f.signature.name + suffix for f in graph_def.library.function}

    def fix(node) -> None:
        if node.op in renamed:
            node.op = renamed[node.op]
        for attr in node.attr.values():
            if attr.HasField("func") and attr.func.name in renamed:
                attr.func.name = renamed[attr.func.name]
            for function in attr.list.func:
                if function.name in renamed:
                    function.name = renamed[function.name]

    for node in graph_def.node:
        fix(node)
    for function in graph_def.library.function:
        function.signature.name = renamed[function.signature.name]
        for node in function.node_def:
            fix(node)
    for gradient in graph_def.library.gradient:
        gradient.function_name = renamed.get(gradient.function_name, gradient.function_name)


def tf2_raw_head(source):
    """A TF2 OD API SavedModel (``export_tflite_graph_tf2.py``) with its post-process function opened up.

    That function is empty in TensorFlow (the TFLite converter replaces it by the op), so freezing
    would fold the detections to constants. Instead its body, in a copy of the signature's graph, is
    made to return its own inputs -- box encodings, class scores, anchors -- and the copy is
    imported with the SavedModel's variables captured. The signature's outputs, in sorted-name order
    (as :func:`convert.odapi.load_tf2_saved_model` reads them), are then those three tensors.
    Returns ``(network, anchors [A, 4] yc/xc/h/w)``.
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    loaded = getattr(source.network, "keep_alive", None)
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    signature = signatures.get("serving_default") or next(iter(signatures.values()), None)
    if signature is None:
        raise EdgeError("the TF2 SavedModel has no serving signature")
    graph_def = signature.graph.as_graph_def()
    postprocess = [f for f in graph_def.library.function if _implements_postprocess(f)]
    if len(postprocess) != 1 or len(postprocess[0].signature.input_arg) != 3 \
            or len(postprocess[0].signature.output_arg) != 4 or len(signature.outputs) != 4:
        raise EdgeError("the TF2 SavedModel does not end in one TFLite_Detection_PostProcess function with "
                        "3 inputs and 4 outputs (export_tflite_graph_tf2.py); convert it with --format tflite")
    function = postprocess[0]
    inputs = [a.name for a in function.signature.input_arg]
    del function.node_def[:]
    function.ret.clear()
    for i, output in enumerate(function.signature.output_arg):
        function.ret[output.name] = inputs[min(i, 2)]  # boxes <- encodings, classes <- scores, scores and count <- anchors
    del function.attr["_implements"]
    _rename_functions(graph_def)
    captures = {internal.name: external for external, internal in signature.graph.captures}
    image = [t for t in signature.graph.inputs if t.name not in captures]
    if len(image) != 1:
        raise EdgeError(f"the TF2 SavedModel's signature takes {len(image)} inputs, expected one image")
    image = image[0]
    names = sorted(signature.structured_outputs)
    outputs = dict(zip(names, (t.name for t in signature.outputs)))

    def _import():
        graph = tf.compat.v1.get_default_graph()
        tf.graph_util.import_graph_def(graph_def, input_map={k: graph.capture(v) for k, v in captures.items()},
                                       name="")

    try:
        wrapped = tf.compat.v1.wrap_function(_import, [])
        graph = wrapped.graph
        head = wrapped.prune(feeds=[graph.get_tensor_by_name(image.name)],
                             fetches=[graph.get_tensor_by_name(outputs[name]) for name in names[:3]])
        probe = head(tf.zeros(image.shape, image.dtype))
    except EdgeError:
        raise
    except Exception as exc:
        raise EdgeError(f"the TF2 SavedModel cannot be cut before its post-process function "
                        f"({first_line(exc, 200, with_type=True)}); convert it with --format tflite") from exc
    anchors = np.asarray(probe[2], np.float32).reshape(-1, 4)
    num_anchors = anchors.shape[0]
    if tuple(probe[0].shape) != (1, num_anchors, 4) or probe[1].shape[:2] != (1, num_anchors):
        raise EdgeError(f"the TF2 SavedModel's post-process inputs are {[list(p.shape) for p in probe]}, expected "
                        f"[1, A, 4], [1, A, C + 1] and [A, 4]")

    def raw(x):
        box_encodings, class_scores, _ = head(x)
        return box_encodings, class_scores

    raw.keep_alive = (wrapped, head, loaded)
    # The SavedModel's variables, so that freezing finds a value for every captured handle.
    handles = {id(external) for external in captures.values()}
    raw.variables = [v for v in tf.train.TrackableView(loaded).descendants()
                     if isinstance(v, tf.Variable) and id(v.handle) in handles]
    return raw, anchors


def network_onnx(source):
    """The network as an ONNX ModelProto: uint8 ``image`` -> the two raw-head outputs (tf2onnx)."""
    tf2onnx = _tf2onnx()
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    network, anchors = raw_head_network(source)
    height, width = source.head.input_size
    mean, std = float(source.head.normalization.mean), float(source.head.normalization.std)
    spec = tf.TensorSpec([1, height, width, 3], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def raw_head(image):
        graph = tf.compat.v1.get_default_graph()
        for variable in getattr(network, "variables", ()):
            graph.watch_variable(variable)  # captured by an imported graph: tell the freezer they are variables
        # The network's normalisation is the first op of the graph: raw camera pixels go in.
        box_encodings, class_scores = network((tf.cast(image, tf.float32) - mean) * (1.0 / std))
        return {_RAW_BOXES: tf.identity(box_encodings), _RAW_SCORES: tf.identity(class_scores)}

    try:
        # Frozen here rather than by tf2onnx's from_function: a function that calls a pruned, imported
        # graph (the OD API sources) keeps captured-resource inputs whose names its grappler pass loses.
        frozen = convert_variables_to_constants_v2(raw_head.get_concrete_function(), lower_control_flow=False,
                                                   aggressive_inlining=True)
        inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        outputs = [t.name for t in frozen.outputs]  # flattened dict: sorted keys, boxes then scores
        model, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=OPSET,
            tensors_to_rename={inputs[0]: INPUT_NAME, outputs[0]: _RAW_BOXES, outputs[1]: _RAW_SCORES})
    except EdgeError:
        raise
    except Exception as exc:  # tf2onnx raises whatever its handlers raise, with pages of graph text
        raise EdgeError(f"tf2onnx cannot convert the network ({first_line(exc, 240, with_type=True)})") from exc
    return model, anchors


# ---------------------------------------------------------------- the tail (onnx.helper)

class _Tail:
    """Nodes and constants appended to a graph, every name under :data:`_TAIL`."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.onnx = _onnx()
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
    onnx = _onnx()
    from onnx import TensorProto, helper

    graph = model.graph
    by_name = {o.name: o for o in graph.output}
    if set(by_name) != {_RAW_BOXES, _RAW_SCORES}:
        raise EdgeError(f"tf2onnx gave outputs {sorted(by_name)}, expected {_RAW_BOXES} and {_RAW_SCORES}")
    if int(attributes.get("max_classes_per_detection", 1)) != 1:
        raise EdgeError("--format onnx: only max_classes_per_detection 1 is supported (the default)")
    anchors = np.asarray(anchors, np.float32)
    num_anchors = int(anchors.shape[0])
    num_classes = int(attributes["num_classes"])
    columns = [d.dim_value for d in by_name[_RAW_SCORES].type.tensor_type.shape.dim][-1] or num_classes + 1
    n = int(attributes["max_detections"])
    _free_names(graph, OUTPUT_NAMES)
    t = _Tail(graph)

    # Box decoding (faster_rcnn_box_coder): centre = t / scale * anchor size + anchor centre,
    # size = exp(t / scale) * anchor size; corners ymin, xmin, ymax, xmax.
    enc = t.node("Reshape", [_RAW_BOXES, t.ints("shape_a4", num_anchors, 4)])
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
    fg = t.node("Slice", [_RAW_SCORES, t.ints("fg_start", offset), t.ints("fg_end", columns), t.ints("axis2", 2)])
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


# ---------------------------------------------------------------- the whole export

def export_onnx(source, info, postprocess) -> bytes:
    """The ONNX bytes for ``source``: network, tail, metadata; checked by ``onnx.checker`` (EdgeError if not)."""
    onnx = _onnx()
    from onnx import helper

    model, anchors = network_onnx(source)
    append_postprocess(model, anchors, source.head.op_attributes(postprocess))
    model.producer_name = "edgekit"
    model.doc_string = "SSD detector exported by edge convert --format onnx"
    del model.metadata_props[:]
    helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise EdgeError(f"the exported ONNX graph does not pass onnx.checker ({first_line(exc, 240)})") from exc
    return model.SerializeToString()


def onnx_provenance(provenance: dict) -> dict:
    """``provenance`` with the format, opset and the ONNX tools' versions added."""
    from edge.provenance import package_versions

    versions = dict(provenance.get("versions", {}))
    versions.update(package_versions(ONNX_DISTS, installed_only=False))
    return dict(provenance, versions=versions, format="onnx", opset=OPSET)


# ---------------------------------------------------------------- measuring the file

def model_stats(path: str | Path):
    """:class:`convert.validate.ModelStats` of an ``.onnx`` file (size, gzip, weight sparsity, input, ops)."""
    onnx = _onnx()
    from onnx import numpy_helper

    from convert.validate import ModelStats, gzip_size

    path = Path(path)
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    weights = {i.name: i for i in model.graph.initializer}
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    filters = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weights:
            values = numpy_helper.to_array(weights[node.input[1]])
            kind = "DepthwiseConv" if node.op_type == "Conv" and any(
                a.name == "group" and a.i > 1 for a in node.attribute) else node.op_type
            zeros[kind] = zeros.get(kind, 0) + int(np.count_nonzero(values == 0))
            totals[kind] = totals.get(kind, 0) + int(values.size)
            filters.append(values.tobytes())
    total = sum(totals.values())
    image = model.graph.input[0]
    shape = [d.dim_value for d in image.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type)
    return ModelStats(
        path=str(path), size_bytes=len(data), gzip_bytes=gzip_size(data),
        weights_gzip_bytes=len(gzip.compress(b"".join(filters), compresslevel=9, mtime=0)),
        sparsity={"overall": round(sum(zeros.values()) / total, 4) if total else 0.0,
                  "by_kind": {k: round(zeros[k] / totals[k], 4) for k in sorted(totals)}, "weights": total},
        input={"dtype": np.dtype(dtype).name, "shape": shape, "scale": 0.0, "zero_point": 0},
        operators=sorted({n.op_type for n in model.graph.node}),
    )


def cpu_backend(path: str | Path, num_threads: int | None = None):
    """The ONNX model on ONNX Runtime's CPU provider (what the gate and the report compare)."""
    from edge.backends import open_backend

    return open_backend(path, "onnxruntime", num_threads, providers=("cpu",))


def measure_latency(path: str | Path, runs: int = 50, warmup: int = 5, num_threads: int | None = None):
    """Median and 90th-percentile ``invoke()`` in ms on ONNX Runtime's CPU provider, random pixels."""
    from convert.validate import Latency

    backend = cpu_backend(path, num_threads)
    backend.view(backend.image)()[...] = np.random.default_rng(0).integers(0, 256, backend.image.shape, np.uint8)
    for _ in range(warmup):
        backend.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        backend.invoke()
        times[i] = (time.perf_counter() - start) * 1000.0
    return Latency(float(np.median(times)), float(np.percentile(times, 90)), runs, backend.info.describe(),
                   backend.info.note)


# ---------------------------------------------------------------- the parity gate

@dataclass
class Parity:
    """ONNX Runtime (CPU) against the float TFLite model on the same images, and whether it passes."""

    compared: str
    images: int
    detections: int = 0  # detections at or above PARITY_SCORE, both directions
    matched: int = 0
    min_iou: float | None = None
    max_score_diff: float | None = None
    map50_tflite: float | None = None
    map50_onnx: float | None = None
    failures: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    evaluation: object = None  # the ONNX model's convert.evaluate.Evaluation (labelled images only)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def map50_points(self) -> float | None:
        if self.map50_onnx is None or self.map50_tflite is None:
            return None
        return round(100.0 * (self.map50_onnx - self.map50_tflite), 3)

    def to_dict(self) -> dict:
        return {"compared": self.compared, "images": self.images, "detections": self.detections,
                "matched": self.matched, "min_iou": self.min_iou, "max_score_diff": self.max_score_diff,
                "map50_tflite": self.map50_tflite, "map50_onnx": self.map50_onnx,
                "map50_points": self.map50_points, "passed": self.passed, "failures": list(self.failures),
                "unreadable": list(self.unreadable),
                "thresholds": {"min_iou": PARITY_MIN_IOU, "max_score_diff": PARITY_MAX_SCORE_DIFF,
                               "max_map50_points": PARITY_MAX_MAP_POINTS, "score": PARITY_SCORE}}

    def describe(self) -> str:
        text = (f"{self.matched}/{self.detections} detections matched on {self.images} images"
                + (f", min IoU {self.min_iou:.4f}" if self.min_iou is not None else "")
                + (f", max score diff {self.max_score_diff:.4f}" if self.max_score_diff is not None else ""))
        if not self.detections:
            text += f" (no detection scored >= {PARITY_SCORE} in either model: no boxes compared)"
        if self.map50_points is not None:
            text += f", mAP@0.5 {100 * self.map50_onnx:.2f} vs {100 * self.map50_tflite:.2f}"
        return text + ("" if self.passed else f"; FAILED: {self.failures[0]}")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` [n, 4] with every one in ``b`` [m, 4]."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(reference, candidate, score: float = PARITY_SCORE) -> list[tuple[float | None, float | None]]:
    """For each ``reference`` detection scoring >= ``score``: (IoU, |score difference|) of its partner in
    ``candidate`` -- the same class, highest IoU, each partner used once -- or (None, None).

    ``reference`` and ``candidate`` are ``(boxes xyxy [n, 4], scores [n], class ids [n])``.
    """
    ref_boxes, ref_scores, ref_classes = reference
    cand_boxes, cand_scores, cand_classes = candidate
    iou = _iou_matrix(np.asarray(ref_boxes, np.float64), np.asarray(cand_boxes, np.float64)) \
        if len(ref_boxes) and len(cand_boxes) else np.zeros((len(ref_boxes), len(cand_boxes)))
    used = np.zeros(len(cand_boxes), bool)
    results = []
    for i in np.argsort(-np.asarray(ref_scores), kind="stable"):
        if ref_scores[i] < score:
            continue
        options = np.where((cand_classes == ref_classes[i]) & ~used, iou[i], -1.0)
        j = int(np.argmax(options)) if len(options) else -1
        if j < 0 or options[j] <= 0:
            results.append((None, None))
            continue
        used[j] = True
        results.append((float(iou[i, j]), float(abs(cand_scores[j] - ref_scores[i]))))
    return results


def _predictions(detector, frames: list[np.ndarray]):
    out = []
    for frame in frames:
        dets = detector.detect(frame)
        n = dets.count
        out.append((np.array(dets.boxes[:n], np.float32), np.array(dets.scores[:n], np.float32),
                    np.array(dets.class_ids[:n], np.int64)))
    return out


def _dataset_predictions(predictions, mapping: np.ndarray):
    """Model class ids -> dataset class ids (unmatched classes dropped), for evaluate_map."""
    mapped = []
    for boxes, scores, classes in predictions:
        ids = np.where((classes >= 0) & (classes < len(mapping)), mapping[np.clip(classes, 0, len(mapping) - 1)], -1)
        keep = ids >= 0
        mapped.append((boxes[keep], scores[keep], ids[keep]))
    return mapped


def check_parity(onnx_path: str | Path, tflite_path: str | Path, image_paths: list[Path], where: str,
                 dataset=None, num_threads: int | None = None, log: Callable[[str], None] = lambda _: None) -> Parity:
    """Run ONNX Runtime (CPU) and the float TFLite model on ``image_paths`` and compare.

    Every detection scoring >= :data:`PARITY_SCORE` in one model must have a same-class partner in
    the other with IoU >= :data:`PARITY_MIN_IOU` and a score within :data:`PARITY_MAX_SCORE_DIFF`;
    with a labelled ``dataset`` (whose images are ``image_paths``), mAP@0.5 must agree within
    :data:`PARITY_MAX_MAP_POINTS` points. ``where`` says where the images came from, for the report.
    """
    import cv2

    from edge.detector.detector import Detector

    onnx_detector = Detector(backend=cpu_backend(onnx_path, num_threads), score_threshold=0.0)
    tflite_detector = Detector(tflite_path, score_threshold=0.0, num_threads=num_threads)
    frames, readable, unreadable = [], [], []
    for path in image_paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            unreadable.append(str(path))
        else:
            frames.append(frame)
            readable.append(path)
    parity = Parity(compared=(f"ONNX Runtime {onnx_detector.runtime_info.describe()} (CPU provider) vs the float "
                              f"TFLite model on {tflite_detector.runtime_info.describe()}, {len(frames)} images "
                              f"from {where}, through the board's Detector"), images=len(frames),
                    unreadable=unreadable)
    if not frames:
        parity.failures.append(f"no readable image in {where} to compare on")
        return parity
    onnx_preds, tflite_preds = _predictions(onnx_detector, frames), _predictions(tflite_detector, frames)
    ious, diffs, missing = [], [], []
    for path, onnx_pred, tflite_pred in zip(readable, onnx_preds, tflite_preds):
        for direction, ref, cand in (("TFLite", tflite_pred, onnx_pred), ("ONNX", onnx_pred, tflite_pred)):
            for iou, diff in match_detections(ref, cand):
                parity.detections += 1
                if iou is None:
                    missing.append(f"a {direction} detection in {Path(path).name} has no same-class partner")
                    continue
                ious.append(iou)
                diffs.append(diff)
                if iou >= PARITY_MIN_IOU and diff <= PARITY_MAX_SCORE_DIFF:
                    parity.matched += 1
    parity.min_iou = round(min(ious), 5) if ious else None
    parity.max_score_diff = round(max(diffs), 5) if diffs else None
    if missing:
        parity.failures.append(f"{len(missing)} unmatched detections ({missing[0]})")
    if ious and min(ious) < PARITY_MIN_IOU:
        parity.failures.append(f"matched boxes IoU down to {min(ious):.4f} (< {PARITY_MIN_IOU})")
    if diffs and max(diffs) > PARITY_MAX_SCORE_DIFF:
        parity.failures.append(f"scores differ by up to {max(diffs):.4f} (> {PARITY_MAX_SCORE_DIFF})")
    if dataset is not None and onnx_detector.labels:
        from convert.evaluate import Evaluation, class_mapping
        from convert.metrics import evaluate_map

        start = time.perf_counter()
        kept = set(readable)
        subset = dataset.subset([i for i, s in enumerate(dataset.samples) if s.image_path in kept])
        mapping = class_mapping(onnx_detector.labels, dataset.labels)
        result = evaluate_map(subset, _dataset_predictions(onnx_preds, mapping))
        parity.map50_onnx = float(result.map50)
        parity.map50_tflite = float(evaluate_map(subset, _dataset_predictions(tflite_preds, mapping)).map50)
        matched = sorted({dataset.labels[i] for i in mapping if i >= 0})
        parity.evaluation = Evaluation(
            map50=float(result.map50), map=float(result.map), per_class_ap50=dict(result.per_class_ap50),
            num_images=result.num_images, num_detections=result.num_detections, matched_classes=matched,
            unmatched_dataset_classes=[name for name in dataset.labels if name not in matched],
            skipped_images=[(path, "unreadable or not an image") for path in unreadable],
            seconds=time.perf_counter() - start)
        if abs(parity.map50_points) > PARITY_MAX_MAP_POINTS:
            parity.failures.append(f"mAP@0.5 differs by {parity.map50_points:+.2f} points (> {PARITY_MAX_MAP_POINTS})")
    log(f"parity: {parity.describe()}")
    return parity
