"""The measured figures ``edge plan`` predicts with: the stored baseline, and fitting it.

``edge/plan/baseline.json`` holds coefficients measured once per runtime version and machine
(``edge plan --measure-baseline`` regenerates it, :mod:`edge.plan.calibrate`) with the versions and
machine they were measured on: :func:`load_baseline` reads it, :func:`baseline_mismatch` says when
it may not apply here, and :func:`fit_interpreter` and :func:`camera_modeled` turn measurements
into coefficients.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge.errors import EdgeError
from edge.plan.arena import ArenaPlan, plan_arena
from edge.plan.components import Setup, camera_parts, delegated_weight_bytes, indirection_bytes, page_round
from edge.plan.graph import Graph

BASELINE_PATH = Path(__file__).resolve().parent / "baseline.json"


def load_baseline(path: str | Path = BASELINE_PATH) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeError(f"{path}: no measured baseline; run edge plan --measure-baseline") from None
    except (OSError, ValueError) as exc:
        raise EdgeError(f"{path}: unreadable baseline ({exc}); run edge plan --measure-baseline") from None
    if not isinstance(data.get("coefficients"), dict):
        raise EdgeError(f"{path}: no 'coefficients'; run edge plan --measure-baseline")
    return data


def baseline_mismatch(baseline: dict) -> str | None:
    """Why the stored baseline may not apply here (other runtime or library versions), or None."""
    from edge.provenance import package_version

    stored = baseline.get("versions", {})
    differ = []
    for dist in ("ai-edge-litert", "numpy", "opencv-python-headless", "opencv-python"):
        here, there = package_version(dist), stored.get(dist)
        if there and here and here != there:
            differ.append(f"{dist} {there} measured, {here} here")
    machine = baseline.get("machine", {}).get("machine")
    import platform

    if machine and machine != platform.machine():
        differ.append(f"measured on {machine}, this is {platform.machine()}")
    return "; ".join(differ) or None


def modeled_interpreter(graph: Graph, plan: ArenaPlan) -> tuple[int, int]:
    """(bytes known from the file alone: mapped file + arena + indirection buffers, delegated weight bytes)."""
    known = page_round(graph.file_bytes) + plan.size + plan.persistent + indirection_bytes(graph)
    return known, delegated_weight_bytes(graph)


def fit_interpreter(samples: list[tuple[Graph, int]], previous: dict | None = None) -> tuple[float, int]:
    """``(ratio, overhead)`` so that RSS of a second interpreter = known + ratio x weights + overhead.

    ``samples``: (graph, measured RSS of a second interpreter in the same process). Two models fix
    both; with one, the previous ratio is kept and only the overhead is measured.
    """
    rows = []
    for graph, measured in samples:
        known, weights = modeled_interpreter(graph, plan_arena(graph))
        rows.append((weights, measured - known))
    if len(rows) >= 2 and abs(rows[0][0] - rows[1][0]) > 0:
        (w0, y0), (w1, y1) = rows[0], rows[1]
        ratio = (y1 - y0) / (w1 - w0)
        overhead = round(y0 - ratio * w0)
        return ratio, overhead
    ratio = float((previous or {}).get("xnnpack_packed_ratio", 1.0))
    return ratio, round(rows[0][1] - ratio * rows[0][0])


def camera_modeled(facts: dict, width: int, height: int, coefficients: dict | None = None) -> int:
    """One camera's modeled buffers at ``width`` x ``height`` with no sinks (for fitting)."""
    setup = Setup(width, height)
    return sum(c.bytes for c in camera_parts(facts, setup, coefficients or {}))
