"""Reading the parts of a ``.tflite`` file the board needs: operator kinds and metadata.

The interpreter does not expose operator kinds or flatbuffer metadata, so this reads them from
the file with the small ``flatbuffers`` runtime and a hand-kept map of the few table slots used
(schema: tensorflow/compiler/mlir/lite/schema/schema.fbs). That keeps it working with every
runtime, including tflite-runtime, which ships no generated schema. This module only reads;
the conversion stage edits files in ``convert.tflite_edit``, with the same operator names.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from flatbuffers import table as fb_table
from flatbuffers.util import GetBufferIdentifier

from edge.errors import EdgeError, first_line
from edge.contract.modelinfo import ModelInfo, read_sidecar, sidecar_path

METADATA_NAME = "edgekit"
POSTPROCESS_OP = "TFLite_Detection_PostProcess"

# vtable slots (4 + 2 * field index) of the tables read here
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS, _MODEL_METADATA = 6, 8, 12, 16
_SUBGRAPH_OPERATORS = 10
_OPERATOR_OPCODE_INDEX, _OPERATOR_CUSTOM_OPTIONS = 4, 14
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_CUSTOM, _OPCODE_BUILTIN = 4, 6, 10
_METADATA_NAME, _METADATA_BUFFER = 4, 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 4, 6, 8
_CUSTOM_OPCODE = 32


def builtin_operator_names() -> dict[int, str]:
    """``{builtin operator code: name}`` (``CONV_2D``, ...) from the generated schema; {} without one."""
    for module in ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated"):
        try:
            schema = __import__(module, fromlist=["BuiltinOperator"])
        except ImportError:
            continue
        ops = schema.BuiltinOperator
        return {value: name for name, value in vars(ops).items() if not name.startswith("_")}
    return {}


@dataclass
class TFLiteFile:
    """Operator kinds and metadata entries of a ``.tflite`` file."""

    path: Path
    operators: list[str]  # one entry per operator code: builtin name or custom code
    metadata: dict[str, bytes]
    postprocess_options: dict | None = None  # the post-process op's attributes (num_classes, ...)

    @property
    def has_postprocess(self) -> bool:
        return POSTPROCESS_OP in self.operators


def _table(buf: bytearray, pos: int) -> fb_table.Table:
    return fb_table.Table(buf, pos)


def _vector_tables(tab: fb_table.Table, slot: int) -> list[fb_table.Table]:
    off = tab.Offset(slot)
    if not off:
        return []
    start = tab.Vector(off)
    return [_table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(off))]


def _string(tab: fb_table.Table, slot: int) -> str | None:
    off = tab.Offset(slot)
    return tab.String(off + tab.Pos).decode("utf-8", "replace") if off else None


def _scalar(tab: fb_table.Table, slot: int, flags, default: int) -> int:
    off = tab.Offset(slot)
    return tab.Get(flags, off + tab.Pos) if off else default


def read_tflite(path: str | Path) -> TFLiteFile:
    """Parse the file's operator codes and metadata; EdgeError if it is not a TFLite model."""
    from flatbuffers import number_types as N

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO or device: reading would block
            raise EdgeError(f"{path}: not a regular file, expected a .tflite model file")
        buf = bytearray(path.read_bytes())
    except FileNotFoundError:
        raise EdgeError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise EdgeError(f"{path}: is a directory, expected a .tflite model file") from None
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read model ({exc.strerror})") from None
    if len(buf) < 16 or GetBufferIdentifier(buf, 0) != b"TFL3":
        raise EdgeError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        model = _table(buf, N.UOffsetTFlags.py_type(int.from_bytes(buf[0:4], "little")))
        names = builtin_operator_names()
        operators = []
        for code in _vector_tables(model, _MODEL_OPERATOR_CODES):
            builtin = max(
                _scalar(code, _OPCODE_DEPRECATED_BUILTIN, N.Int8Flags, 0),
                _scalar(code, _OPCODE_BUILTIN, N.Int32Flags, 0),
            )
            if builtin == _CUSTOM_OPCODE:
                operators.append(_string(code, _OPCODE_CUSTOM) or "CUSTOM")
            else:
                operators.append(names.get(builtin, f"BUILTIN_{builtin}"))
        postprocess_options = _postprocess_options(model, operators)
        buffers = _vector_tables(model, _MODEL_BUFFERS)
        metadata = {}
        for entry in _vector_tables(model, _MODEL_METADATA):
            name = _string(entry, _METADATA_NAME) or ""
            index = _scalar(entry, _METADATA_BUFFER, N.Uint32Flags, 0)
            if index < len(buffers):
                metadata[name] = _buffer_bytes(buffers[index], buf)
    except (IndexError, ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, struct.error,
            RecursionError, MemoryError) as exc:
        # Offsets in a damaged file point anywhere: flatbuffers reads past the end (struct.error,
        # IndexError) or builds offsets out of range (TypeError "bad number ... for type uint32").
        raise EdgeError(f"{path}: corrupt TFLite flatbuffer ({first_line(exc, 120, with_type=True)}); "
                        "re-export or re-download the model") from None
    return TFLiteFile(path=path, operators=operators, metadata=metadata, postprocess_options=postprocess_options)


def _postprocess_options(model: fb_table.Table, operators: list[str]) -> dict | None:
    """The flexbuffer attributes of the first post-process op in subgraph 0, or None."""
    from flatbuffers import flexbuffers
    from flatbuffers import number_types as N

    if POSTPROCESS_OP not in operators:
        return None
    code = operators.index(POSTPROCESS_OP)
    subgraphs = _vector_tables(model, _MODEL_SUBGRAPHS)
    for op in _vector_tables(subgraphs[0], _SUBGRAPH_OPERATORS) if subgraphs else []:
        if _scalar(op, _OPERATOR_OPCODE_INDEX, N.Uint32Flags, 0) != code:
            continue
        off = op.Offset(_OPERATOR_CUSTOM_OPTIONS)
        if not off:
            return {}
        start, length = op.Vector(off), op.VectorLen(off)
        try:
            return dict(flexbuffers.Loads(bytes(op.Bytes[start:start + length])))
        except Exception:  # options in a form we cannot read: the op still runs; we only lose the class count
            return {}
    return None


def _buffer_bytes(buffer: fb_table.Table, whole: bytearray) -> bytes:
    from flatbuffers import number_types as N

    off = buffer.Offset(_BUFFER_DATA)
    if off:
        start = buffer.Vector(off)
        return bytes(buffer.Bytes[start : start + buffer.VectorLen(off)])
    offset = _scalar(buffer, _BUFFER_OFFSET, N.Uint64Flags, 0)
    size = _scalar(buffer, _BUFFER_SIZE, N.Uint64Flags, 0)
    if offset > 1 and size:  # large models keep buffers after the flatbuffer
        return bytes(whole[offset : offset + size])
    return b""


def load_model_info(model_path: str | Path, tflite: TFLiteFile | None = None) -> ModelInfo | None:
    """The model's :class:`ModelInfo`: sidecar ``<model>.json`` if present, else embedded, else None."""
    sidecar = sidecar_path(model_path)
    if sidecar.is_file():
        return read_sidecar(sidecar)
    tflite = tflite or read_tflite(model_path)
    raw = tflite.metadata.get(METADATA_NAME)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise EdgeError(f"{model_path}: embedded edgekit metadata is not valid JSON ({first_line(exc)})") from None
    return ModelInfo.from_dict(data, source=f"{model_path} (embedded metadata)")
