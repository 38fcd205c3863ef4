"""Operators, opsets and weight sizes of an ``.onnx`` file, read by a small protobuf reader: the board
needs neither the ``onnx`` package nor TensorFlow to say what a model holds. Only the message
headers of the memory-mapped file are read; the weights are skipped, not copied.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

# ONNX TensorProto.DataType -> bytes per element (strings and unknown types count 0)
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 17: 1,
                  18: 1, 19: 1, 20: 1}


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf, start: int, end: int):
    """``(field number, wire type, value or start, end)`` of a protobuf message in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, None
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("length past the end")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            yield number, wire, pos, None
            pos += 8
        elif wire == 5:
            yield number, wire, pos, None
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("truncated message")


def _tensor_bytes(buf, start: int, end: int) -> int:
    """Size of a TensorProto's data from its dims and data type (the data itself is not read)."""
    dims, data_type = [], 0
    for number, wire, value, stop in _fields(buf, start, end):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:
            pos = value
            while pos < stop:
                dim, pos = _varint(buf, pos)
                dims.append(dim)
        elif number == 2 and wire == 0:
            data_type = value
    return int(np.prod(dims, dtype=np.int64)) * _ELEMENT_BYTES.get(data_type, 0) if dims else \
        _ELEMENT_BYTES.get(data_type, 0)


def scan_onnx(path: str | Path) -> dict:
    """``{"operators": [op types of the main graph], "weights_bytes": initializer bytes, "opsets": {domain: v}}``.

    Reads only the message headers of the memory-mapped file (weights are skipped, not copied).
    """
    operators, weights, opsets = set(), 0, {}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for number, wire, start, end in _fields(buf, 0, len(buf)):
            if number == 8 and wire == 2:  # opset_import {domain = 1, version = 2}
                domain, version = "", 0
                for n, w, v, e in _fields(buf, start, end):
                    if n == 1 and w == 2:
                        domain = bytes(buf[v:e]).decode("utf-8", "replace")
                    elif n == 2 and w == 0:
                        version = v
                opsets[domain or "ai.onnx"] = version
            if number != 7 or wire != 2:  # graph
                continue
            for field, kind, s, e in _fields(buf, start, end):
                if field == 1 and kind == 2:  # node {op_type = 4}
                    for n, w, v, stop in _fields(buf, s, e):
                        if n == 4 and w == 2:
                            operators.add(bytes(buf[v:stop]).decode("utf-8", "replace"))
                elif field == 5 and kind == 2:  # initializer (TensorProto)
                    weights += _tensor_bytes(buf, s, e)
    return {"operators": sorted(operators), "weights_bytes": weights, "opsets": opsets}
