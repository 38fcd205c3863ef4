"""The ONNX Runtime backend: an ``.onnx`` model on TensorRT, CUDA or the CPU, buffers bound once.

Every input and output is a numpy array allocated in the constructor and bound with IOBinding
(``bind_input`` / ``bind_output`` on its memory); :meth:`OnnxRuntimeBackend.invoke` is one
``run_with_iobinding`` call, so per frame nothing is allocated on the Python side and ONNX Runtime
writes the outputs straight into the arrays :meth:`view` hands out. That needs fixed output
shapes: ``edge convert --format onnx`` pads ``NonMaxSuppression``'s variable selection to
``[1, N, ...]`` with ``count`` the number valid (a model with a variable-shape output is refused,
naming it).

Execution providers (``providers``, e.g. ``("tensorrt", "cuda", "cpu")``): the order is the
preference; ONNX Runtime places each node on the first that supports it. The default is every
installed one, best first. A provider that is not installed is one line naming what is missing and
how to install it; the backend falls back only to providers the list names
(:mod:`edge.backends.onnx_providers`).

TensorRT options (ONNX Runtime's documented ``trt_*`` provider options): an engine cache directory
(the first run builds the engine, which takes minutes on a Jetson; later starts load it), FP16, and
INT8 with a calibration table that :func:`~edge.backends.tensorrt.write_tensorrt_calibration` makes
from images on the CPU (ONNX Runtime's own calibrator; it needs the ``onnx`` package).

Operators and weight sizes are read from the file by a small protobuf reader
(:func:`~edge.backends.onnx_file.scan_onnx`): the board needs neither the ``onnx`` package nor
TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, BackendInfo, TensorSpec
from edge.backends.onnx_file import scan_onnx
from edge.backends.onnx_providers import (PROVIDERS, available_text, choose_providers, import_onnxruntime,
                                         parse_providers)
from edge.backends.tensorrt import default_trt_cache, prepare_tensorrt
from edge.contract.modelinfo import HEAD_POSTPROCESS, ModelInfo, read_sidecar, sidecar_path
from edge.contract.tflite_file import METADATA_NAME
from edge.errors import EdgeError, first_line
from edge.provenance import usable_cores

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def _shape(arg, role: str, model_path: Path) -> tuple[int, ...]:
    """A NodeArg's shape with a symbolic batch taken as 1; any other variable dimension is refused."""
    dims = []
    for i, dim in enumerate(arg.shape or []):
        if isinstance(dim, int) and dim >= 0:
            dims.append(dim)
        elif i == 0:
            dims.append(1)
        else:
            raise EdgeError(f"{model_path}: {role} {arg.name!r} has a variable shape {list(arg.shape)}; edgekit binds "
                            "fixed-size buffers once (export with edge convert --format onnx, which pads NMS to "
                            "[1, N, ...])")
    return tuple(dims)


class OnnxRuntimeBackend(Backend):
    """An ``.onnx`` model on ONNX Runtime with every input and output bound once to a numpy array.

    ``providers``: names from :data:`~edge.backends.onnx_providers.PROVIDERS` in preference order
    (None: every installed one, best first). ``trt_cache_dir``, ``trt_fp16``, ``trt_int8`` and
    ``calib`` (images for the INT8 calibration table, made once into the cache directory) apply to
    the TensorRT provider.
    """

    def __init__(self, model_path: str | Path, num_threads: int | None = None, *, providers=None,
                 trt_cache_dir: str | Path | None = None, trt_fp16: bool = False, trt_int8: bool = False,
                 calib: str | Path | None = None) -> None:
        ort = import_onnxruntime()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise EdgeError(f"{self.model_path}: no such model file")
        threads = num_threads or usable_cores()
        if threads < 1:
            raise EdgeError(f"--threads {num_threads}: must be at least 1")
        requested = None if providers is None else parse_providers(
            providers if isinstance(providers, str) else ",".join(providers))
        available = ort.get_available_providers()
        names, warnings = choose_providers(requested, available)
        notes: list[str] = []
        provider_options = [{} for _ in names]
        if "tensorrt" in names:
            cache = Path(trt_cache_dir) if trt_cache_dir else default_trt_cache(self.model_path)
            provider_options[names.index("tensorrt")] = prepare_tensorrt(self.model_path, cache, trt_fp16, trt_int8,
                                                                         calib, notes)
        elif trt_fp16 or trt_int8 or trt_cache_dir or calib:
            warnings.append(f"TensorRT options ignored: the tensorrt provider is not in use "
                            f"({available_text(available)})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
        # What it was opened with, as given: reopening with these (other thread counts) makes the same session.
        self.options = {"providers": requested, "trt_cache_dir": trt_cache_dir, "trt_fp16": trt_fp16,
                        "trt_int8": trt_int8, "calib": calib}
        #: ``{ONNX Runtime provider name: options}`` as passed to the session, in preference order.
        self.requested_provider_options = {PROVIDERS[n]: dict(o) for n, o in zip(names, provider_options)}
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=[PROVIDERS[n] for n in names],
                                                provider_options=provider_options)
        except Exception as exc:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail, NoSuchFile...
            raise EdgeError(f"{self.model_path}: ONNX Runtime cannot load it ({first_line(exc, 240)})") from None
        active = [n for n in names if PROVIDERS[n] in self.session.get_providers()]
        for name in names:
            if name not in active:  # installed but failed to start (no GPU, driver or library)
                if not active:
                    raise EdgeError(f"--providers {','.join(names)}: ONNX Runtime could not start {PROVIDERS[name]} "
                                    f"(no GPU or a missing library; {available_text(available)})")
                warnings.append(f"{PROVIDERS[name]} is installed but did not start (no GPU or a missing library); "
                                f"falling back to {','.join(active)}")
        self.providers = active
        wanted = requested or tuple(names)
        unused = [n for n in wanted if n not in active]
        fallback = f"{','.join(unused)} not available" if unused and active[0] != wanted[0] else None
        self._metadata = self.session.get_modelmeta().custom_metadata_map or {}
        self._info_cache: tuple[ModelInfo | None] | None = None
        try:
            scanned = scan_onnx(self.model_path)
        except (ValueError, IndexError, OSError):
            scanned = {"operators": [], "weights_bytes": 0, "opsets": {}}
        self.operators = scanned["operators"]
        self.opsets = scanned["opsets"]
        self._weights_bytes = scanned["weights_bytes"]
        self.info = BackendInfo("onnxruntime", ort.__version__, threads, "; ".join(notes) or None, active[0],
                                tuple(warnings), fallback)
        # A RunOptions made once: with None, every run makes (and keeps part of) a default one.
        self._run_options = ort.RunOptions()
        self._bind()
        self._setup_state()

    @property
    def provider_options(self) -> dict[str, dict]:
        """``{provider: options}`` the session runs with (ONNX Runtime's own view, values as strings)."""
        return self.session.get_provider_options()

    def _bind(self) -> None:
        """One numpy array per input and output, bound to the session once."""
        self.inputs, self.outputs, self._arrays = [], [], {}
        self.binding = self.session.io_binding()
        for role, args, specs, bind in (("input", self.session.get_inputs(), self.inputs, self.binding.bind_input),
                                        ("output", self.session.get_outputs(), self.outputs,
                                         self.binding.bind_output)):
            for arg in args:
                dtype = _DTYPES.get(arg.type)
                if dtype is None:
                    raise EdgeError(f"{self.model_path}: {role} {arg.name!r} is {arg.type}, which edgekit cannot bind")
                spec = TensorSpec(len(self._arrays), arg.name, _shape(arg, role, self.model_path), np.dtype(dtype))
                array = np.zeros(spec.shape, spec.dtype)
                bind(arg.name, "cpu", 0, spec.dtype, list(spec.shape), array.ctypes.data)
                self._arrays[spec.index] = array
                specs.append(spec)

    # ---- Backend ----

    def view(self, spec: TensorSpec):
        array = self._arrays[spec.index]
        return lambda: array

    def _run(self) -> None:
        try:
            self.session.run_with_iobinding(self.binding, self._run_options)
        except Exception as exc:  # e.g. an output whose real shape differs from the declared one
            raise EdgeError(f"{self.model_path}: ONNX Runtime failed to run it ({first_line(exc, 240)})") from None

    def signature_output_names(self) -> dict[int, str]:
        return {spec.index: spec.name for spec in self.outputs}

    def model_info(self) -> ModelInfo | None:
        """Sidecar ``<model>.json`` if present, else ``metadata_props["edgekit"]``, else None."""
        if self._info_cache is None:
            sidecar = sidecar_path(self.model_path)
            if sidecar.is_file():
                info = read_sidecar(sidecar)
            elif METADATA_NAME in self._metadata:
                try:
                    data = json.loads(self._metadata[METADATA_NAME])
                except (ValueError, RecursionError) as exc:
                    raise EdgeError(f"{self.model_path}: embedded edgekit metadata is not valid JSON "
                                    f"({first_line(exc)})") from None
                info = ModelInfo.from_dict(data, source=f"{self.model_path} (embedded metadata)")
            else:
                info = None
            self._info_cache = (info,)
        return self._info_cache[0]

    @property
    def has_postprocess(self) -> bool:
        """The graph ends in NMS (our exports' tail): decoded boxes, classes, scores and count come out."""
        if "NonMaxSuppression" in self.operators:
            return True
        info = self.model_info()
        return bool(info and info.head == HEAD_POSTPROCESS and len(self.outputs) == 4)

    @property
    def postprocess_options(self) -> dict | None:
        """The tail's attributes, as its metadata records them (num_classes, thresholds, max_detections)."""
        info = self.model_info()
        return dict(info.postprocess) if self.has_postprocess and info and info.postprocess else None

    def memory(self) -> dict:
        bound = sum(array.nbytes for array in self._arrays.values())
        return {"tensor_bytes": self._weights_bytes + bound, "weights_bytes": self._weights_bytes,
                "bound_bytes": bound, "model_file_bytes": self.model_path.stat().st_size,
                "note": "ONNX Runtime's activation arena is not included"}
