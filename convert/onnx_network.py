"""The network half of ``--format onnx``: the float source's raw head as an ONNX graph, by tf2onnx.

The graph starts at ``image``, uint8 ``[1, H, W, 3]`` raw RGB pixels: the cast and the network's own
normalisation are its first ops (the metadata says ``normalization = {mean: 0, std: 1}``, as for the
TFLite exports), so a camera frame goes in with no arithmetic. Then the network, converted from the
*float* source -- a run directory, a Keras file, an OD API frozen graph cut at its raw head, or a TF2
OD API SavedModel cut before its post-process function -- never from an int8 ``.tflite``. It ends in
:data:`RAW_BOXES` and :data:`RAW_SCORES`, what ``TFLite_Detection_PostProcess`` is given in the
TFLite export; :func:`convert.onnx_tail.append_postprocess` replaces them by the decoding and NMS.
"""

from __future__ import annotations

import importlib

import numpy as np

from edge.errors import EdgeError, first_line

OPSET = 17  # NonMaxSuppression needs 11; 17 runs on ONNX Runtime 1.14+ (JetPack 5 builds included)
INPUT_NAME = "image"
RAW_BOXES, RAW_SCORES = "raw_box_encodings", "raw_class_scores"


def import_onnx_tool(name: str):
    """The ``onnx`` or ``tf2onnx`` module, or EdgeError naming the extra that installs both."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise EdgeError(f"{name} is not installed ({exc}); --format onnx needs the desktop extra: "
                        'pip install "edgekit[convert,onnx]" (tf2onnx, onnx, onnxruntime)') from None


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
    tf2onnx = import_onnx_tool("tf2onnx")
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
        return {RAW_BOXES: tf.identity(box_encodings), RAW_SCORES: tf.identity(class_scores)}

    try:
        # Frozen here rather than by tf2onnx's from_function: a function that calls a pruned, imported
        # graph (the OD API sources) keeps captured-resource inputs whose names its grappler pass loses.
        frozen = convert_variables_to_constants_v2(raw_head.get_concrete_function(), lower_control_flow=False,
                                                   aggressive_inlining=True)
        inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        outputs = [t.name for t in frozen.outputs]  # flattened dict: sorted keys, boxes then scores
        model, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=OPSET,
            tensors_to_rename={inputs[0]: INPUT_NAME, outputs[0]: RAW_BOXES, outputs[1]: RAW_SCORES})
    except EdgeError:
        raise
    except Exception as exc:  # tf2onnx raises whatever its handlers raise, with pages of graph text
        raise EdgeError(f"tf2onnx cannot convert the network ({first_line(exc, 240, with_type=True)})") from exc
    return model, anchors
