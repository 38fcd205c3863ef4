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

from convert.tflite_edit import filter_weights


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


def tflite_weight_sparsity(model_bytes: bytes) -> dict:
    """Fraction of zero weights in the conv / fully-connected filters stored in the file.

    A quantized weight counts as zero when it equals its zero point (0 for TFLite's symmetric int8
    weights). Returns ``{"overall": f, "by_kind": {kind: f}, "weights": n}``.
    """
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    for kind, values, zero in filter_weights(model_bytes):
        zeros[kind] = zeros.get(kind, 0) + int(np.count_nonzero(values == zero))
        totals[kind] = totals.get(kind, 0) + int(values.size)
    total = sum(totals.values())
    return {"overall": round(sum(zeros.values()) / total, 4) if total else 0.0,
            "by_kind": {k: round(zeros[k] / totals[k], 4) for k in sorted(totals)}, "weights": total}


def filter_weights_gzip_bytes(model_bytes: bytes) -> int:
    """gzip size of the filter weights alone: what pruning can save, without the per-channel
    quantization parameters, biases and graph structure that every int8 file also carries."""
    blob = b"".join(values.tobytes() for _, values, _ in filter_weights(model_bytes))
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

    interpreter, info = load_interpreter(path, runtime, num_threads, allocate=True)
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
