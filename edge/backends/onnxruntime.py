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
how to install it; the backend falls back only to providers the list names.

TensorRT options (ONNX Runtime's documented ``trt_*`` provider options): an engine cache directory
(the first run builds the engine, which takes minutes on a Jetson; later starts load it), FP16, and
INT8 with a calibration table that :func:`write_tensorrt_calibration` makes from images on the CPU
(ONNX Runtime's own calibrator; it needs the ``onnx`` package).

Operators and weight sizes are read from the file by a small protobuf reader (:func:`scan_onnx`):
the board needs neither the ``onnx`` package nor TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, BackendInfo, TensorSpec
from edge.contract.modelinfo import HEAD_POSTPROCESS, ModelInfo, read_sidecar, sidecar_path
from edge.contract.tflite_file import METADATA_NAME
from edge.errors import EdgeError, first_line
from edge.provenance import usable_cores

#: ``--providers`` names -> ONNX Runtime execution providers, best first.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PREFERENCE = tuple(PROVIDERS)
INSTALL_HINTS = {
    "tensorrt": ("the TensorRT execution provider: pip install onnxruntime-gpu and NVIDIA's TensorRT 10 libraries "
                 "(pip install tensorrt; on a Jetson, the onnxruntime-gpu wheel built for its JetPack)"),
    "cuda": "the CUDA execution provider: pip install onnxruntime-gpu (CUDA 12 and cuDNN 9 libraries)",
    "cpu": "ONNX Runtime's CPU provider: pip install onnxruntime (edgekit[onnx])",
}
ORT_INSTALL = 'ONNX Runtime is not installed: pip install onnxruntime (or pip install "edgekit[onnx]")'
CALIBRATION_TABLE = "calibration.flatbuffers"  # the name write_calibration_table gives its table

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}
# ONNX TensorProto.DataType -> bytes per element (strings and unknown types count 0)
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 17: 1,
                  18: 1, 19: 1, 20: 1}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise EdgeError(ORT_INSTALL) from None
    return onnxruntime


def parse_providers(text: str) -> tuple[str, ...]:
    """``"tensorrt,cuda,cpu"`` -> ``("tensorrt", "cuda", "cpu")``; EdgeError naming an unknown one.

    Usable as an argparse ``type`` (raise ``argparse.ArgumentTypeError`` around it there).
    """
    names = tuple(part.strip().lower() for part in str(text).split(",") if part.strip())
    if not names:
        raise EdgeError(f"--providers {text!r}: name at least one of {', '.join(PROVIDERS)}")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise EdgeError(f"--providers {text!r}: unknown provider {unknown[0]!r}; choose from {', '.join(PROVIDERS)}")
    if len(set(names)) != len(names):
        raise EdgeError(f"--providers {text!r}: a provider is named twice")
    return names


def available_text(available) -> str:
    """What this machine's ONNX Runtime offers, in ``--providers`` names where it has them."""
    ours = [n for n in PREFERENCE if PROVIDERS[n] in set(available)]
    if ours:
        return f"available here: {','.join(ours)}"
    return f"ONNX Runtime here offers {', '.join(sorted(available)) or 'no provider'}"


def installed_providers() -> list[str]:
    """``onnxruntime.get_available_providers()``, or [] when ONNX Runtime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def choose_providers(requested, available) -> tuple[list[str], list[str]]:
    """``(names to use, fallback warnings)`` for the ``requested`` names (None: every installed one, best first).

    A requested provider that is not installed is skipped with a warning when a later one in the
    list is installed (the list is the user's fallback order), and is an EdgeError (naming what is
    missing, what is available and how to install it) when none is.
    """
    available = set(available)
    if requested is None:
        chosen = [n for n in PREFERENCE if PROVIDERS[n] in available]
        if not chosen:
            raise EdgeError(f"ONNX Runtime offers none of {', '.join(PROVIDERS)} "
                            f"(it has {', '.join(sorted(available)) or 'none'}): {INSTALL_HINTS['cpu']}")
        return chosen, []
    names = parse_providers(",".join(requested)) if not isinstance(requested, str) else parse_providers(requested)
    missing = [n for n in names if PROVIDERS[n] not in available]
    chosen = [n for n in names if n not in missing]
    if not chosen:
        fallback = "" if "cpu" in names else f" (or allow a fallback, e.g. --providers {','.join(names)},cpu)"
        raise EdgeError(f"--providers {','.join(names)}: {PROVIDERS[missing[0]]} is not installed on this machine "
                        f"({available_text(available)}); install {INSTALL_HINTS[missing[0]]}{fallback}")
    notes = [f"--providers {','.join(names)}: {PROVIDERS[n]} is not installed on this machine "
             f"({available_text(available)}); falling back to {','.join(chosen)} (to get it: {INSTALL_HINTS[n]})"
             for n in missing]
    return chosen, notes


# ---- reading the file without the onnx package -------------------------------------------------

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


# ---- TensorRT ------------------------------------------------------------------------------------

def default_trt_cache(model_path: Path) -> Path:
    """``~/.cache/edgekit/tensorrt/<model stem>-<hash of path, size, mtime>``: one cache per model file."""
    st = model_path.stat()
    key = hashlib.sha256(f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "tensorrt" / f"{model_path.stem}-{key}"


def tensorrt_options(cache_dir: Path, *, fp16: bool = False, int8: bool = False) -> dict:
    """ONNX Runtime TensorRT provider options (documented ``trt_*`` names): engine + timing caches, precision."""
    options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": bool(fp16 or int8),  # INT8 layers TensorRT cannot run fall back to FP16, not FP32
        "trt_int8_enable": bool(int8),
    }
    if int8:
        # Read from the engine cache directory; ORT's calibrator writes the flatbuffers table, not
        # TensorRT's native cache format.
        options["trt_int8_calibration_table_name"] = CALIBRATION_TABLE
        options["trt_int8_use_native_calibration_table"] = False
    return options


def write_tensorrt_calibration(model_path: str | Path, images: str | Path, cache_dir: str | Path,
                               limit: int = 100) -> Path:
    """A TensorRT INT8 calibration table for ``model_path`` from the images in ``images``, on the CPU.

    ONNX Runtime's MinMax calibrator runs the float model over the images (written into the input
    the way the detector writes frames) and :func:`onnxruntime.quantization.write_calibration_table`
    writes ``calibration.flatbuffers`` into ``cache_dir``, where the TensorRT provider reads it.
    """
    import cv2

    from edge.detector.buffer import FrameBuffer
    from edge.images import list_images

    import_onnxruntime()
    try:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
        from onnxruntime.quantization.quant_utils import write_calibration_table
    except ImportError as exc:
        raise EdgeError(f"TensorRT INT8 calibration needs the onnx package ({exc}): pip install onnx") from None
    model_path, cache_dir = Path(model_path), Path(cache_dir)
    paths = list_images(Path(images))[:limit]
    if not paths:
        raise EdgeError(f"--calib {images}: no images there")
    probe = OnnxRuntimeBackend(model_path, 1, providers=("cpu",))
    image, info = probe.image, probe.model_info() or ModelInfo()
    tensor = np.zeros(image.shape, image.dtype)
    buffer = FrameBuffer(lambda: tensor, image.shape, image.dtype, image.quantization, info.normalization,
                         info.color, info.resize)
    del probe

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = list(paths)

        def get_next(self):
            while self.remaining:
                frame = cv2.imread(str(self.remaining.pop(0)), cv2.IMREAD_COLOR)
                if frame is not None:
                    buffer.write(frame)
                    return {image.name: tensor.copy()}
            return None

    cache_dir.mkdir(parents=True, exist_ok=True)
    augmented = cache_dir / "augmented_for_calibration.onnx"
    try:
        calibrator = create_calibrator(model_path, augmented_model_path=str(augmented),
                                       calibrate_method=CalibrationMethod.MinMax,
                                       providers=["CPUExecutionProvider"])
        calibrator.collect_data(Reader())
        write_calibration_table(calibrator.compute_data(), dir=str(cache_dir))
    except EdgeError:
        raise
    except Exception as exc:
        raise EdgeError(f"{model_path}: TensorRT INT8 calibration failed ({first_line(exc)})") from None
    finally:
        augmented.unlink(missing_ok=True)
    return cache_dir / CALIBRATION_TABLE


# ---- the backend ---------------------------------------------------------------------------------

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

    ``providers``: names from :data:`PROVIDERS` in preference order (None: every installed one, best
    first). ``trt_cache_dir``, ``trt_fp16``, ``trt_int8`` and ``calib`` (images for the INT8
    calibration table, made once into the cache directory) apply to the TensorRT provider.
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
            provider_options[names.index("tensorrt")] = self._tensorrt_setup(cache, trt_fp16, trt_int8, calib, notes)
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

    def _tensorrt_setup(self, cache: Path, fp16: bool, int8: bool, calib, notes: list[str]) -> dict:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"TensorRT engine cache {cache}: cannot create it ({exc.strerror})") from None
        if int8 and not (cache / CALIBRATION_TABLE).is_file():
            if calib is None:
                raise EdgeError(f"TensorRT INT8 needs a calibration table: pass --calib DIR (images like the "
                                f"camera's) once; it is kept in {cache}")
            notes.append(f"TensorRT INT8: calibrating on {calib} (once; the table is kept in {cache})")
            write_tensorrt_calibration(self.model_path, calib, cache)
        if not any(cache.glob("*.engine")):
            notes.append(f"TensorRT builds its engine on this first run (minutes on a Jetson); it is cached in "
                         f"{cache} for later starts")
        return tensorrt_options(cache, fp16=fp16, int8=int8)

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
