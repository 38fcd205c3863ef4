"""ONNX Runtime options on the command line: ``--providers``, ``--trt-cache``, ``--trt-fp16``, ``--trt-int8``
with ``--calib``, from ``edge run`` / ``detect`` / ``inspect`` / ``bench`` down to the session.

The model is tests/test_onnx_backend.py's tiny detector (the onnx helper API and the export's own
NMS tail, no TensorFlow). This machine has no GPU: the CPU provider and the fallback to it run for
real; TensorRT's options are followed as far as the session request by making ONNX Runtime claim a
TensorRT build it then cannot start (what onnxruntime-gpu does on a board whose TensorRT libraries
are missing). Tests that need CUDA or TensorRT themselves skip and say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_onnx_backend import make_model  # noqa: E402  (the tiny NMS-tail detector)

from edge.backends.base import BackendInfo  # noqa: E402
from edge.cli import build_parser, main  # noqa: E402
from edge.models import DEMO_MODEL  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
AVAILABLE = ort.get_available_providers()
HAS_CUDA = "CUDAExecutionProvider" in AVAILABLE
HAS_TENSORRT = "TensorrtExecutionProvider" in AVAILABLE
NO_CUDA = pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA provider: nothing to fall back from")
NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA execution provider here (needs onnxruntime-gpu and "
                                                    "an NVIDIA GPU)")
NEEDS_TENSORRT = pytest.mark.skipif(not HAS_TENSORRT, reason="no TensorRT execution provider here (needs "
                                                            "onnxruntime-gpu, TensorRT and an NVIDIA GPU)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("onnx_cli") / "tiny.onnx")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_cli_images") / "frame.png"
    cv2.imwrite(str(path), np.zeros((48, 64, 3), np.uint8))
    return path


@pytest.fixture
def photos(tmp_path):
    """A few images for the INT8 calibrator (what it sees does not matter to the tiny model)."""
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (40, 40, 3), np.uint8))
    return folder


@pytest.fixture
def pretend_tensorrt(monkeypatch):
    """ONNX Runtime lists TensorRT as built in; creating the session then leaves it out (it cannot start)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *AVAILABLE])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider 'TensorrtExecutionProvider'")
        yield


def detector_for(argv):
    """The Detector ``edge detect MODEL IMAGE ...`` would build (parsed by the real parser)."""
    from edge.commands._args import detector_from_args

    model, *rest = argv
    argv = ["detect", *rest, "--model", model]
    return detector_from_args(build_parser(argv).parse_args(argv))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge: error:"), err
    return err[0]


def edge(*argv, timeout=180):
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, argv)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout)


# ---- the options reach the session -------------------------------------------------------------------------


def test_providers_reach_the_session_and_set_threads_keeps_them(tiny, image):
    detector = detector_for([str(tiny), str(image), "--providers", "cpu", "--threads", "2"])
    backend = detector.backend
    assert detector.backend_options == {"providers": ("cpu",)}
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert list(backend.provider_options) == ["CPUExecutionProvider"]
    assert backend.options["providers"] == ("cpu",)
    assert backend.session.get_session_options().intra_op_num_threads == 2

    detector.set_threads(1)  # what --threads auto does while it measures
    assert detector.backend is not backend
    assert detector.backend.options == backend.options
    assert detector.backend.session.get_providers() == ["CPUExecutionProvider"]
    assert detector.backend.session.get_session_options().intra_op_num_threads == 1
    assert detector.detect(np.zeros((48, 64, 3), np.uint8)).count == 2  # rebound buffers still work


def test_tensorrt_options_reach_the_session_request(tiny, image, tmp_path, pretend_tensorrt):
    cache = tmp_path / "engines"
    detector = detector_for([str(tiny), str(image), "--providers", "tensorrt,cpu", "--trt-cache", str(cache),
                             "--trt-fp16"])
    backend = detector.backend
    asked = backend.requested_provider_options
    assert list(asked) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    trt = asked["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(cache)
    assert trt["trt_fp16_enable"] and not trt["trt_int8_enable"]
    assert cache.is_dir()
    # ONNX Runtime could not start it: the run falls back to the CPU the list allows, and says so
    assert backend.providers == ["cpu"] and backend.info.fallback == "tensorrt not available"
    assert any("did not start" in w for w in backend.info.warnings)
    assert "on cpu (tensorrt not available)" in detector.describe()

    detector.set_threads(1)
    assert detector.backend.requested_provider_options == asked


def test_tensorrt_int8_calibrates_from_calib_into_the_cache(tiny, image, tmp_path, photos, pretend_tensorrt):
    pytest.importorskip("onnxruntime.quantization")
    from edge.backends.tensorrt import CALIBRATION_TABLE

    cache = tmp_path / "int8"
    detector = detector_for([str(tiny), str(image), "--providers", "tensorrt,cpu", "--trt-cache", str(cache),
                             "--trt-int8", "--calib", str(photos)])
    trt = detector.backend.requested_provider_options["TensorrtExecutionProvider"]
    assert trt["trt_int8_enable"] and trt["trt_int8_calibration_table_name"] == CALIBRATION_TABLE
    assert (cache / CALIBRATION_TABLE).stat().st_size > 0
    assert "calibrating" in (detector.backend.info.note or "")
    # the table is kept: the next start needs no --calib
    again = detector_for([str(tiny), str(image), "--providers", "tensorrt,cpu", "--trt-cache", str(cache),
                          "--trt-int8"])
    assert "calibrating" not in (again.backend.info.note or "")


# ---- bad options: one line, exit 2 ---------------------------------------------------------------------------


def _cases():
    demo = str(DEMO_MODEL)
    cases = [
        (["run", "{tiny}", "--providers", "gpu"], ["unknown provider 'gpu'", "tensorrt, cuda, cpu", "available here"]),
        (["run", "{tiny}", "--providers", ""], ["--providers"]),
        (["run", "{tiny}", "--providers", "cpu,cpu"], ["named twice"]),
        (["detect", demo, "{image}", "--providers", "cpu"], ["--providers", "TFLite", "demo_ssd_int8.tflite"]),
        (["run", "--trt-fp16", "--max-frames", "1"], ["--trt-fp16", ".onnx models"]),
        (["inspect", demo, "--trt-int8", "--calib", "{image_dir}"], ["--trt-int8, --calib", "TFLite"]),
        (["run", "{tiny}", "--calib", "{image_dir}"], ["--calib", "add --trt-int8"]),
        (["run", "{tiny}", "--trt-int8", "--calib", "{image_dir}/nowhere"], ["no such folder"]),
        (["run", "{tiny}", "--providers", "cpu", "--trt-fp16"], ["--trt-fp16", "leaves TensorRT out"]),
        (["bench", demo, "--backend", "onnxruntime", "--frames", "4"],
         ["--runtime onnxruntime", "demo_ssd_int8.tflite is a TFLite model"]),
        (["detect", demo, "{image}", "--backend", "onnxruntime"], ["--runtime onnxruntime", "not an .onnx model"]),
        (["bench", "{tiny}", "--backend", "tflite"], ["--runtime/--backend", "invalid choice", "litert"]),
        (["bench", "{tiny}", "--runtime", "litert", "--frames", "4"],
         ["--runtime litert", "every MODEL here is .onnx"]),
        (["bench", demo, "--providers", "cpu", "--frames", "4"], ["--providers", "TFLite"]),
    ]
    if not HAS_CUDA:
        cases.append((["run", "{tiny}", "--providers", "cuda", "--max-frames", "1"],
                      ["--providers cuda", "CUDAExecutionProvider is not installed", "available here: cpu",
                       "--providers cuda,cpu"]))
    if not HAS_TENSORRT:
        cases.append((["detect", "{tiny}", "{image}", "--providers", "tensorrt,cuda"] if not HAS_CUDA else
                      ["detect", "{tiny}", "{image}", "--providers", "tensorrt"],
                      ["TensorrtExecutionProvider is not installed", "available here"]))
    return cases


@pytest.mark.parametrize("argv, needles", _cases(), ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_bad_options_are_one_line(tiny, image, argv, needles, capsys):
    argv = [a.format(tiny=tiny, image=image, image_dir=image.parent) for a in argv]
    assert main(argv) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line, line


@NO_CUDA
def test_unavailable_provider_from_the_shell_has_no_traceback(tiny):
    proc = edge("run", tiny, "--providers", "cuda", "--max-frames", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge: error:")]
    assert len(errors) == 1 and "not installed on this machine (available here: cpu)" in errors[0], proc.stderr
    proc = edge("run", "--model", DEMO_MODEL, "--providers", "cuda,cpu", "--max-frames", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "edge: error: --providers: for .onnx models (ONNX Runtime) only, and demo_ssd_int8.tflite is a TFLite model"]


# ---- the CPU fallback -------------------------------------------------------------------------------------------


@NO_CUDA
def test_cpu_fallback_warns_once_and_the_start_line_says_where_it_runs(tiny):
    # 300 frames: --threads auto measures (reopening the session with the same options, and a second
    # copy of it for two detectors in turn) and settles
    proc = edge("run", tiny, "--providers", "cuda,cpu", "--max-frames", "300", "--stats-every", "0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    start = next(line for line in lines if line.startswith("edge run: model "))
    assert "runtime onnxruntime" in start and "on cpu (cuda not available)" in start
    warned = [line for line in lines if "warning:" in line]
    assert len(warned) == 1, lines
    assert "CUDAExecutionProvider is not installed" in warned[0] and "falling back to cpu" in warned[0]
    assert any(line.startswith("edge run: threads auto: ") and "measured end to end" in line for line in lines)
    assert "not tuned" not in proc.stderr  # on the CPU the threads are measured as usual


@NO_CUDA
def test_detect_warns_on_stderr_and_keeps_stdout_for_results(tiny, image, capsys):
    assert main(["detect", str(tiny), str(image), "--providers", "cuda,cpu", "--score", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert "2 detection(s)" in out and "warning" not in out
    assert err.count("warning:") == 1 and "falling back to cpu" in err


def test_backend_names_the_engine_as_runtime_does(tiny, image, capsys):
    assert main(["detect", str(tiny), str(image), "--backend", "onnxruntime", "--providers", "cpu"]) == 0
    by_backend = capsys.readouterr().out
    assert main(["detect", str(tiny), str(image), "--runtime", "onnxruntime", "--providers", "cpu"]) == 0
    assert "2 detection(s)" in by_backend and capsys.readouterr().out == by_backend
    assert detector_for([str(tiny), str(image), "--backend", "onnxruntime"]).backend.info.name == "onnxruntime"


# ---- thread tuning on a GPU ------------------------------------------------------------------------------------


def test_threads_are_not_tuned_on_a_gpu_device():
    from edge.bench.run import tune_layout
    from edge.detector.threads import layout_candidates, untuned_reason

    assert untuned_reason(BackendInfo("onnxruntime", "1", 2)) is None
    assert untuned_reason(BackendInfo("onnxruntime", "1", 2, device="cuda")) == "running on CUDA"
    assert untuned_reason(BackendInfo("onnxruntime", "1", 2, device="tensorrt")) == "running on TensorRT"

    class OnCuda:
        runtime_info = BackendInfo("onnxruntime", "1", 2, device="cuda")

        def set_threads(self, n):
            raise AssertionError("a GPU run must not reopen its session to measure threads")

    on_cuda = OnCuda()
    tuning, loop, detectors = tune_layout(on_cuda, "the loop", layout_candidates(2), settings=None, progress=None)
    assert tuning is None and loop == "the loop" and detectors == [on_cuda]


@NEEDS_CUDA
def test_run_on_cuda_says_threads_are_not_tuned(tiny):
    proc = edge("run", tiny, "--providers", "cuda", "--max-frames", "20", "--stats-every", "0")
    assert proc.returncode == 0, proc.stderr
    assert "edge run: threads: not tuned, running on CUDA" in proc.stderr
    assert "threads auto" not in proc.stderr


@NEEDS_TENSORRT
def test_tensorrt_session_runs_with_the_cli_options(tiny, image, tmp_path):
    cache = tmp_path / "trt"
    detector = detector_for([str(tiny), str(image), "--providers", "tensorrt,cuda,cpu", "--trt-cache", str(cache),
                             "--trt-fp16"])
    options = detector.backend.provider_options["TensorrtExecutionProvider"]
    assert options["trt_fp16_enable"] == "1" and options["trt_engine_cache_path"] == str(cache)
    assert detector.runtime_info.device == "tensorrt"
    detector.detect(np.zeros((48, 64, 3), np.uint8))
    assert list(cache.glob("*.engine"))


# ---- bench and inspect ------------------------------------------------------------------------------------------


def test_bench_runs_tflite_and_onnx_side_by_side(tiny, tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    code = main(["bench", str(DEMO_MODEL), str(tiny), "--providers", "cpu", "--source", "synthetic:160x120",
                 "--frames", "20", "--warmup", "3", "--mem-frames", "5", "--traced-warmup", "5", "--rounds", "2",
                 "--no-progress", "--json", str(report_path), "--report", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 0
    assert "usual pipeline skipped: the usual-pipeline baseline is TFLite-only" in out
    report = json.loads(report_path.read_text())
    tflite, onnx_model = report["models"]
    assert tflite["runtime"]["name"] == "litert" and tflite["usual"] is not None and "usual_skipped" not in tflite
    assert onnx_model["runtime"]["name"] == "onnxruntime" and onnx_model["usual"] is None
    assert "TFLite-only" in onnx_model["usual_skipped"]
    assert onnx_model["ours"]["frames"] == 20 and onnx_model["bare"]["frames"] == 20
    assert onnx_model["ratios"]["ours_fps_over_bare_fps"] > 0
    assert report["settings"]["backend_options"] == {"providers": ["cpu"]}
    assert "TFLite-only" in (tmp_path / "report" / "bench.md").read_text()


def test_inspect_speaks_onnx(tiny, capsys):
    assert main(["inspect", str(tiny), "--providers", "cpu"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("head"))
    assert "NonMaxSuppression" in head and "TFLite_Detection_PostProcess" not in out
    assert "allocate_tensors" not in out and "after the session load" in out
    assert "providers cpu" in out
    help_text = build_parser(["inspect"])._subparsers._group_actions[0].choices["inspect"].format_help()
    assert ".onnx" in help_text and "--providers" in help_text
