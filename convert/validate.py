"""Measure a converted model: file and gzip size, weight sparsity, invoke latency, mAP.

Everything here is measured on the ``.tflite`` file itself (not on the Keras model it came from),
so the numbers are what the board gets. Sizes in bytes; gzip at level 9, the way a pruned model
is shipped (the flatbuffer stores pruned zeros as zeros, only compression turns them into savings).
Latency is ``invoke()`` alone, after warm-up, with the runtime :func:`edge.backends.tflite.load_interpreter`
picks; on x86 int8 is not faster than float, ARM is where int8 pays.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_WEIGHT_OPS = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense",
               "TRANSPOSE_CONV": "Conv2DTranspose"}
_TENSOR_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8, 7: np.int16}


@dataclass
class Latency:
    median_ms: float
    p90_ms: float
    runs: int
    runtime: str
    note: str | None = None  # e.g. tflite-runtime has no int8 XNNPACK kernels

    def to_dict(self) -> dict:
        return {"median_ms": round(self.median_ms, 3), "p90_ms": round(self.p90_ms, 3), "runs": self.runs,
                "runtime": self.runtime, "note": self.note}


@dataclass
class ModelStats:
    path: str
    size_bytes: int
    gzip_bytes: int
    weights_gzip_bytes: int = 0  # gzip of the conv/dense filters alone
    sparsity: dict = field(default_factory=dict)  # {"overall": f, "by_kind": {...}} of the file's weights
    input: dict = field(default_factory=dict)  # dtype, shape, scale, zero_point
    operators: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": self.path, "size_bytes": self.size_bytes, "gzip_bytes": self.gzip_bytes,
                "weights_gzip_bytes": self.weights_gzip_bytes,
                "size_kib": round(self.size_bytes / 1024, 1), "gzip_kib": round(self.gzip_bytes / 1024, 1),
                "sparsity": self.sparsity, "input": self.input, "operators": self.operators}


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _filter_weights(model_bytes: bytes):
    """Yield ``(layer kind, values, zero value)`` for every conv / fully-connected filter in the file."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    seen: set[int] = set()
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            kind = _WEIGHT_OPS.get(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), ""))
            if kind is None or op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            if tensor.buffer in seen or tensor.buffer >= len(model.buffers):
                continue
            data = model.buffers[tensor.buffer].data
            dtype = _TENSOR_DTYPES.get(tensor.type)
            if data is None or dtype is None or len(data) == 0:
                continue  # produced at run time (e.g. a dequantized float16 weight)
            seen.add(tensor.buffer)
            values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype=dtype)
            zero = 0
            if tensor.quantization is not None and tensor.quantization.zeroPoint is not None \
                    and len(tensor.quantization.zeroPoint) == 1:
                zero = int(tensor.quantization.zeroPoint[0])
            yield kind, values, zero


def tflite_weight_sparsity(model_bytes: bytes) -> dict:
    """Fraction of zero weights in the conv / fully-connected filters stored in the file.

    A quantized weight counts as zero when it equals its zero point (0 for TFLite's symmetric int8
    weights). Returns ``{"overall": f, "by_kind": {kind: f}, "weights": n}``.
    """
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    for kind, values, zero in _filter_weights(model_bytes):
        zeros[kind] = zeros.get(kind, 0) + int(np.count_nonzero(values == zero))
        totals[kind] = totals.get(kind, 0) + int(values.size)
    total = sum(totals.values())
    return {"overall": round(sum(zeros.values()) / total, 4) if total else 0.0,
            "by_kind": {k: round(zeros[k] / totals[k], 4) for k in sorted(totals)}, "weights": total}


def filter_weights_gzip_bytes(model_bytes: bytes) -> int:
    """gzip size of the filter weights alone: what pruning can save, without the per-channel
    quantization parameters, biases and graph structure that every int8 file also carries."""
    blob = b"".join(values.tobytes() for _, values, _ in _filter_weights(model_bytes))
    return gzip_size(blob)


def model_stats(path: str | Path) -> ModelStats:
    from ai_edge_litert.interpreter import Interpreter

    from edge.contract.tflite_file import read_tflite

    path = Path(path)
    data = path.read_bytes()
    detail = Interpreter(model_content=data).get_input_details()[0]
    scale, zero_point = detail["quantization"]
    return ModelStats(
        path=str(path), size_bytes=len(data), gzip_bytes=gzip_size(data),
        weights_gzip_bytes=filter_weights_gzip_bytes(data), sparsity=tflite_weight_sparsity(data),
        input={"dtype": np.dtype(detail["dtype"]).name, "shape": [int(v) for v in detail["shape"]],
               "scale": float(scale), "zero_point": int(zero_point)},
        operators=read_tflite(path).operators,
    )


def measure_latency(path: str | Path, runs: int = 50, warmup: int = 5, num_threads: int | None = None,
                    runtime: str | None = None) -> Latency:
    """Median and 90th-percentile ``invoke()`` time in ms on a fixed random input."""
    from edge.backends.tflite import load_interpreter

    interpreter, info = load_interpreter(path, runtime, num_threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        image = rng.uniform(0, 255, detail["shape"]).astype(np.float32)
    else:
        image = rng.integers(0, 256, detail["shape"]).astype(dtype) if dtype == np.uint8 else \
            rng.integers(-128, 128, detail["shape"]).astype(dtype)
    interpreter.set_tensor(detail["index"], image)
    for _ in range(warmup):
        interpreter.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times[i] = (time.perf_counter() - start) * 1000.0
    return Latency(float(np.median(times)), float(np.percentile(times, 90)), runs, info.describe(), info.note)
