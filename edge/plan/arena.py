"""The tensor arena of a ``.tflite`` graph (:mod:`edge.plan.graph`), planned as TFLite plans it.

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

from dataclasses import dataclass, field

from edge.plan.graph import OPTIONAL_TENSOR, Graph, Tensor, with_builtin_temporaries

TENSOR_ALIGNMENT = 64  # TFLite's kDefaultTensorAlignment

# Kernels that may give their first output an input's buffer (TfLiteRegistration.inplace_operator):
# op -> (inputs that may be shared, data unmodified). Measured against LiteRT 2.x by tensor addresses.
INPLACE_OPS: dict[str, tuple[tuple[int, ...], bool]] = {
    "RESHAPE": ((0,), True), "SQUEEZE": ((0,), True), "EXPAND_DIMS": ((0,), True), "BITCAST": ((0,), True),
    "ADD": ((0, 1), False), "SUB": ((0, 1), False), "MUL": ((0, 1), False), "DIV": ((0, 1), False),
    "SOFTMAX": ((0,), False), "DYNAMIC_UPDATE_SLICE": ((0,), False),
}
_SCALAR_BYTES = 4  # an input this small is never shared for a data-changing op (broadcast not resolved yet)


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
