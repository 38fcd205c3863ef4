"""Where a result came from: package versions, the machine and the command line.

Every benchmark figure and every converted model depends on them, so reports carry them.
"""

from __future__ import annotations

import os
import platform
import sys

#: Distributions whose versions a board-side report names.
RUNTIME_DISTS = ("edgekit", "numpy", "opencv-python-headless", "opencv-python", "ai-edge-litert", "tflite-runtime",
                 "onnxruntime", "onnxruntime-gpu", "tensorflow")


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or ``None`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def package_versions(dists: tuple[str, ...] | list[str] = RUNTIME_DISTS, *, installed_only: bool = True) -> dict:
    """``{dist: version}`` for ``dists``; absent ones are left out (or ``None`` with ``installed_only=False``)."""
    found = {dist: package_version(dist) for dist in dists}
    return {k: v for k, v in found.items() if v is not None} if installed_only else found


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under ``taskset``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine_info() -> dict:
    """CPU, cores, OS, Python and library versions, and the load at the time of the call."""
    versions = {"python": platform.python_version(), **package_versions()}
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu_name(), "machine": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable_cores(),
            "os": platform.platform(), "versions": versions, "load_average_1min_at_start": load}


def command_line(program: str = "edge") -> str:
    """The command as the user typed it, with ``program`` for the script name."""
    return " ".join([program] + sys.argv[1:]) if sys.argv else program
