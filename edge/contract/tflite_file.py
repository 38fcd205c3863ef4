"""Reading (and, for the conversion stage, writing) the parts of a ``.tflite`` file we need.

The interpreter does not expose operator kinds or flatbuffer metadata, so this reads them from
the file with the small ``flatbuffers`` runtime and a hand-kept map of the few table slots used
(schema: tensorflow/compiler/mlir/lite/schema/schema.fbs). That keeps it working with every
runtime, including tflite-runtime, which ships no generated schema.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from flatbuffers import table as fb_table
from flatbuffers.util import GetBufferIdentifier

from edge.errors import EdgeError
from edge.contract.modelinfo import ModelInfo, read_sidecar, sidecar_path

METADATA_NAME = "edgekit"
POSTPROCESS_OP = "TFLite_Detection_PostProcess"

# vtable slots (4 + 2 * field index) of the tables read here
_MODEL_OPERATOR_CODES, _MODEL_BUFFERS, _MODEL_METADATA = 6, 12, 16
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_CUSTOM, _OPCODE_BUILTIN = 4, 6, 10
_METADATA_NAME, _METADATA_BUFFER = 4, 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 4, 6, 8
_CUSTOM_OPCODE = 32


def _builtin_names() -> dict[int, str]:
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
        names = _builtin_names()
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
        buffers = _vector_tables(model, _MODEL_BUFFERS)
        metadata = {}
        for entry in _vector_tables(model, _MODEL_METADATA):
            name = _string(entry, _METADATA_NAME) or ""
            index = _scalar(entry, _METADATA_BUFFER, N.Uint32Flags, 0)
            if index < len(buffers):
                metadata[name] = _buffer_bytes(buffers[index], buf)
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise EdgeError(f"{path}: corrupt TFLite flatbuffer ({exc})") from None
    return TFLiteFile(path=path, operators=operators, metadata=metadata)


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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeError(f"{model_path}: embedded edgekit metadata is not valid JSON ({exc})") from None
    return ModelInfo.from_dict(data, source=f"{model_path} (embedded metadata)")


def embed_metadata(model_bytes: bytes, info: ModelInfo, name: str = METADATA_NAME) -> bytes:
    """Return ``model_bytes`` with ``info`` stored as a flatbuffer metadata entry ``name``.

    Uses LiteRT's generated schema object API (ai-edge-litert is installed wherever models are
    converted); an existing entry of the same name is replaced.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    payload = schema.BufferT()
    payload.data = list(info.to_json().encode("utf-8"))
    model.buffers.append(payload)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _decoded(m.name) != name] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _decoded(name: bytes | str | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")
