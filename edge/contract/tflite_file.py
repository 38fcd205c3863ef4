"""Reading a ``.tflite`` file: the flatbuffer helpers and table slots, and what the board needs from it.

The interpreter does not expose operator kinds or flatbuffer metadata, so this reads them from
the file with the small ``flatbuffers`` runtime and a hand-kept map of the few table slots used
(schema: tensorflow/compiler/mlir/lite/schema/schema.fbs). That keeps it working with every
runtime, including tflite-runtime, which ships no generated schema. This module only reads;
the conversion stage edits files in ``convert.tflite_edit``, with the same operator names.

It is the project's one ``.tflite`` reader: :func:`read_tflite` takes operator kinds and metadata,
and :mod:`edge.plan.graph` reads subgraph 0's tensors and operators with the same helpers
(:func:`root_table`, :func:`read_tables`, :func:`read_ints`, :func:`read_scalar`, ...) and slots.
A damaged file makes them raise (``IndexError``, ``struct.error``, ``TypeError``, ...); callers turn
that into one :class:`~edge.errors.EdgeError` line.
"""

from __future__ import annotations

import json
import mmap as _mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from flatbuffers import number_types as N
from flatbuffers import table as fb_table
from flatbuffers.util import GetBufferIdentifier

from edge.errors import EdgeError, first_line
from edge.contract.modelinfo import ModelInfo, read_sidecar, sidecar_path

METADATA_NAME = "edgekit"
POSTPROCESS_OP = "TFLite_Detection_PostProcess"

# vtable slots (4 + 2 * field index) of the tables read; a union takes two fields (type, value).
MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, MODEL_BUFFERS, MODEL_METADATA = 6, 8, 12, 16
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS, SUBGRAPH_OPERATORS, SUBGRAPH_NAME = 4, 6, 8, 10, 12
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_BUFFER, TENSOR_NAME, TENSOR_QUANTIZATION, TENSOR_VARIABLE = 4, 6, 8, 10, 12, 14
QUANT_SCALE, QUANT_ZERO_POINT = 8, 10
OP_OPCODE_INDEX, OP_INPUTS, OP_OUTPUTS, OP_BUILTIN_OPTIONS, OP_CUSTOM_OPTIONS = 4, 6, 8, 12, 14
OP_LARGE_CUSTOM_OFFSET, OP_LARGE_CUSTOM_SIZE = 22, 24
OPCODE_DEPRECATED_BUILTIN, OPCODE_CUSTOM, OPCODE_BUILTIN = 4, 6, 10
METADATA_ENTRY_NAME, METADATA_ENTRY_BUFFER = 4, 6  # the Metadata table's name and buffer
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 4, 6, 8
# Conv2DOptions / DepthwiseConv2DOptions: (stride_w, stride_h, dilation_w, dilation_h) slots
CONV_OPTION_SLOTS = {"CONV_2D": (6, 8, 12, 14), "DEPTHWISE_CONV_2D": (6, 8, 14, 16)}
CUSTOM_OPCODE = 32
PLACEHOLDER_FOR_GREATER_OP_CODES = 127  # deprecated_builtin_code when the real code is in builtin_code


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


# ---- reading tables -------------------------------------------------------------------------------
# Offsets in a damaged file point anywhere: a table outside the file fails when it is read
# (struct.error, or flatbuffers' TypeError "bad number ... for type uint32"); vector_span, read_ints
# and read_bytes also check that a vector lies inside the file (IndexError).

def table_at(buf: bytearray, pos: int) -> fb_table.Table:
    """The table at offset ``pos`` of the file."""
    return fb_table.Table(buf, pos)


def root_table(buf: bytearray) -> fb_table.Table:
    """The file's root table (the Model)."""
    return table_at(buf, N.UOffsetTFlags.py_type(int.from_bytes(buf[0:4], "little")))


def read_tables(tab: fb_table.Table, slot: int) -> list[fb_table.Table]:
    """The tables of the vector in field ``slot`` of ``tab`` (``[]`` when the field is absent)."""
    off = tab.Offset(slot)
    if not off:
        return []
    start = tab.Vector(off)
    return [table_at(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(off))]


def read_string(tab: fb_table.Table, slot: int) -> str | None:
    """The string in field ``slot``, or None when absent."""
    off = tab.Offset(slot)
    return tab.String(off + tab.Pos).decode("utf-8", "replace") if off else None


def read_scalar(tab: fb_table.Table, slot: int, flags, default: int) -> int:
    """The scalar of type ``flags`` (``flatbuffers.number_types``) in field ``slot``, else ``default``."""
    off = tab.Offset(slot)
    return tab.Get(flags, off + tab.Pos) if off else default


def vector_span(tab: fb_table.Table, slot: int) -> tuple[int, int]:
    """(start, length) of the vector in field ``slot``; (0, 0) when absent."""
    off = tab.Offset(slot)
    if not off:
        return 0, 0
    start = tab.Vector(off)
    length = tab.VectorLen(off)
    if start < 0 or start + length > len(tab.Bytes):
        raise IndexError(f"vector of {length} at {start} runs past the end of the file")
    return start, length


def read_ints(tab: fb_table.Table, slot: int) -> tuple[int, ...]:
    """The int32 vector in field ``slot`` (``()`` when absent)."""
    start, length = vector_span(tab, slot)
    if start + 4 * length > len(tab.Bytes):
        raise IndexError("int vector runs past the end of the file")
    return struct.unpack_from(f"<{length}i", tab.Bytes, start) if length else ()


def read_bytes(tab: fb_table.Table, slot: int) -> bytes:
    """The byte vector in field ``slot`` (``b""`` when absent)."""
    start, length = vector_span(tab, slot)
    return bytes(tab.Bytes[start:start + length])


# ---- operator kinds and metadata --------------------------------------------------------------------

def read_tflite(path: str | Path) -> TFLiteFile:
    """Parse the file's operator codes and metadata; EdgeError if it is not a TFLite model."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO or device: reading would block
            raise EdgeError(f"{path}: not a regular file, expected a .tflite model file")
        with open(path, "rb") as handle:
            # Mapped, not copied: a file-sized buffer, once freed, raises glibc's mmap threshold to the
            # file's size, and freed heap memory below it then stays resident (edge/plan/allocator.py).
            buf = _mmap.mmap(handle.fileno(), 0, access=_mmap.ACCESS_READ) if os.fstat(handle.fileno()).st_size else b""
    except FileNotFoundError:
        raise EdgeError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise EdgeError(f"{path}: is a directory, expected a .tflite model file") from None
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read model ({exc.strerror})") from None
    try:
        if len(buf) < 16 or GetBufferIdentifier(buf, 0) != b"TFL3":
            raise EdgeError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
        try:
            model = root_table(buf)
            names = builtin_operator_names()
            operators = []
            for code in read_tables(model, MODEL_OPERATOR_CODES):
                builtin = max(
                    read_scalar(code, OPCODE_DEPRECATED_BUILTIN, N.Int8Flags, 0),
                    read_scalar(code, OPCODE_BUILTIN, N.Int32Flags, 0),
                )
                if builtin == CUSTOM_OPCODE:
                    operators.append(read_string(code, OPCODE_CUSTOM) or "CUSTOM")
                else:
                    operators.append(names.get(builtin, f"BUILTIN_{builtin}"))
            postprocess_options = _postprocess_options(model, operators)
            buffers = read_tables(model, MODEL_BUFFERS)
            metadata = {}
            for entry in read_tables(model, MODEL_METADATA):
                name = read_string(entry, METADATA_ENTRY_NAME) or ""
                index = read_scalar(entry, METADATA_ENTRY_BUFFER, N.Uint32Flags, 0)
                if index < len(buffers):
                    metadata[name] = _buffer_bytes(buffers[index], buf)
        except (IndexError, ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, struct.error,
                RecursionError, MemoryError) as exc:
            # Offsets in a damaged file point anywhere: flatbuffers reads past the end (struct.error,
            # IndexError) or builds offsets out of range (TypeError "bad number ... for type uint32").
            raise EdgeError(f"{path}: corrupt TFLite flatbuffer ({first_line(exc, 120, with_type=True)}); "
                            "re-export or re-download the model") from None
        return TFLiteFile(path=path, operators=operators, metadata=metadata, postprocess_options=postprocess_options)
    finally:
        if isinstance(buf, _mmap.mmap):
            try:
                buf.close()
            except BufferError:  # a view still alive (an exception's frame): the mapping goes with it
                pass

def _postprocess_options(model: fb_table.Table, operators: list[str]) -> dict | None:
    """The flexbuffer attributes of the first post-process op in subgraph 0, or None."""
    from flatbuffers import flexbuffers

    if POSTPROCESS_OP not in operators:
        return None
    code = operators.index(POSTPROCESS_OP)
    subgraphs = read_tables(model, MODEL_SUBGRAPHS)
    for op in read_tables(subgraphs[0], SUBGRAPH_OPERATORS) if subgraphs else []:
        if read_scalar(op, OP_OPCODE_INDEX, N.Uint32Flags, 0) != code:
            continue
        off = op.Offset(OP_CUSTOM_OPTIONS)
        if not off:
            return {}
        start, length = op.Vector(off), op.VectorLen(off)
        try:
            return dict(flexbuffers.Loads(bytes(op.Bytes[start:start + length])))
        except Exception:  # options in a form we cannot read: the op still runs; we only lose the class count
            return {}
    return None


def _buffer_bytes(buffer: fb_table.Table, whole) -> bytes:
    off = buffer.Offset(BUFFER_DATA)
    if off:
        start = buffer.Vector(off)
        return bytes(buffer.Bytes[start : start + buffer.VectorLen(off)])
    offset = read_scalar(buffer, BUFFER_OFFSET, N.Uint64Flags, 0)
    size = read_scalar(buffer, BUFFER_SIZE, N.Uint64Flags, 0)
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
