"""Measuring the baseline: every coefficient :mod:`edge.plan.predict` uses, from fresh processes on this machine.

``edge plan --measure-baseline`` runs :func:`measure_baseline` on the board, for its runtime
version, and stores the result as ``edge/plan/baseline.json`` (:mod:`edge.plan.baseline` reads it).
Each figure comes from :func:`edge.plan.check.run_fresh` runs of the bundled demo model at sizes other
than the ones ``benchmarks/plan_accuracy.py`` checks, with what the planner derives from the files
and the setups subtracted, so that a coefficient holds only what the model cannot derive: code
paged in, threads, codec state. That includes the freed memory glibc keeps after the source builds
(:mod:`edge.plan.allocator`), which the planner predicts and is taken out of the calibration runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.plan.check import run_fresh

#: The calibration setups (the demo model): sizes other than the ones the benchmark checks.
CALIBRATION_SIZES = ((320, 240), (1920, 1080))


def measure_baseline(models: list[str | Path], *, frames: int = 30, threads: int = 1,
                     previous: dict | None = None, log=print) -> dict:
    """Measure every coefficient :mod:`edge.plan.predict` uses, from fresh processes on this machine.

    ``models[0]`` runs the pipeline setups (the bundled demo model); every model in ``models`` gets an
    interpreter probe, and two or more fix the XNNPACK ratio and the interpreter overhead together.
    """
    import platform

    from edge.plan.allocator import retained_after_sources, threshold_after_load
    from edge.plan.baseline import camera_modeled, fit_interpreter
    from edge.plan.components import detector_facts, synthetic_band_peak
    from edge.plan.graph import read_graph
    from edge.provenance import cpu_name, package_versions, usable_cores

    main_model = str(models[0])
    (w0, h0), (w1, h1) = CALIBRATION_SIZES
    runs: dict[str, dict] = {}

    def measure(name: str, **kw) -> dict:
        log(f"edge plan: measuring {name} ...")
        runs[name] = run_fresh(main_model, frames=frames, threads=threads, **kw)
        runs[name]["setup"] = [kw["width"], kw["height"], kw.get("cameras", 1)]
        return runs[name]

    probes, thresholds = [], {}
    for model in models:
        log(f"edge plan: measuring interpreters of {Path(model).name} ...")
        probe = run_fresh(model, interpreters=2, threads=threads)
        probes.append((str(model), probe))
        thresholds[Path(model).name] = run_fresh(model, malloc_threshold=True, threads=threads)
    small = measure("small", width=w0, height=h0)
    large = measure("large", width=w1, height=h1)
    two = measure("two cameras", width=w0, height=h0, cameras=2)
    sink_runs = {}
    for sink in ("json", "video", "preview"):
        sink_runs[sink] = (measure(f"{sink} small", width=w0, height=h0, sinks=(sink,)),
                           measure(f"{sink} large", width=w1, height=h1, sinks=(sink,)) if sink != "json" else None,
                           measure(f"{sink} two cameras", width=w0, height=h0, cameras=2, sinks=(sink,))
                           if sink != "json" else None)

    graph = read_graph(main_model)
    facts = detector_facts(graph)
    first_use = [p["interpreters"][0] - p["interpreters"][1] for _, p in probes]
    ratio, overhead = fit_interpreter([(read_graph(m), p["interpreters"][1]) for m, p in probes],
                                      (previous or {}).get("coefficients"))

    imports_threshold = thresholds[Path(main_model).name]["imports"]
    threshold = threshold_after_load(Path(main_model).stat().st_size, imports_threshold)

    def retained(r: dict) -> int:
        """What glibc keeps of the run's source builds (predicted separately, so not a coefficient)."""
        if not imports_threshold:
            return 0
        width, height, cameras = r["setup"]
        return retained_after_sources(width, height, cameras, threshold)["retained"]

    def pipeline(r: dict) -> int:
        return r["end"] - r["interpreter_done"] - retained(r)

    def transient(r: dict) -> int:
        return r["peak_before_loops"] - r["interpreter_done"]

    m0, m1 = camera_modeled(facts, w0, h0), camera_modeled(facts, w1, h1)
    f0, f1 = w0 * h0 * 3, w1 * h1 * 3
    p0, p1 = w0 * h0, w1 * h1
    co = {
        "imports_bytes": round(sum(r["imports"] for r in runs.values()) / len(runs)),
        "runtime_first_use_bytes": round(sum(first_use) / len(first_use)),
        "xnnpack_packed_ratio": round(ratio, 4),
        "interpreter_overhead_bytes": overhead,
        "pipeline_fixed_bytes": round(((pipeline(small) - m0) + (pipeline(large) - m1)) / 2),
        "camera_fixed_bytes": pipeline(two) - pipeline(small) - m0,
        "transient_fixed_bytes": round(((transient(small) - f0 - synthetic_band_peak(w0, h0))
                                        + (transient(large) - f1 - synthetic_band_peak(w1, h1))) / 2),
        "source_leftover_bytes": transient(two) - transient(small) - f0,
        "mmap_threshold_after_imports_bytes": imports_threshold,
        "sinks": {},
    }
    for sink, (one, big, both) in sink_runs.items():
        if sink == "json":
            co["sinks"]["json"] = {"first_fixed": max(0, pipeline(one) - pipeline(small)), "camera_fixed": 0,
                                   "per_pixel": 0.0}
            continue
        # What the sink adds beyond the canvas (and, for the preview, the exchange's frame copy).
        frames_modeled = 2 if sink == "preview" else 1
        s0 = pipeline(one) - pipeline(small) - frames_modeled * f0
        s1 = pipeline(big) - pipeline(large) - frames_modeled * f1
        per_pixel = max(0.0, (s1 - s0) / (p1 - p0))
        first = s0 - per_pixel * p0
        second = pipeline(both) - pipeline(two) - 2 * frames_modeled * f0 - s0
        co["sinks"][sink] = {"first_fixed": max(0, round(first)), "camera_fixed": max(0, round(second - per_pixel * p0)),
                             "per_pixel": round(per_pixel, 3)}
    fixture_note = ("two models fix both" if len(probes) >= 2 else
                    "one model only: the ratio was kept from the previous baseline")
    return {
        "about": ("Measured figures edge plan adds to what it derives from the model file and the setup "
                  "(edge/plan/predict.py says how each is used). Regenerate on the board, for its runtime "
                  "version: edge plan --measure-baseline."),
        "command": "edge plan --measure-baseline",
        "machine": {"cpu": cpu_name(), "machine": platform.machine(), "usable_cores": usable_cores(),
                    "os": platform.platform(), "page_size": os.sysconf("SC_PAGE_SIZE"),
                    "libc": " ".join(platform.libc_ver()).strip()},
        "versions": {"python": platform.python_version(), **package_versions()},
        "derivation": {
            "imports_bytes": "RSS once edge run's imports are done (the runner's first stage, mean of the runs)",
            "runtime_first_use_bytes": "first interpreter's RSS minus a second one's in the same process "
                                       "(kernel code paged in once), mean over the models",
            "xnnpack_packed_ratio": "second interpreter's RSS = mapped file + arena plan + indirection buffers "
                                    "+ ratio x delegated weight bytes + overhead; " + fixture_note,
            "interpreter_overhead_bytes": "fitted with the ratio (see above)",
            "pipeline_fixed_bytes": f"RSS from the interpreter to the end of a 1-camera run minus the modeled "
                                    f"camera buffers, mean of {w0}x{h0} and {w1}x{h1}",
            "camera_fixed_bytes": "second camera's RSS minus its modeled buffers",
            "transient_fixed_bytes": "peak before the loops minus the modeled background and float64 bands",
            "source_leftover_bytes": "what an earlier camera's source keeps beyond its background when the next is built",
            "mmap_threshold_after_imports_bytes": "glibc's mmap threshold once edge run's imports are done (python -m "
                                                  "edge.plan.measure --malloc-threshold; 0: not glibc); the "
                                                  "pipeline figures exclude the freed memory edge.plan.allocator "
                                                  "predicts glibc keeps",
            "sinks": "run with the sink minus the run without, less the canvas (and the preview's frame copy), "
                     f"at {w0}x{h0} and {w1}x{h1}: per-pixel slope and fixed part; camera_fixed from 2 cameras",
        },
        "calibration": {"model": Path(main_model).name, "frames": frames, "threads": threads,
                        "sizes": [f"{w}x{h}" for w, h in CALIBRATION_SIZES],
                        "interpreter_probes": {Path(m).name: p for m, p in probes},
                        "malloc_thresholds": thresholds,
                        "runs": runs},
        "coefficients": co,
    }
