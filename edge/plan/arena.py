"""A ``.tflite`` graph read from the flatbuffer alone, and its tensor arena planned as TFLite plans it.

Nothing here loads a runtime, OpenCV or TensorFlow: the file is parsed with the small ``flatbuffers``
runtime and hand-kept vtable slots (schema: ``tensorflow/compiler/mlir/lite/schema/schema.fbs``, the
same approach as :mod:`edge.contract.tflite_file`), so it works beside every runtime, including
tflite-runtime, which ships no generated schema, and on a desktop with no runtime at all.

The plan follows TFLite's ``ArenaPlanner`` and ``SimpleMemoryArena`` (read for understanding, not
copied), for subgraph 0 in operator order:

- a tensor is *constant* when its buffer holds data: it is a weight, mapped from the file, never in
  the arena; a *variable* (``is_variable``) lives in the persistent arena for the whole run;
- every other tensor is planned: it lives from the operator that produces it to the last operator
  that reads it (both ends inclusive: an op's inputs and outputs coexist). The graph's inputs are
  allocated before the first operator and, like its outputs, never freed;
- ops whose kernels may write in place (RESHAPE, SQUEEZE, EXPAND_DIMS, BITCAST without touching the
  data; ADD, SUB, MUL, DIV, SOFTMAX, DYNAMIC_UPDATE_SLICE when the input has no other reader and
  the same size) give their output the input's buffer, which then lives as long as either does;
- ``TFLite_Detection_PostProcess`` adds its two float temporaries (decoded boxes, dequantized
  scores), alive during that op only, and sizes its outputs from its options;
- tensors that live for the whole run go first, by index; the rest by size, largest first (ties: the
  earlier producer first); each is placed in the *smallest* gap between the already placed tensors
  whose lifetimes overlap its own that fits it at a 64-byte aligned offset, else after the last of
  them. The arena's size is the highest end reached.

Other kernels' private scratch tensors (a builtin CONV_2D's im2col buffer, for one) are not in the
file and not planned: :mod:`edge.plan.predict` says where that matters (it does not under XNNPACK,
which runs those ops itself).
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

from edge.errors import EdgeError, first_line

TENSOR_ALIGNMENT = 64  # TFLite's kDefaultTensorAlignment
POSTPROCESS_OP = "TFLite_Detection_PostProcess"

# vtable slots (4 + 2 * field index) of the tables read here; a union takes two fields (type, value).
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 6, 8, 12
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS, _SUBGRAPH_NAME = 4, 6, 8, 10, 12
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_QUANTIZATION, _TENSOR_VARIABLE = 4, 6, 8, 10, 12, 14
_QUANT_SCALE, _QUANT_ZERO_POINT = 8, 10
_OP_OPCODE_INDEX, _OP_INPUTS, _OP_OUTPUTS, _OP_BUILTIN_OPTIONS, _OP_CUSTOM_OPTIONS = 4, 6, 8, 12, 14
_OP_LARGE_CUSTOM_OFFSET, _OP_LARGE_CUSTOM_SIZE = 22, 24
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_CUSTOM, _OPCODE_BUILTIN = 4, 6, 10
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 4, 6, 8
_CUSTOM_OPCODE = 32
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127  # deprecated_builtin_code when the real code is in builtin_code
OPTIONAL_TENSOR = -1

# TensorType -> (name, bits per element); None: sized at run time (strings, resources, variants).
TENSOR_TYPES: dict[int, tuple[str, int | None]] = {
    0: ("float32", 32), 1: ("float16", 16), 2: ("int32", 32), 3: ("uint8", 8), 4: ("int64", 64),
    5: ("string", None), 6: ("bool", 8), 7: ("int16", 16), 8: ("complex64", 64), 9: ("int8", 8),
    10: ("float64", 64), 11: ("complex128", 128), 12: ("uint64", 64), 13: ("resource", None),
    14: ("variant", None), 15: ("uint32", 32), 16: ("uint16", 16), 17: ("int4", 4), 18: ("bfloat16", 16),
    19: ("int2", 2), 20: ("uint4", 4),
}

# Kernels that may give their first output an input's buffer (TfLiteRegistration.inplace_operator):
# op -> (inputs that may be shared, data unmodified). Measured against LiteRT 2.x by tensor addresses.
INPLACE_OPS: dict[str, tuple[tuple[int, ...], bool]] = {
    "RESHAPE": ((0,), True), "SQUEEZE": ((0,), True), "EXPAND_DIMS": ((0,), True), "BITCAST": ((0,), True),
    "ADD": ((0, 1), False), "SUB": ((0, 1), False), "MUL": ((0, 1), False), "DIV": ((0, 1), False),
    "SOFTMAX": ((0,), False), "DYNAMIC_UPDATE_SLICE": ((0,), False),
}
_SCALAR_BYTES = 4  # an input this small is never shared for a data-changing op (broadcast not resolved yet)

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


@dataclass
class Allocation:
    tensor: int
    offset: int
    size: int
    first: int  # operator index; 0 for graph inputs and variables
    last: int  # operator index; LIVES_FOREVER for graph inputs and outputs


LIVES_FOREVER = 2**31 - 1


@dataclass
class ArenaPlan:
    """Where each planned tensor sits in the arena, and the sizes that follow."""

    size: int  # the arena's high-water mark (bytes)
    persistent: int  # variables (persistent arena)
    allocations: dict[int, Allocation]  # tensor index -> placement (shared tensors: their root's)
    shared: dict[int, int]  # tensor index -> tensor whose buffer it uses in place
    planned_bytes: int  # sum of the planned tensors' sizes: the arena with no reuse at all
    peak_live: int  # the most bytes alive at once: a lower bound no placement can beat
    dynamic: list[int] = field(default_factory=list)  # tensors sized at run time (not planned)
    alignment: int = TENSOR_ALIGNMENT

    def offset_of(self, tensor: int) -> int | None:
        root = self.shared.get(tensor, tensor)
        alloc = self.allocations.get(root)
        return alloc.offset if alloc is not None else None


# ---- reading ------------------------------------------------------------------------------------

def _u32(buf: bytearray, pos: int) -> int:
    return N.UOffsetTFlags.py_type(int.from_bytes(buf[pos:pos + 4], "little"))


def _table(buf: bytearray, pos: int) -> fb_table.Table:
    if not 0 <= pos < len(buf):
        raise IndexError(f"table offset {pos} outside the file")
    return fb_table.Table(buf, pos)


def _vector_len(tab: fb_table.Table, slot: int) -> tuple[int, int]:
    off = tab.Offset(slot)
    if not off:
        return 0, 0
    start = tab.Vector(off)
    length = tab.VectorLen(off)
    if start < 0 or start + length > len(tab.Bytes):
        raise IndexError(f"vector of {length} at {start} runs past the end of the file")
    return start, length


def _vector_tables(tab: fb_table.Table, slot: int) -> list[fb_table.Table]:
    start, length = _vector_len(tab, slot)
    if start + 4 * length > len(tab.Bytes):
        raise IndexError("table vector runs past the end of the file")
    return [_table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(length)]


def _int_vector(tab: fb_table.Table, slot: int) -> tuple[int, ...]:
    start, length = _vector_len(tab, slot)
    if start + 4 * length > len(tab.Bytes):
        raise IndexError("int vector runs past the end of the file")
    return struct.unpack_from(f"<{length}i", tab.Bytes, start) if length else ()


def _string(tab: fb_table.Table, slot: int) -> str | None:
    off = tab.Offset(slot)
    return tab.String(off + tab.Pos).decode("utf-8", "replace") if off else None


def _scalar(tab: fb_table.Table, slot: int, flags, default: int) -> int:
    off = tab.Offset(slot)
    return tab.Get(flags, off + tab.Pos) if off else default


def _byte_vector(tab: fb_table.Table, slot: int) -> bytes:
    start, length = _vector_len(tab, slot)
    return bytes(tab.Bytes[start:start + length])


def builtin_operator_names() -> dict[int, str]:
    """``{builtin code: name}`` from a generated schema where a runtime ships one, else {}."""
    from edge.contract.tflite_file import builtin_operator_names as names

    return names()


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
    raw = _byte_vector(op, _OP_CUSTOM_OPTIONS)
    if not raw:
        offset = _scalar(op, _OP_LARGE_CUSTOM_OFFSET, N.Uint64Flags, 0)
        size = _scalar(op, _OP_LARGE_CUSTOM_SIZE, N.Uint64Flags, 0)
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


# Conv2DOptions / DepthwiseConv2DOptions: (stride_w, stride_h, dilation_w, dilation_h) slots
_CONV_OPTION_SLOTS = {"CONV_2D": (6, 8, 12, 14), "DEPTHWISE_CONV_2D": (6, 8, 14, 16)}


def _conv_options(op: fb_table.Table, name: str) -> dict:
    slots = _CONV_OPTION_SLOTS.get(name)
    off = op.Offset(_OP_BUILTIN_OPTIONS) if slots else 0
    if not off:
        return {}
    options = _table(op.Bytes, op.Indirect(off + op.Pos))
    return {key: _scalar(options, slot, N.Int32Flags, 1) or 1
            for key, slot in zip(("stride_w", "stride_h", "dilation_w", "dilation_h"), slots)}


def _quantization(t: fb_table.Table) -> tuple[float, int]:
    off = t.Offset(_TENSOR_QUANTIZATION)
    if not off:
        return 0.0, 0
    q = _table(t.Bytes, t.Indirect(off + t.Pos))
    start, length = _vector_len(q, _QUANT_SCALE)
    scale = struct.unpack_from("<f", q.Bytes, start)[0] if length else 0.0
    start, length = _vector_len(q, _QUANT_ZERO_POINT)
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
    model = _table(buf, _u32(buf, 0))
    names = builtin_operator_names()
    opcodes: list[tuple[str, bool]] = []
    unknown: list[str] = []
    for code in _vector_tables(model, _MODEL_OPERATOR_CODES):
        builtin = max(_scalar(code, _OPCODE_DEPRECATED_BUILTIN, N.Int8Flags, 0),
                      _scalar(code, _OPCODE_BUILTIN, N.Int32Flags, 0))
        if builtin == _CUSTOM_OPCODE:
            name = _string(code, _OPCODE_CUSTOM) or "CUSTOM"
            if name not in KNOWN_CUSTOM_OPS:
                unknown.append(f"{name} (custom)")
            opcodes.append((name, True))
        else:
            if names and builtin not in names:
                unknown.append(f"builtin code {builtin}")
            opcodes.append((names.get(builtin, f"BUILTIN_{builtin}"), False))

    buffers = _vector_tables(model, _MODEL_BUFFERS)
    buffer_sizes = []
    for b in buffers:
        _, length = _vector_len(b, _BUFFER_DATA)
        if not length:
            offset = _scalar(b, _BUFFER_OFFSET, N.Uint64Flags, 0)
            size = _scalar(b, _BUFFER_SIZE, N.Uint64Flags, 0)
            length = size if offset > 1 else 0
        buffer_sizes.append(int(length))

    subgraphs = _vector_tables(model, _MODEL_SUBGRAPHS)
    if not subgraphs:
        raise EdgeError(f"{path}: the model has no subgraph")
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(_vector_tables(sg, _SUBGRAPH_TENSORS)):
        shape = tuple(int(d) for d in _int_vector(t, _TENSOR_SHAPE))
        type_code = _scalar(t, _TENSOR_TYPE, N.Int8Flags, 0)
        if type_code not in TENSOR_TYPES:
            raise ValueError(f"tensor {i} has unknown type code {type_code}")
        dtype, bits = TENSOR_TYPES[type_code]
        buffer = _scalar(t, _TENSOR_BUFFER, N.Uint32Flags, 0)
        if buffer >= max(1, len(buffers)):
            raise IndexError(f"tensor {i} names buffer {buffer} of {len(buffers)}")
        nbytes, dynamic = _tensor_bytes(shape, bits)
        constant = buffer > 0 and buffer_sizes[buffer] > 0
        if constant:
            nbytes, dynamic = buffer_sizes[buffer], False
        tensors.append(Tensor(i, _string(t, _TENSOR_NAME) or f"tensor_{i}", shape, dtype, nbytes, buffer,
                              constant, bool(_scalar(t, _TENSOR_VARIABLE, N.BoolFlags, 0)), dynamic,
                              quantization=_quantization(t)))
    count = len(tensors)

    def check(indices: tuple[int, ...], what: str) -> tuple[int, ...]:
        for index in indices:
            if not (index == OPTIONAL_TENSOR or 0 <= index < count):
                raise IndexError(f"{what} names tensor {index} of {count}")
        return indices

    operators = []
    for i, op in enumerate(_vector_tables(sg, _SUBGRAPH_OPERATORS)):
        code = _scalar(op, _OP_OPCODE_INDEX, N.Uint32Flags, 0)
        if code >= len(opcodes):
            raise IndexError(f"operator {i} names operator code {code} of {len(opcodes)}")
        name, custom = opcodes[code]
        operators.append(Operator(i, name, check(_int_vector(op, _OP_INPUTS), f"operator {i}"),
                                  check(_int_vector(op, _OP_OUTPUTS), f"operator {i}"), custom,
                                  options=_custom_options(op, buf) if custom else _conv_options(op, name)))
    inputs = check(_int_vector(sg, _SUBGRAPH_INPUTS), "the graph's inputs")
    outputs = check(_int_vector(sg, _SUBGRAPH_OUTPUTS), "the graph's outputs")

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


# ---- planning -----------------------------------------------------------------------------------

def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def lifetimes(graph: Graph, *, inplace: bool = True) -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """``({tensor: (first op, last op)}, {tensor: root it shares a buffer with})`` for planned tensors.

    Follows TFLite's reference counting: graph outputs and inputs get one extra reference (never
    freed), inputs and variables are allocated at op 0, op outputs at their op, and a tensor is freed
    at the op that drops its last reference; outputs nobody reads are never freed.
    """
    tensors = graph.tensors
    refs = [0] * len(tensors)
    first: dict[int, int] = {}
    last: dict[int, int] = {}

    def planned(index: int) -> bool:
        if index == OPTIONAL_TENSOR:
            return False
        t = tensors[index]
        return not t.constant and not t.dynamic

    for index in graph.outputs:
        if index != OPTIONAL_TENSOR:
            refs[index] += 1
    for t in tensors:
        if t.variable and planned(t.index):
            refs[t.index] += 1
            first.setdefault(t.index, 0)
    for index in graph.inputs:
        if index != OPTIONAL_TENSOR:
            refs[index] += 1
            if planned(index):
                first.setdefault(index, 0)
    base_refs = list(refs)
    for op in graph.operators:
        for index in op.inputs:
            if index != OPTIONAL_TENSOR:
                refs[index] += 1

    shared: dict[int, int] = {}
    if inplace:
        graph_inputs, graph_outputs = set(graph.inputs), set(graph.outputs)

        def root(index: int) -> int:
            return shared.get(index, index)

        for op in graph.operators:
            rule = INPLACE_OPS.get(op.name)
            if rule is None or not op.outputs or op.outputs[0] == OPTIONAL_TENSOR:
                continue
            shareable, unmodified = rule
            out = op.outputs[0]
            chosen = -1
            for position in shareable:
                if position >= len(op.inputs) or op.inputs[position] == OPTIONAL_TENSOR:
                    continue
                inp = op.inputs[position]
                a, b = tensors[inp], tensors[out]
                if not unmodified and (a.nbytes != b.nbytes or a.nbytes <= _SCALAR_BYTES or refs[inp] > 1):
                    continue
                if inp in graph_inputs or out in graph_outputs:
                    continue
                if not planned(inp) or not planned(out) or a.variable or b.variable:
                    continue
                chosen = inp
                break
            if chosen < 0:
                continue
            target = root(chosen)
            if not unmodified and refs[target] > 1:
                continue
            shared[out] = target

    counts = list(base_refs)
    for op in graph.operators:
        for index in op.inputs:
            if index != OPTIONAL_TENSOR:
                counts[shared.get(index, index)] += 1
    for i, op in enumerate(graph.operators):
        for index in op.outputs:
            if index != OPTIONAL_TENSOR and planned(index):
                first.setdefault(index, i)
        for index in op.inputs:
            if index == OPTIONAL_TENSOR:
                continue
            index = shared.get(index, index)
            counts[index] -= 1
            if counts[index] == 0 and index in first and index not in last:
                last[index] = i
        for index in op.temporaries:
            first[index] = last[index] = i
    spans = {index: (start, last.get(index, LIVES_FOREVER)) for index, start in first.items()}
    return spans, shared


KERNELS_XNNPACK, KERNELS_BUILTIN = "xnnpack", "builtin"


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


def plan_arena(graph: Graph, *, alignment: int = TENSOR_ALIGNMENT, inplace: bool = True,
               kernels: str = KERNELS_XNNPACK) -> ArenaPlan:
    """Place every planned tensor as TFLite's arena planner does; see the module docstring.

    ``kernels="builtin"`` also plans the scratch tensors TFLite's own kernels add (CONV_2D's im2col,
    see :func:`with_builtin_temporaries`): the arena of an interpreter without XNNPACK.
    """
    if kernels == KERNELS_BUILTIN:
        graph = with_builtin_temporaries(graph)
    spans, shared = lifetimes(graph, inplace=inplace)
    tensors = graph.tensors
    rw = [i for i in spans if not tensors[i].variable and i not in shared]
    persistent = sum(_align(tensors[i].nbytes, alignment) for i in spans if tensors[i].variable)

    def key(index: int):
        start, end = spans[index]
        whole_run = start == 0 and end == LIVES_FOREVER
        return (0, index, 0) if whole_run else (1, -tensors[index].nbytes, start)

    placed: list[Allocation] = []  # sorted by offset
    allocations: dict[int, Allocation] = {}
    high = 0
    for index in sorted(rw, key=key):
        size = tensors[index].nbytes
        start, end = spans[index]
        alloc = Allocation(index, 0, size, start, end)
        allocations[index] = alloc
        if size == 0:
            continue
        best, best_fit, current = None, None, 0
        for other in placed:
            if other.last < start or other.first > end:
                continue  # lifetimes do not overlap
            aligned = _align(current, alignment)
            if aligned + size <= other.offset and (best_fit is None or other.offset - aligned < best_fit):
                best, best_fit = aligned, other.offset - current
            current = max(current, other.offset + other.size)
            if best_fit == 0:
                break
        alloc.offset = best if best is not None else _align(current, alignment)
        high = max(high, alloc.offset + size)
        position = len(placed)
        while position > 0 and placed[position - 1].offset > alloc.offset:
            position -= 1
        placed.insert(position, alloc)
    planned_bytes = sum(tensors[i].nbytes for i in rw)
    return ArenaPlan(high, persistent, allocations, shared, planned_bytes, _peak_live(rw, spans, tensors),
                     [t.index for t in tensors if t.dynamic and not t.constant], alignment)


def _peak_live(indices: list[int], spans: dict[int, tuple[int, int]], tensors: list[Tensor]) -> int:
    events: dict[int, int] = {}
    for index in indices:
        start, end = spans[index]
        events[start] = events.get(start, 0) + tensors[index].nbytes
        if end != LIVES_FOREVER:
            events[end + 1] = events.get(end + 1, 0) - tensors[index].nbytes
    live = peak = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak
