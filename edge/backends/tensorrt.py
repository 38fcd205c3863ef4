"""The TensorRT execution provider's setup: the engine cache directory (one per model file; the first
run builds the engine, which takes minutes on a Jetson, later starts load it), the documented
``trt_*`` provider options, and the INT8 calibration table made from images on the CPU with ONNX
Runtime's own calibrator (it needs the ``onnx`` package).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edge.backends.onnx_providers import import_onnxruntime
from edge.contract.modelinfo import ModelInfo
from edge.errors import EdgeError, first_line

CALIBRATION_TABLE = "calibration.flatbuffers"  # the name write_calibration_table gives its table


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

    from edge.backends.onnxruntime import OnnxRuntimeBackend  # here, not on top: that module imports this one
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


def prepare_tensorrt(model_path: Path, cache: Path, fp16: bool, int8: bool, calib, notes: list[str]) -> dict:
    """The TensorRT provider options for ``model_path`` with its engine cache in ``cache`` (made here,
    and the INT8 calibration table in it from ``calib`` when there is none yet); ``notes`` gets a
    line for each slow first-run step."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeError(f"TensorRT engine cache {cache}: cannot create it ({exc.strerror})") from None
    if int8 and not (cache / CALIBRATION_TABLE).is_file():
        if calib is None:
            raise EdgeError(f"TensorRT INT8 needs a calibration table: pass --calib DIR (images like the "
                            f"camera's) once; it is kept in {cache}")
        notes.append(f"TensorRT INT8: calibrating on {calib} (once; the table is kept in {cache})")
        write_tensorrt_calibration(model_path, calib, cache)
    if not any(cache.glob("*.engine")):
        notes.append(f"TensorRT builds its engine on this first run (minutes on a Jetson); it is cached in "
                     f"{cache} for later starts")
    return tensorrt_options(cache, fp16=fp16, int8=int8)
