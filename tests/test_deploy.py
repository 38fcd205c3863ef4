"""What the board images install, replayed for real: the same script, into a fresh virtual env.

There is no Docker engine here, so each runtime image's install step (docker/install-runtime.sh,
which the Dockerfiles COPY and RUN) is replayed into a new ``python -m venv`` from a copy of the
build context as ``.dockerignore`` leaves it. Then: no TensorFlow anywhere in it, its size is at
most a sixth of the desktop install (the environment running these tests, which has
``.[convert,dev]``), and ``edge run --source synthetic`` works from it, outside the source tree.
The trainer's script is replayed with ``--dry-run`` against this environment (it would otherwise
download ~2.5 GB) to show it keeps the installed TensorFlow.

pip uses the machine's configured index; a warm cache makes each install ~10-20 s.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = PROJECT_ROOT / "docker"
BUNDLED_MODEL = PROJECT_ROOT / "edge" / "models" / "demo_ssd_int8.tflite"

# Distributions that mean "TensorFlow came along" (any of them pulls hundreds of MB).
TF_DISTRIBUTIONS = re.compile(r"^(tensorflow([-_].*)?|tf[-_]keras|keras|tf[-_]nightly|tensorflow[-_]model[-_]optimization)$")

INSTALL_TIMEOUT = 600


# ---------------------------------------------------------------- build context and venvs


def _dockerignore_patterns() -> list[str]:
    lines = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, as far as our .dockerignore uses it: patterns are anchored at the context root,
    ``**/`` matches any depth (including none), and an excluded directory takes its subtree."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        for candidate in candidates:
            if any(fnmatch.fnmatchcase(prefix, candidate) for prefix in prefixes):
                return True
    return False


def _copy_build_context(dest: Path) -> Path:
    patterns = _dockerignore_patterns()

    def ignore(directory: str, names: list[str]) -> list[str]:
        rel_dir = os.path.relpath(directory, PROJECT_ROOT)
        rel = (lambda n: n) if rel_dir == "." else (lambda n: f"{rel_dir}/{n}")
        return [n for n in names if _ignored(rel(n), patterns)]

    shutil.copytree(PROJECT_ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def _clean_env() -> dict[str, str]:
    """The environment for commands in the fresh venv: nothing that points back at the source tree
    or the test environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def _replay(script: str, python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a docker/ install script exactly as the Dockerfile does: `PYTHON=... sh script args`."""
    env = _clean_env() | {"PYTHON": str(python)}
    proc = subprocess.run(["sh", str(DOCKER_DIR / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _distributions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, env=_clean_env())
    return json.loads(out.stdout)


def _site_packages(python: Path | str) -> set[Path]:
    code = "import json, sysconfig; p = sysconfig.get_paths(); print(json.dumps([p['purelib'], p['platlib']]))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, env=_clean_env())
    return {Path(p) for p in json.loads(out.stdout)}


def _tree_bytes(roots: set[Path]) -> int:
    """Bytes of the files under the roots (symlinks not followed), as `du --apparent-size` counts."""
    total = 0
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
    return total


@pytest.fixture(scope="module")
def build_context(tmp_path_factory) -> Path:
    return _copy_build_context(tmp_path_factory.mktemp("context") / "edgekit")


@pytest.fixture(scope="module")
def runtime_venv(build_context, tmp_path_factory) -> Path:
    """The Pi image's install: install-runtime.sh with no flags, into a fresh venv."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    python = _make_venv(venv)
    _replay("install-runtime.sh", python, str(build_context), cwd=venv.parent)
    return venv


@pytest.fixture(scope="module")
def jetson_venv(build_context, tmp_path_factory) -> Path:
    """The Jetson image's install: install-runtime.sh --system-opencv (the image's cv2 is apt's)."""
    venv = tmp_path_factory.mktemp("jetson") / "venv"
    python = _make_venv(venv)
    _replay("install-runtime.sh", python, "--system-opencv", str(build_context), cwd=venv.parent)
    return venv


# ---------------------------------------------------------------- the context itself


def test_build_context_leaves_out_venv_git_and_runs(build_context):
    names = {p.name for p in build_context.iterdir()}
    assert not names & {".venv", ".git", "runs", "build"}
    assert {"edge", "convert", "pyproject.toml", "docker"} <= names
    # The context is source, not environments: a few MB at most without them.
    assert _tree_bytes({build_context}) < 50 * 2**20


# ---------------------------------------------------------------- the Pi image's install


def test_runtime_install_has_no_tensorflow(runtime_venv):
    python = runtime_venv / "bin" / "python"
    dists = _distributions(python)
    assert "edgekit" in dists
    assert {"numpy", "opencv-python-headless", "ai-edge-litert"} <= set(dists)
    assert [d for d in dists if TF_DISTRIBUTIONS.match(d)] == []
    for module in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization"):
        proc = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True,
                              env=_clean_env(), cwd=runtime_venv.parent)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, f"{module} imports in the runtime venv"


def test_runtime_install_is_at_most_a_sixth_of_the_desktop_install(runtime_venv, record_property):
    if importlib.util.find_spec("tensorflow") is None:
        reason = "the environment running the tests is not the desktop install (no tensorflow)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    runtime = _tree_bytes(_site_packages(runtime_venv / "bin" / "python"))
    desktop = _tree_bytes(_site_packages(sys.executable))
    record_property("runtime_site_packages_mb", round(runtime / 2**20))
    record_property("desktop_site_packages_mb", round(desktop / 2**20))
    print(f"\nruntime install {runtime / 2**20:.0f} MB, desktop install {desktop / 2**20:.0f} MB, "
          f"ratio 1/{desktop / runtime:.1f}")
    assert runtime * 6 <= desktop, f"runtime {runtime / 2**20:.0f} MB vs desktop {desktop / 2**20:.0f} MB"


def _run_args(ssd_model_path: Path) -> list[str]:
    """The bundled demo model once it exists; until then the real fixture SSD."""
    return [] if BUNDLED_MODEL.is_file() else ["--model", str(ssd_model_path)]


def _edge_run_synthetic(venv: Path, frames: int, model_args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`edge run --source synthetic --max-frames N` from the venv's console script, writing JSON lines."""
    edge = venv / "bin" / "edge"
    assert edge.exists(), "the install did not create the `edge` console script"
    jsonl = cwd / "detections.jsonl"
    proc = subprocess.run(
        [str(edge), "run", "--source", "synthetic", "--max-frames", str(frames), "--json", str(jsonl), *model_args],
        cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )
    return proc, jsonl


def _assert_processed(proc: subprocess.CompletedProcess, jsonl: Path, frames: int) -> None:
    """The run exited 0, its summary says N frames processed, and the JSON-lines sink got N frames."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"edge run failed (exit {proc.returncode}):\n{output[-4000:]}"
    summary = re.search(r"frames:\s+\d+ read, (\d+) processed", output)
    assert summary, f"no summary line in the output of edge run:\n{output[-3000:]}"
    assert int(summary.group(1)) == frames
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == frames
    assert all(isinstance(r["detections"], list) for r in records)


def test_edge_run_synthetic_works_in_the_runtime_install(runtime_venv, ssd_model_path, tmp_path):
    python = runtime_venv / "bin" / "python"
    # It really is the installed copy, not the source tree.
    where = subprocess.run([str(python), "-c", "import edge; print(edge.__file__)"], cwd=tmp_path,
                           env=_clean_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(runtime_venv), where
    proc, jsonl = _edge_run_synthetic(runtime_venv, 100, _run_args(ssd_model_path), cwd=tmp_path)
    _assert_processed(proc, jsonl, 100)
    assert "runtime litert" in proc.stderr


def test_gstreamer_pipeline_in_the_pip_opencv_install_fails_with_one_clear_line(runtime_venv, ssd_model_path, tmp_path):
    """pip's OpenCV has no GStreamer and would silently return no frames; edgekit says why instead."""
    edge = runtime_venv / "bin" / "edge"
    pipeline = ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv ! "
                "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink")
    run = subprocess.run([str(edge), "run", "--source", pipeline, "--max-frames", "1", *_run_args(ssd_model_path)],
                         cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("edge: error: --source is a GStreamer pipeline but this OpenCV has no GStreamer"), last


# ---------------------------------------------------------------- the Jetson image's install


def test_jetson_install_brings_no_pip_opencv_and_numpy_below_2(jetson_venv):
    python = jetson_venv / "bin" / "python"
    dists = _distributions(python)
    assert "edgekit" in dists and "ai-edge-litert" in dists
    assert [d for d in dists if d.startswith("opencv")] == [], "pip's OpenCV would shadow the GStreamer one"
    assert [d for d in dists if TF_DISTRIBUTIONS.match(d)] == []
    # The distribution's cv2 is compiled against NumPy 1.x and does not import under NumPy 2.
    assert int(dists["numpy"].split(".")[0]) == 1
    # Every requirement of edgekit is met except the OpenCV the image brings from apt: this is the
    # check that keeps install-runtime.sh's list in step with pyproject.toml.
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=_clean_env())
    problems = [line for line in check.stdout.splitlines() if line.strip() and "No broken requirements" not in line]
    assert len(problems) == 1 and re.fullmatch(
        r"edgekit \S+ requires opencv-python-headless(\S*)?, which is not installed\.", problems[0]
    ), check.stdout


def test_edge_run_works_with_numpy_1_and_an_older_opencv(jetson_venv, ssd_model_path, tmp_path):
    """Stand in for Ubuntu 22.04's cv2 (OpenCV 4.5, NumPy 1.x ABI) with pip's 4.10 headless build
    on NumPy 1.x: the board code must not rely on NumPy 2 or OpenCV 5 only APIs."""
    python = jetson_venv / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-cache-dir", "opencv-python-headless==4.10.0.84"],
                          capture_output=True, text=True, env=_clean_env(), timeout=INSTALL_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(_distributions(python)["numpy"].split(".")[0]) == 1, "installing OpenCV upgraded numpy"
    run, jsonl = _edge_run_synthetic(jetson_venv, 30, _run_args(ssd_model_path), cwd=tmp_path)
    _assert_processed(run, jsonl, 30)


# ---------------------------------------------------------------- the trainer image's install


def test_trainer_install_keeps_the_installed_tensorflow(tmp_path, build_context):
    """Replayed with --dry-run on this (desktop) environment, as on the TensorFlow GPU image: pip must
    not plan to replace TensorFlow or pull a tf-keras of another minor version."""
    dists = {k: v for k, v in _distributions(Path(sys.executable)).items()}
    if "tensorflow" not in dists:
        reason = "the environment running the tests has no tensorflow"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    report = tmp_path / "report.json"
    proc = _replay("install-trainer.sh", Path(sys.executable), str(build_context), "--dry-run",
                   "--report", str(report), cwd=tmp_path)
    assert f"keeping the installed TensorFlow {dists['tensorflow']}" in proc.stdout
    planned = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "edgekit" in planned
    assert not any(TF_DISTRIBUTIONS.match(name) for name in planned), f"would reinstall: {planned}"


# ---------------------------------------------------------------- the legacy runtime under NumPy 2


def test_tflite_runtime_under_numpy_2_fails_with_one_clear_line(build_context, tmp_path, ssd_model_path):
    """The classic board mistake: `pip install tflite-runtime` next to NumPy 2 (pip allows it)."""
    venv = tmp_path / "legacy"
    python = _make_venv(venv)
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-cache-dir", "tflite-runtime==2.14.0",
                           "numpy>=2", "opencv-python-headless", "flatbuffers>=23.5"],
                          capture_output=True, text=True, env=_clean_env(), timeout=INSTALL_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-cache-dir", "--no-deps", str(build_context)],
                          capture_output=True, text=True, env=_clean_env(), timeout=INSTALL_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = subprocess.run([str(venv / "bin" / "edge"), "run", "--model", str(ssd_model_path), "--max-frames", "3"],
                         cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=300)
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert last.startswith("edge: error:") and "numpy" in last.lower() and "<2" in last
