"""``edge convert SOURCE --format onnx -o model.onnx``: the float network, its anchors, box decoding and NMS
in one ONNX graph that ONNX Runtime runs with fixed-shape, preallocated outputs.

:func:`export_onnx` puts the graph together: ``image`` (uint8 raw pixels) and the network, by
tf2onnx (:mod:`convert.onnx_network`), then the post-process tail, by the ``onnx.helper`` API
(:mod:`convert.onnx_tail`), whose outputs are those of ``TFLite_Detection_PostProcess``. Labels,
anchors, normalisation and provenance travel as ``metadata_props["edgekit"]``: the same JSON the
TFLite metadata carries (:meth:`edge.contract.modelinfo.ModelInfo.to_json`).

Before anything is written, :func:`convert.onnx_parity.check_parity` compares ONNX Runtime (CPU)
with the float TFLite model; :func:`model_stats` and :func:`measure_latency` measure the file for
the report.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np

from convert.onnx_network import OPSET, import_onnx_tool, network_onnx
from convert.onnx_tail import append_postprocess
from edge.contract.tflite_file import METADATA_NAME
from edge.errors import EdgeError, first_line

METADATA_KEY = METADATA_NAME  # "edgekit", as in the TFLite metadata
ONNX_DISTS = ("tf2onnx", "onnx", "onnxruntime")


# ---------------------------------------------------------------- the whole export

def export_onnx(source, info, postprocess) -> bytes:
    """The ONNX bytes for ``source``: network, tail, metadata; checked by ``onnx.checker`` (EdgeError if not)."""
    onnx = import_onnx_tool("onnx")
    from onnx import helper

    model, anchors = network_onnx(source)
    append_postprocess(model, anchors, source.head.op_attributes(postprocess))
    model.producer_name = "edgekit"
    model.doc_string = "SSD detector exported by edge convert --format onnx"
    del model.metadata_props[:]
    helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise EdgeError(f"the exported ONNX graph does not pass onnx.checker ({first_line(exc, 240)})") from exc
    return model.SerializeToString()


def onnx_provenance(provenance: dict) -> dict:
    """``provenance`` with the format, opset and the ONNX tools' versions added."""
    from edge.provenance import package_versions

    versions = dict(provenance.get("versions", {}))
    versions.update(package_versions(ONNX_DISTS, installed_only=False))
    return dict(provenance, versions=versions, format="onnx", opset=OPSET)


# ---------------------------------------------------------------- measuring the file

def model_stats(path: str | Path):
    """:class:`convert.validate.ModelStats` of an ``.onnx`` file (size, gzip, weight sparsity, input, ops)."""
    onnx = import_onnx_tool("onnx")
    from onnx import numpy_helper

    from convert.validate import ModelStats, gzip_size

    path = Path(path)
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    weights = {i.name: i for i in model.graph.initializer}
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    filters = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weights:
            values = numpy_helper.to_array(weights[node.input[1]])
            kind = "DepthwiseConv" if node.op_type == "Conv" and any(
                a.name == "group" and a.i > 1 for a in node.attribute) else node.op_type
            zeros[kind] = zeros.get(kind, 0) + int(np.count_nonzero(values == 0))
            totals[kind] = totals.get(kind, 0) + int(values.size)
            filters.append(values.tobytes())
    total = sum(totals.values())
    image = model.graph.input[0]
    shape = [d.dim_value for d in image.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type)
    return ModelStats(
        path=str(path), size_bytes=len(data), gzip_bytes=gzip_size(data),
        weights_gzip_bytes=len(gzip.compress(b"".join(filters), compresslevel=9, mtime=0)),
        sparsity={"overall": round(sum(zeros.values()) / total, 4) if total else 0.0,
                  "by_kind": {k: round(zeros[k] / totals[k], 4) for k in sorted(totals)}, "weights": total},
        input={"dtype": np.dtype(dtype).name, "shape": shape, "scale": 0.0, "zero_point": 0},
        operators=sorted({n.op_type for n in model.graph.node}),
    )


def cpu_backend(path: str | Path, num_threads: int | None = None):
    """The ONNX model on ONNX Runtime's CPU provider (what the gate and the report compare)."""
    from edge.backends import open_backend

    return open_backend(path, "onnxruntime", num_threads, providers=("cpu",))


def measure_latency(path: str | Path, runs: int = 50, warmup: int = 5, num_threads: int | None = None):
    """Median and 90th-percentile ``invoke()`` in ms on ONNX Runtime's CPU provider, random pixels."""
    from convert.validate import Latency

    backend = cpu_backend(path, num_threads)
    backend.view(backend.image)()[...] = np.random.default_rng(0).integers(0, 256, backend.image.shape, np.uint8)
    for _ in range(warmup):
        backend.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        backend.invoke()
        times[i] = (time.perf_counter() - start) * 1000.0
    return Latency(float(np.median(times)), float(np.percentile(times, 90)), runs, backend.info.describe(),
                   backend.info.note)
