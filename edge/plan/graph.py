"""A ``.tflite`` graph read from the flatbuffer alone: subgraph 0's tensors and operators, in order.

Nothing here loads a runtime, OpenCV or TensorFlow: the file is read with the flatbuffer helpers
and table slots of :mod:`edge.contract.tflite_file` (the project's one ``.tflite`` reader), so it
works beside every runtime, including tflite-runtime, which ships no generated schema, and on a
desktop with no runtime at all. :func:`read_graph` also adds what kernels add at load time that the
file does not carry (the post-process op's temporaries and output sizes), and
:func:`with_builtin_temporaries` what TFLite's own kernels would (CONV_2D's im2col buffer); the
arena is planned over it in :mod:`edge.plan.arena`.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from flatbuffers import number_types as N
from flatbuffers import table as fb_table
from flatbuffers.util import GetBufferIdentifier

from edge.contract.tflite_file import (BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE, CONV_OPTION_SLOTS, CUSTOM_OPCODE,
                                       MODEL_BUFFERS, MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, OP_BUILTIN_OPTIONS,
                                       OP_CUSTOM_OPTIONS, OP_INPUTS, OP_LARGE_CUSTOM_OFFSET, OP_LARGE_CUSTOM_SIZE,
                                       OP_OPCODE_INDEX, OP_OUTPUTS, OPCODE_BUILTIN, OPCODE_CUSTOM,
                                       OPCODE_DEPRECATED_BUILTIN, POSTPROCESS_OP, QUANT_SCALE, QUANT_ZERO_POINT,
                                       SUBGRAPH_INPUTS, SUBGRAPH_OPERATORS, SUBGRAPH_OUTPUTS, SUBGRAPH_TENSORS,
                                       TENSOR_BUFFER, TENSOR_NAME, TENSOR_QUANTIZATION, TENSOR_SHAPE, TENSOR_TYPE,
                                       TENSOR_VARIABLE, builtin_operator_names, read_bytes, read_ints, read_scalar,
                                       read_string, read_tables, root_table, table_at, vector_span)
from edge.errors import EdgeError, first_line

OPTIONAL_TENSOR = -1

# TensorType -> (name, bits per element); None: sized at run time (strings, resources, variants).
TENSOR_TYPES: dict[int, tuple[str, int | None]] = {
    0: ("float32", 32), 1: ("float16", 16), 2: ("int32", 32), 3: ("uint8", 8), 4: ("int64", 64),
    5: ("string", None), 6: ("bool", 8), 7: ("int16", 16), 8: ("complex64", 64), 9: ("int8", 8),
    10: ("float64", 64), 11: ("complex128", 128), 12: ("uint64", 64), 13: ("resource", None),
    14: ("variant", None), 15: ("uint32", 32), 16: ("uint16", 16), 17: ("int4", 4), 18: ("bfloat16", 16),
    19: ("int2", 2), 20: ("uint4", 4),
}

# Custom ops the stock LiteRT / TFLite op resolver registers (everything else needs a custom build).
KNOWN_CUSTOM_OPS = frozenset({POSTPROCESS_OP, "Mfcc", "AudioSpectrogram", "NumericVerify", "aeq.hadamard_rotation"})


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int  # as TFLite sizes it: elements x element size (packed sub-byte types rounded up)
    buffer: int
    constant: bool  # its buffer holds data: a weight, mapped from the file
    variable: bool
    dynamic: bool = False  # string/resource/variant or unknown dimensions: sized at run time, not planned
    temporary: bool = False  # a kernel's temporary added at load time (not in the file)
    quantization: tuple[float, int] = (0.0, 0)  # first (scale, zero point); (0.0, 0) when not quantized


@dataclass
class Operator:
    index: int
    name: str  # builtin name or custom code
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    custom: bool = False
    temporaries: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)  # custom options (flexbuffer map) where readable


@dataclass
class Graph:
    """Subgraph 0 of a ``.tflite`` file, with what the planner needs."""

    path: Path
    file_bytes: int
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    weight_bytes: int  # distinct buffers with data referenced by constant tensors of subgraph 0
    buffer_bytes: int  # all buffers with data in the file (every subgraph, metadata included)
    unknown_ops: list[str] = field(default_factory=list)

    @property
    def quantization(self) -> dict[int, tuple[float, int]]:
        return {t.index: t.quantization for t in self.tensors}

    @property
    def op_names(self) -> list[str]:
        return sorted({op.name for op in self.operators})

    def weights_of(self, ops: list[Operator]) -> int:
        """Bytes of the distinct constant buffers the operators ``ops`` read."""
        seen, total = set(), 0
        for op in ops:
            for t in op.inputs:
                if t < 0 or t >= len(self.tensors):
                    continue
                tensor = self.tensors[t]
                if tensor.constant and tensor.buffer not in seen:
                    seen.add(tensor.buffer)
                    total += tensor.nbytes
        return total



def _read_file(path: Path) -> bytearray:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise EdgeError(f"{path}: {kind}, expected a .tflite model file")
        buf = bytearray(path.read_bytes())
    except FileNotFoundError:
        raise EdgeError(f"{path}: model file not found") from None
    except PermissionError:
        raise EdgeError(f"{path}: cannot read model (permission denied)") from None
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read model ({exc.strerror})") from None
    if len(buf) < 16 or GetBufferIdentifier(buf, 0) != b"TFL3":
        raise EdgeError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    return buf


def _custom_options(op: fb_table.Table, buf: bytearray) -> dict:
    raw = read_bytes(op, OP_CUSTOM_OPTIONS)
    if not raw:
        offset = read_scalar(op, OP_LARGE_CUSTOM_OFFSET, N.Uint64Flags, 0)
        size = read_scalar(op, OP_LARGE_CUSTOM_SIZE, N.Uint64Flags, 0)
        if offset > 1 and size and offset + size <= len(buf):
            raw = bytes(buf[offset:offset + size])
    if not raw:
        return {}
    try:
        from flatbuffers import flexbuffers

        value = flexbuffers.Loads(raw)
    except Exception:  # options in another format, or a flexbuffers module without Loads
        return {}
    return value if isinstance(value, dict) else {}


def _conv_options(op: fb_table.Table, name: str) -> dict:
    slots = CONV_OPTION_SLOTS.get(name)
    off = op.Offset(OP_BUILTIN_OPTIONS) if slots else 0
    if not off:
        return {}
    options = table_at(op.Bytes, op.Indirect(off + op.Pos))
    return {key: read_scalar(options, slot, N.Int32Flags, 1) or 1
            for key, slot in zip(("stride_w", "stride_h", "dilation_w", "dilation_h"), slots)}


def _quantization(t: fb_table.Table) -> tuple[float, int]:
    off = t.Offset(TENSOR_QUANTIZATION)
    if not off:
        return 0.0, 0
    q = table_at(t.Bytes, t.Indirect(off + t.Pos))
    start, length = vector_span(q, QUANT_SCALE)
    scale = struct.unpack_from("<f", q.Bytes, start)[0] if length else 0.0
    start, length = vector_span(q, QUANT_ZERO_POINT)
    zero_point = struct.unpack_from("<q", q.Bytes, start)[0] if length else 0
    return float(scale), int(zero_point)


def _tensor_bytes(shape: tuple[int, ...], bits: int | None) -> tuple[int, bool]:
    """(bytes, dynamic) for a tensor of ``shape`` with ``bits`` per element."""
    if bits is None:
        return 0, True
    dynamic = any(d < 0 for d in shape)
    elements = math.prod(max(d, 1) for d in shape) if shape else 1
    return (elements * bits + 7) // 8, dynamic


def read_graph(path: str | Path) -> Graph:
    """Subgraph 0 of the ``.tflite`` at ``path``: tensors, operators in order, inputs and outputs.

    A file that is not a TFLite flatbuffer, is damaged, or uses operators no stock runtime has is
    one :class:`EdgeError` line naming the file.
    """
    path = Path(path)
    buf = _read_file(path)
    try:
        graph = _parse(path, buf)
    except EdgeError:
        raise
    except (IndexError, ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, struct.error,
            RecursionError, MemoryError) as exc:
        raise EdgeError(f"{path}: corrupt TFLite flatbuffer ({first_line(exc, 120, with_type=True)}); "
                        "re-export or re-download the model") from None
    if graph.unknown_ops:
        raise EdgeError(f"{path}: unknown operator{'s' if len(graph.unknown_ops) > 1 else ''} "
                        f"{', '.join(graph.unknown_ops)}: no stock TFLite runtime can run it")
    return graph


def _parse(path: Path, buf: bytearray) -> Graph:
    model = root_table(buf)
    names = builtin_operator_names()
    opcodes: list[tuple[str, bool]] = []
    unknown: list[str] = []
    for code in read_tables(model, MODEL_OPERATOR_CODES):
        builtin = max(read_scalar(code, OPCODE_DEPRECATED_BUILTIN, N.Int8Flags, 0),
                      read_scalar(code, OPCODE_BUILTIN, N.Int32Flags, 0))
        if builtin == CUSTOM_OPCODE:
            name = read_string(code, OPCODE_CUSTOM) or "CUSTOM"
            if name not in KNOWN_CUSTOM_OPS:
                unknown.append(f"{name} (custom)")
            opcodes.append((name, True))
        else:
            if names and builtin not in names:
                unknown.append(f"builtin code {builtin}")
            opcodes.append((names.get(builtin, f"BUILTIN_{builtin}"), False))

    buffers = read_tables(model, MODEL_BUFFERS)
    buffer_sizes = []
    for b in buffers:
        _, length = vector_span(b, BUFFER_DATA)
        if not length:
            offset = read_scalar(b, BUFFER_OFFSET, N.Uint64Flags, 0)
            size = read_scalar(b, BUFFER_SIZE, N.Uint64Flags, 0)
            length = size if offset > 1 else 0
        buffer_sizes.append(int(length))

    subgraphs = read_tables(model, MODEL_SUBGRAPHS)
    if not subgraphs:
        raise EdgeError(f"{path}: the model has no subgraph")
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(read_tables(sg, SUBGRAPH_TENSORS)):
        shape = tuple(int(d) for d in read_ints(t, TENSOR_SHAPE))
        type_code = read_scalar(t, TENSOR_TYPE, N.Int8Flags, 0)
        if type_code not in TENSOR_TYPES:
            raise ValueError(f"tensor {i} has unknown type code {type_code}")
        dtype, bits = TENSOR_TYPES[type_code]
        buffer = read_scalar(t, TENSOR_BUFFER, N.Uint32Flags, 0)
        if buffer >= max(1, len(buffers)):
            raise IndexError(f"tensor {i} names buffer {buffer} of {len(buffers)}")
        nbytes, dynamic = _tensor_bytes(shape, bits)
        constant = buffer > 0 and buffer_sizes[buffer] > 0
        if constant:
            nbytes, dynamic = buffer_sizes[buffer], False
        tensors.append(Tensor(i, read_string(t, TENSOR_NAME) or f"tensor_{i}", shape, dtype, nbytes, buffer,
                              constant, bool(read_scalar(t, TENSOR_VARIABLE, N.BoolFlags, 0)), dynamic,
                              quantization=_quantization(t)))
    count = len(tensors)

    def check(indices: tuple[int, ...], what: str) -> tuple[int, ...]:
        for index in indices:
            if not (index == OPTIONAL_TENSOR or 0 <= index < count):
                raise IndexError(f"{what} names tensor {index} of {count}")
        return indices

    operators = []
    for i, op in enumerate(read_tables(sg, SUBGRAPH_OPERATORS)):
        code = read_scalar(op, OP_OPCODE_INDEX, N.Uint32Flags, 0)
        if code >= len(opcodes):
            raise IndexError(f"operator {i} names operator code {code} of {len(opcodes)}")
        name, custom = opcodes[code]
        operators.append(Operator(i, name, check(read_ints(op, OP_INPUTS), f"operator {i}"),
                                  check(read_ints(op, OP_OUTPUTS), f"operator {i}"), custom,
                                  options=_custom_options(op, buf) if custom else _conv_options(op, name)))
    inputs = check(read_ints(sg, SUBGRAPH_INPUTS), "the graph's inputs")
    outputs = check(read_ints(sg, SUBGRAPH_OUTPUTS), "the graph's outputs")

    seen, weights = set(), 0
    for t in tensors:
        if t.constant and t.buffer not in seen:
            seen.add(t.buffer)
            weights += t.nbytes
    graph = Graph(path, len(buf), tensors, operators, inputs, outputs, len(subgraphs), weights,
                  sum(buffer_sizes), sorted(set(unknown)))
    _add_kernel_tensors(graph)
    return graph


def _add_kernel_tensors(graph: Graph) -> None:
    """What kernels add or resize at load time that the file does not carry (post-process op only)."""
    for op in graph.operators:
        if op.name != POSTPROCESS_OP or len(op.inputs) < 2 or len(op.outputs) < 4:
            continue
        boxes, scores = (graph.tensors[i] for i in op.inputs[:2])
        anchors = boxes.shape[1] if len(boxes.shape) == 3 else 0
        classes = scores.shape[2] if len(scores.shape) == 3 else 0
        detections = int(op.options.get("max_detections", 0) or 0) * int(
            op.options.get("max_classes_per_detection", 1) or 1)
        if detections:  # the op sizes its outputs itself: float32 [1,N,4], [1,N], [1,N], [1]
            for index, shape in zip(op.outputs[:4], ((1, detections, 4), (1, detections), (1, detections), (1,))):
                t = graph.tensors[index]
                t.shape, t.dtype, t.nbytes, t.dynamic = shape, "float32", 4 * math.prod(shape), False
        temporaries = []
        for name, shape in (("decoded_boxes", (anchors, 4)), ("scores", (anchors, classes))):
            index = len(graph.tensors)
            graph.tensors.append(Tensor(index, f"{POSTPROCESS_OP}/{name} (temporary)", shape, "float32",
                                        4 * math.prod(shape), 0, False, False, temporary=True))
            temporaries.append(index)
        op.temporaries = tuple(temporaries)


def with_builtin_temporaries(graph: Graph) -> Graph:
    """``graph`` plus the im2col buffer TFLite's own CONV_2D kernel adds (as a temporary of that op) when
    the filter is not 1x1 or the stride or dilation is not 1: ``[1, out_h, out_w, kh * kw * in_c]`` of the
    input's type. Under XNNPACK (LiteRT's default) those ops run in XNNPACK and have no such tensor."""
    from dataclasses import replace

    tensors = list(graph.tensors)
    operators = []
    for op in graph.operators:
        extra = ()
        if op.name == "CONV_2D" and len(op.inputs) >= 2 and op.outputs:
            inp, filt, out = (tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
            o = op.options
            if len(filt.shape) == 4 and len(out.shape) == 4 and len(inp.shape) == 4 and (
                    filt.shape[1:3] != (1, 1) or (o.get("stride_w", 1), o.get("stride_h", 1)) != (1, 1)
                    or (o.get("dilation_w", 1), o.get("dilation_h", 1)) != (1, 1)):
                shape = (out.shape[0], out.shape[1], out.shape[2], filt.shape[1] * filt.shape[2] * inp.shape[3])
                bits = next(b for n, b in TENSOR_TYPES.values() if n == inp.dtype)
                index = len(tensors)
                tensors.append(Tensor(index, f"{op.name}_{op.index}/im2col (temporary)", shape, inp.dtype,
                                      _tensor_bytes(shape, bits)[0], 0, False, False, temporary=True))
                extra = (index,)
        operators.append(replace(op, temporaries=op.temporaries + extra) if extra else op)
    return replace(graph, tensors=tensors, operators=operators)
