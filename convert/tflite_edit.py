"""Editing and reading ``.tflite`` flatbuffers for the conversion stage.

Everything goes through LiteRT's generated schema object API (``ModelT``; ai-edge-litert is
installed wherever models are converted): the metadata entry the board reads, the attributes of
``TFLite_Detection_PostProcess`` (the converter drops the ones it does not know, and OD API exports
carry the OD API's defaults), and the conv / fully-connected filters whose sparsity and compressed
size the report measures. Operators are named the way the board's read-only parser
(:mod:`edge.contract.tflite_file`) names them, from the same map. No TensorFlow here.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edge.contract.modelinfo import ModelInfo
from edge.contract.tflite_file import METADATA_NAME, POSTPROCESS_OP, builtin_operator_names
from edge.errors import EdgeError

# Builtin operators whose second input is a filter, and the Keras layer kind it came from.
WEIGHT_OPS = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense",
              "TRANSPOSE_CONV": "Conv2DTranspose"}
# schema TensorType -> numpy dtype, for the types weights are stored in
_TENSOR_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8, 7: np.int16}
# Post-process attributes the op reads as floats (flexbuffers keeps Python ints as ints).
_FLOAT_ATTRIBUTES = {"nms_score_threshold", "nms_iou_threshold", "y_scale", "x_scale", "h_scale", "w_scale"}


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def unpack(model_bytes: bytes):
    """The file as a mutable schema ``ModelT``."""
    return _schema().ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)


def pack(model, size_hint: int = 0) -> bytes:
    """A schema ``ModelT`` back to ``.tflite`` bytes."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def operator_name(model, op, names: dict[int, str] | None = None) -> str:
    """Builtin name (``CONV_2D``) or custom code (``TFLite_Detection_PostProcess``) of ``op``."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == _schema().BuiltinOperator.CUSTOM:
        return _text(code.customCode) or "CUSTOM"
    names = builtin_operator_names() if names is None else names
    return names.get(builtin, f"BUILTIN_{builtin}")


def operators(model) -> Iterator[tuple[object, object, str]]:
    """``(subgraph, operator, name)`` for every operator of every subgraph."""
    names = builtin_operator_names()
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            yield subgraph, op, operator_name(model, op, names)


def embed_metadata(model_bytes: bytes, info: ModelInfo, name: str = METADATA_NAME) -> bytes:
    """Return ``model_bytes`` with ``info`` stored as a flatbuffer metadata entry ``name``.

    An existing entry of the same name is replaced.
    """
    schema = _schema()
    model = unpack(model_bytes)
    payload = schema.BufferT()
    payload.data = list(info.to_json().encode("utf-8"))
    model.buffers.append(payload)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != name] + [entry]
    return pack(model, len(model_bytes))


def _postprocess_ops(model) -> list[tuple[object, object]]:
    """(subgraph, operator) pairs of every ``TFLite_Detection_PostProcess``."""
    return [(subgraph, op) for subgraph, op, name in operators(model) if name == POSTPROCESS_OP]


def _custom_options(op) -> dict:
    from flatbuffers import flexbuffers

    return dict(flexbuffers.Loads(bytes(bytearray(op.customOptions)))) if op.customOptions is not None else {}


def read_postprocess_attributes(model_bytes: bytes) -> dict:
    """The attributes stored in the model's post-process op ({} when it has none).

    A reference for tests and reports; the board reads them from the embedded metadata.
    """
    ops = _postprocess_ops(unpack(model_bytes))
    return _custom_options(ops[0][1]) if ops else {}


def set_postprocess_attributes(model_bytes: bytes, attributes: dict) -> bytes:
    """Rewrite the post-process op's attributes (and its output shapes for ``max_detections``).

    Used for models whose op was built elsewhere (OD API TF2 exports default to 10 detections and
    a 1e-8 score threshold): the op reads these flexbuffer options when the interpreter prepares it.
    """
    from flatbuffers import flexbuffers

    model = unpack(model_bytes)
    ops = _postprocess_ops(model)
    if not ops:
        raise EdgeError(f"the model has no {POSTPROCESS_OP} op to configure")
    for subgraph, op in ops:
        current = _custom_options(op)
        for key, value in attributes.items():
            current[key] = float(value) if key in _FLOAT_ATTRIBUTES else value
        op.customOptions = list(flexbuffers.Dumps(current))
        n = int(current.get("max_detections", 0)) * int(current.get("max_classes_per_detection", 1))
        for position, tensor_index in enumerate(op.outputs[:3]):
            tensor = subgraph.tensors[tensor_index]
            tensor.shape = [1, n, 4] if position == 0 else [1, n]
            tensor.shapeSignature = None
    return pack(model, len(model_bytes))


def filter_weights(model_bytes: bytes) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yield ``(layer kind, values, zero value)`` for every conv / fully-connected filter in the file.

    Each stored buffer is yielded once; filters computed at run time (a dequantized float16
    weight) have no data in the file and are skipped.
    """
    model = unpack(model_bytes)
    seen: set[int] = set()
    for subgraph, op, name in operators(model):
        kind = WEIGHT_OPS.get(name)
        if kind is None or op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        tensor = subgraph.tensors[op.inputs[1]]
        if tensor.buffer in seen or tensor.buffer >= len(model.buffers):
            continue
        data = model.buffers[tensor.buffer].data
        dtype = _TENSOR_DTYPES.get(tensor.type)
        if data is None or dtype is None or len(data) == 0:
            continue
        seen.add(tensor.buffer)
        values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype=dtype)
        zero = 0
        quantization = tensor.quantization
        if quantization is not None and quantization.zeroPoint is not None and len(quantization.zeroPoint) == 1:
            zero = int(quantization.zeroPoint[0])
        yield kind, values, zero
