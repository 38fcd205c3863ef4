"""The ``edge`` CLI run as a child process from a benchmark, exactly as a user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE = [sys.executable, "-m", "edge.cli"]


def run(cmd: list[str]) -> float:
    """Print ``cmd``, run it from the project root (TensorFlow's C++ logging off) and return its wall
    seconds; a non-zero exit raises ``CalledProcessError`` after the CLI's own error line."""
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return time.perf_counter() - t0
