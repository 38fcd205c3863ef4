"""Checking a prediction against the real thing: :mod:`edge.plan.measure` in a fresh process, and the comparison.

:func:`run_fresh` runs ``python -m edge.plan.measure`` (one setup of ``edge run``'s pipeline, an
interpreter probe, or the malloc threshold probe) in a process of its own, so that nothing else is
resident, and returns its JSON; :func:`compare` lines a :class:`~edge.plan.predict.Prediction` up
with such a measurement, component by component. ``edge plan --measure``,
``benchmarks/plan_accuracy.py`` and :mod:`edge.plan.calibrate` use both.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def run_fresh(model: str | Path, *, width: int = 640, height: int = 480, cameras: int = 1, threads: int | None = None,
              sinks: tuple[str, ...] = (), frames: int = 60, runtime: str | None = None, arena: bool = False,
              interpreters: int = 0, malloc_threshold: bool = False, timeout: float = 600.0) -> dict:
    """:func:`edge.plan.measure.run` (or, with ``interpreters``, :func:`~edge.plan.measure.probe_interpreters`;
    with ``malloc_threshold``, :func:`~edge.plan.measure.malloc_thresholds`) in a fresh process."""
    import subprocess

    from edge.errors import EdgeError, first_line

    cmd = [sys.executable, "-m", "edge.plan.measure", str(model), "--source", f"{width}x{height}",
           "--cameras", str(cameras), "--max-frames", str(frames), "--sinks", ",".join(sinks)]
    if threads:
        cmd += ["--threads", str(threads)]
    if runtime:
        cmd += ["--runtime", runtime]
    if arena:
        cmd.append("--arena")
    if interpreters:
        cmd += ["--interpreters", str(interpreters)]
    if malloc_threshold:
        cmd.append("--malloc-threshold")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise EdgeError(f"measuring {model}: no result within {timeout:.0f} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
        raise EdgeError(f"measuring {model} failed (exit {done.returncode}): "
                        f"{first_line(Exception(tail[-1] if tail else 'no output'))}")
    return json.loads(lines[-1])


def compare(prediction, measured: dict) -> list[dict]:
    """Predicted vs measured, per component where the runner can measure it: ``[{"component",
    "predicted", "measured", "error"}]`` (error = predicted / measured - 1)."""
    from edge.plan.components import page_round

    groups = {c.name: c.bytes for c in prediction.components}
    baseline = prediction.group_total("baseline")
    imports = groups.get("python + numpy + OpenCV + edge + runtime", 0)
    interpreter = prediction.group_total("interpreter") + (baseline - imports)
    pipeline = prediction.group_total("camera") + prediction.group_total("sink")
    rows = [
        ("python + numpy + OpenCV + edge + runtime", imports, measured["imports"]),
        ("interpreter (+ runtime first use)", interpreter, measured["interpreter_done"] - measured["imports"]),
        ("weights resident (mapped file)", page_round(Path(prediction.model).stat().st_size), measured["weights_resident"]),
    ]
    if "arena" in measured:
        # The interpreter without XNNPACK: the plan with TFLite's own kernels' scratch tensors (im2col).
        rows.append(("arena (no-delegate interpreter's own)", prediction.arena["builtin_kernels_bytes"],
                     measured["arena"]["extent"]))
    if "end" in measured:
        rows.append(("cameras + sinks (steady)", pipeline, measured["end"] - measured["interpreter_done"]))
        rows.append(("steady state", prediction.steady, measured["end"]))
        rows.append(("before the loops (source build)", prediction.before_loops, measured["peak_before_loops"]))
        rows.append(("peak RSS", prediction.peak, measured["peak"]))
    return [{"component": name, "predicted": int(p), "measured": int(m), "error": (p / m - 1.0) if m else None}
            for name, p, m in rows]
