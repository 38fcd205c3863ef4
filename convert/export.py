"""SSD head -> ``TFLite_Detection_PostProcess`` -> SavedModel -> ``.tflite`` bytes.

The post-process op goes in the way the TF OD API's ``export_tflite_graph_tf2.py`` does it: an
empty ``tf.function`` whose ``experimental_implements`` attribute carries the op's attributes;
the MLIR converter replaces the whole function by the custom op. It is applied to the raw box
encodings, the sigmoid class scores (background column kept) and the anchors as a constant.

Input contract of every exported model: one ``[1, H, W, 3]`` tensor of raw RGB pixels 0..255
(float32 for float models, uint8 for int8 models). The ``[0, 255] -> [-1, 1]`` affine is the
first op *inside* the model, so the int8 model's uint8 input has scale 1.0 and zero point 0
(see :mod:`convert.quantize`): a camera frame is written into the input tensor with no
arithmetic, and the metadata says ``normalization = {mean: 0, std: 1}``.

The head is described by :class:`convert.head.HeadSpec`; the metadata and the op's final
attributes go into the converted bytes through :mod:`convert.tflite_edit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from convert.head import HeadSpec, PostprocessOptions
from edge.contract.tflite_file import POSTPROCESS_OP
from edge.errors import EdgeError, first_line

OUTPUT_NAMES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


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


def build_detection_module(network: Callable, head: HeadSpec, options: PostprocessOptions,
                           trackable=None):
    """A ``tf.Module`` whose ``serving`` signature is pixels -> post-processed detections.

    ``network`` maps a normalised float ``[1, H, W, 3]`` batch to ``(box_encodings, class_logits)``;
    ``trackable`` (usually the Keras model itself) is attached so its variables are saved.
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    anchors = head.anchor_array()
    attributes = head.op_attributes(options)
    postprocess = postprocess_function(attributes)
    height, width = head.input_size
    mean, std = float(head.normalization.mean), float(head.normalization.std)
    convert_scores = {"sigmoid": tf.sigmoid, "softmax": tf.nn.softmax, "identity": tf.identity}[head.score_conversion]

    module = tf.Module()
    module.network = weights_only(trackable) if trackable is not None else network

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


def weights_only(trackable):
    """What a SavedModel of ``trackable`` needs for the serving function: its variables.

    Saving a module that holds the Keras model itself makes ``tf.saved_model.save`` serialise every
    layer, tracing each one's call, and the converter then reads all those functions: on a tiny SSD
    on two cores 27 s to save and 24 s to convert, against 4 s and 7 s for the same bytes with the
    variables alone. Anything that is not a Keras model (a loaded SavedModel) is kept whole.
    """
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    weights = getattr(trackable, "weights", None)
    if weights is None or not hasattr(trackable, "layers"):
        return trackable
    holder = tf.Module()
    holder.weights = list(weights)
    return holder


def weights_digest(model) -> str:
    """A digest of a Keras model's weights (values and shapes): two calls agree only while no weight changed."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        value = np.asarray(weight.numpy())
        digest.update(f"{weight.name}{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


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
        raise EdgeError(f"TFLite conversion failed: {first_line(exc, 300)}") from exc
