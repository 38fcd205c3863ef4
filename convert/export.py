"""SSD head -> ``TFLite_Detection_PostProcess`` -> SavedModel -> ``.tflite``, written atomically.

The post-process op goes in the way the TF OD API's ``export_tflite_graph_tf2.py`` does it: an
empty ``tf.function`` whose ``experimental_implements`` attribute carries the op's attributes;
the MLIR converter replaces the whole function by the custom op. It is applied to the raw box
encodings, the sigmoid class scores (background column kept) and the anchors as a constant.

Input contract of every exported model: one ``[1, H, W, 3]`` tensor of raw RGB pixels 0..255
(float32 for float models, uint8 for int8 models). The ``[0, 255] -> [-1, 1]`` affine is the
first op *inside* the model, so the int8 model's uint8 input has scale 1.0 and zero point 0
(see :mod:`convert.quantize`): a camera frame is written into the input tensor with no
arithmetic, and the metadata says ``normalization = {mean: 0, std: 1}``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edge.contract.anchors import AnchorConfig, generate_anchors
from edge.contract.boxcoding import BoxCoderScales
from edge.errors import EdgeError
from edge.contract.tflite_file import POSTPROCESS_OP, embed_metadata
from edge.contract.modelinfo import ModelInfo, Normalization

# What the exported model expects: raw pixels (the normalisation is inside the graph).
RAW_PIXELS = Normalization(mean=0.0, std=1.0)

OUTPUT_NAMES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


@dataclass
class PostprocessOptions:
    """Attributes of ``TFLite_Detection_PostProcess``, chosen explicitly rather than inherited.

    The OD API exporters default to ``max_detections=10`` and a score threshold of 1e-8 (every
    anchor enters NMS); here the defaults keep 100 detections (COCO evaluation's cap) and drop
    scores below 0.05 before NMS, which costs nothing measurable in mAP and keeps NMS cheap.
    """

    max_detections: int = 100  # detections the op returns (output shape [1, N, ...])
    score_threshold: float = 0.05  # candidates below this never enter NMS
    iou_threshold: float = 0.6  # NMS IoU
    detections_per_class: int = 100  # regular NMS only: candidates kept per class
    max_classes_per_detection: int = 1  # fast NMS: classes reported per box
    use_regular_nms: bool = False  # False: the op's fast class-agnostic NMS (the OD API default)

    def validate(self) -> None:
        if self.max_detections < 1:
            raise EdgeError(f"--max-detections must be at least 1, not {self.max_detections}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise EdgeError(f"--score-threshold must be in [0, 1), not {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise EdgeError(f"--iou-threshold must be in (0, 1], not {self.iou_threshold}")
        if self.detections_per_class < 1:
            raise EdgeError(f"--detections-per-class must be at least 1, not {self.detections_per_class}")

    def op_attributes(self, num_classes: int, box_coder: BoxCoderScales) -> dict:
        """Every attribute the op reads, as stored in the model (and in its metadata)."""
        return {
            "max_detections": int(self.max_detections),
            "max_classes_per_detection": int(self.max_classes_per_detection),
            "detections_per_class": int(self.detections_per_class),
            "use_regular_nms": bool(self.use_regular_nms),
            "nms_score_threshold": float(self.score_threshold),
            "nms_iou_threshold": float(self.iou_threshold),
            "y_scale": float(box_coder.y),
            "x_scale": float(box_coder.x),
            "h_scale": float(box_coder.h),
            "w_scale": float(box_coder.w),
            "num_classes": int(num_classes),  # foreground classes; the op skips column 0
        }

    def to_dict(self) -> dict:
        return asdict(self)


def implements_signature(attributes: dict) -> str:
    """The ``experimental_implements`` text (a NameAttrList proto) the MLIR converter legalises."""
    parts = [f'name: "{POSTPROCESS_OP}"']
    for key, value in attributes.items():
        if isinstance(value, bool):
            parts.append(f'attr {{ key: "{key}" value {{ b: {str(value).lower()} }} }}')
        elif isinstance(value, int):
            parts.append(f'attr {{ key: "{key}" value {{ i: {value} }} }}')
        else:
            parts.append(f'attr {{ key: "{key}" value {{ f: {value!r} }} }}')
    return " ".join(parts)


def postprocess_function(attributes: dict):
    """An empty ``tf.function`` that the converter turns into ``TFLite_Detection_PostProcess``.

    Inputs: box encodings ``[1, A, 4]`` (ty, tx, th, tw), class scores ``[1, A, C + 1]`` (column 0
    background) and anchors ``[A, 4]`` (ycenter, xcenter, h, w, normalised). Outputs (float32):
    boxes ``[1, N, 4]`` (ymin, xmin, ymax, xmax, normalised), classes ``[1, N]``, scores ``[1, N]``,
    count ``[1]``. In TensorFlow it returns placeholders: the real op exists only in TFLite.
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()

    @tf.function(experimental_implements=implements_signature(attributes))
    def detection_postprocess(box_encodings, class_scores, anchors):  # noqa: ARG001 (replaced by the op)
        boxes = tf.constant(0.0, dtype=tf.float32, name="boxes")
        classes = tf.constant(0.0, dtype=tf.float32, name="classes")
        scores = tf.constant(0.0, dtype=tf.float32, name="scores")
        count = tf.constant(0.0, dtype=tf.float32, name="num_detections")
        return boxes, classes, scores, count

    return detection_postprocess


@dataclass
class HeadSpec:
    """What the exporter must know about a network's raw head to put the op behind it."""

    input_size: tuple[int, int]  # (height, width) pixels
    anchors: AnchorConfig | None  # the generator config (None: only ``anchor_values`` known)
    num_classes: int  # foreground classes
    box_coder: BoxCoderScales
    normalization: Normalization  # what the network itself expects (applied inside the export)
    score_conversion: str = "sigmoid"
    anchor_values: np.ndarray | None = None  # [A, 4] (yc, xc, h, w); overrides ``anchors`` (imported graphs)

    def anchor_array(self) -> np.ndarray:
        if self.anchor_values is not None:
            return np.asarray(self.anchor_values, dtype=np.float32)
        if self.anchors is None:
            raise EdgeError("export: no anchors for the post-process op")
        return generate_anchors(self.anchors)


def build_detection_module(network: Callable, head: HeadSpec, options: PostprocessOptions,
                           trackable=None):
    """A ``tf.Module`` whose ``serving`` signature is pixels -> post-processed detections.

    ``network`` maps a normalised float ``[1, H, W, 3]`` batch to ``(box_encodings, class_logits)``;
    ``trackable`` (usually the Keras model itself) is attached so its variables are saved.
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    anchors = head.anchor_array()
    attributes = options.op_attributes(head.num_classes, head.box_coder)
    postprocess = postprocess_function(attributes)
    height, width = head.input_size
    mean, std = float(head.normalization.mean), float(head.normalization.std)
    convert_scores = {"sigmoid": tf.sigmoid, "softmax": tf.nn.softmax, "identity": tf.identity}[head.score_conversion]

    module = tf.Module()
    module.network = trackable if trackable is not None else network

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="image")])
    def serving(image):
        # The normalisation is the first op of the model: the quantizer then sees raw pixels at
        # the input and gives the uint8 input tensor scale 1, zero point 0.
        normalised = (image - mean) * (1.0 / std)
        box_encodings, class_logits = network(normalised)
        box_encodings = tf.reshape(box_encodings, [1, anchors.shape[0], 4])
        class_scores = convert_scores(tf.reshape(class_logits, [1, anchors.shape[0], head.num_classes + 1]))
        boxes, classes, scores, count = postprocess(box_encodings, class_scores, tf.constant(anchors))
        return dict(zip(OUTPUT_NAMES, (boxes, classes, scores, count)))

    module.serving = serving
    return module


def build_passthrough_module(network: Callable, head: HeadSpec):
    """Like :func:`build_detection_module` for a network that already ends in the post-process op
    (OD API TF2 exports): only the pixel normalisation is put in front of it."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    height, width = head.input_size
    mean, std = float(head.normalization.mean), float(head.normalization.std)
    module = tf.Module()
    module.network = getattr(network, "keep_alive", None) or tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="image")])
    def serving(image):
        outputs = network((image - mean) * (1.0 / std))
        return dict(zip(OUTPUT_NAMES, outputs))

    module.serving = serving
    return module


def keras_network(model):
    """Adapter: a Keras SSD (config.json contract) called in inference mode."""

    def network(x):
        outputs = model(x, training=False)
        if isinstance(outputs, dict):
            return outputs["box_encodings"], outputs["class_logits"]
        return outputs[0], outputs[1]

    return network


def save_module(module, directory: str | Path) -> Path:
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    directory = Path(directory)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serving})
    return directory


def tflite_from_saved_model(saved_model_dir: str | Path, *, int8: bool,
                            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
                            qat: bool = False) -> bytes:
    """Convert a detection SavedModel; int8: full-integer weights/activations, uint8 input.

    The post-process op stays float (its outputs are float32): forcing int8 outputs on it fails
    (tensorflow/models#8872). ``representative`` yields ``[pixels float32 [1,H,W,3]]`` lists; it is
    required for PTQ and also used with QAT for the few tensors without fake-quant ranges.
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.allow_custom_ops = True  # TFLite_Detection_PostProcess is a custom op
    if int8:
        if representative is None and not qat:
            raise EdgeError("int8 conversion needs calibration images (--calib DIR)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative is not None:
            converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError with pages of MLIR text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeError(f"TFLite conversion failed: {first[:300]}") from exc


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def finish_model(model_bytes: bytes, info: ModelInfo) -> bytes:
    """Embed ``info`` (labels, normalisation, anchors, op attributes, provenance) in the model."""
    return embed_metadata(model_bytes, info)


def input_quantization(model_bytes: bytes) -> tuple[np.dtype, float, int]:
    """(dtype, scale, zero point) of the model's input tensor, read with the interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    return np.dtype(detail["dtype"]), float(scale), int(zero_point)


def _postprocess_ops(model):
    """(subgraph, operator) pairs of every ``TFLite_Detection_PostProcess`` in a schema ModelT."""
    found = []
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            if custom == POSTPROCESS_OP:
                found.append((subgraph, op))
    return found


def read_postprocess_attributes(model_bytes: bytes) -> dict:
    """The attributes stored in the model's post-process op ({} when it has none)."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    ops = _postprocess_ops(model)
    if not ops:
        return {}
    options = ops[0][1].customOptions
    return dict(flexbuffers.Loads(bytes(bytearray(options)))) if options is not None else {}


def set_postprocess_attributes(model_bytes: bytes, attributes: dict) -> bytes:
    """Rewrite the post-process op's attributes (and its output shapes for ``max_detections``).

    Used for models whose op was built elsewhere (OD API TF2 exports default to 10 detections and
    a 1e-8 score threshold): the op reads these flexbuffer options when the interpreter prepares it.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    ops = _postprocess_ops(model)
    if not ops:
        raise EdgeError(f"the model has no {POSTPROCESS_OP} op to configure")
    floats = {"nms_score_threshold", "nms_iou_threshold", "y_scale", "x_scale", "h_scale", "w_scale"}
    for subgraph, op in ops:
        current = dict(flexbuffers.Loads(bytes(bytearray(op.customOptions)))) if op.customOptions is not None else {}
        for key, value in attributes.items():
            current[key] = float(value) if key in floats else value
        op.customOptions = list(flexbuffers.Dumps(current))
        n = int(current.get("max_detections", 0)) * int(current.get("max_classes_per_detection", 1))
        for position, tensor_index in enumerate(op.outputs[:3]):
            tensor = subgraph.tensors[tensor_index]
            shape = [1, n, 4] if position == 0 else [1, n]
            tensor.shape = shape
            tensor.shapeSignature = None
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
