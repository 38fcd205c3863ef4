"""Predicted peak RSS of ``edge run`` for a model and a setup, as a breakdown that adds up.

The components (:mod:`edge.plan.components`) are either derived from the model file and the setup
or figures measured once per runtime version and machine (:mod:`edge.plan.baseline`); this adds
them up, per process and per camera.

The peak is the larger of the steady state and the moment before the loops start, when the last
camera's synthetic source builds its noisy background in float64 bands (two band-sized arrays, three
when the frame takes several bands) on top of what is already resident. ``--threads auto`` adds a
second interpreter while the tuner switches thread counts (on boards with more than one core).
The steady state also carries what glibc keeps of those bands once they are freed, when the model
file's read left its mmap threshold above their size (:mod:`edge.plan.allocator`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.plan.allocator import heap_part
from edge.plan.arena import KERNELS_BUILTIN, ArenaPlan, plan_arena
from edge.plan.baseline import load_baseline
from edge.plan.components import (THREADS_AUTO, Component, Setup, camera_parts, detector_facts, interpreter_parts,
                                  sink_parts, synthetic_band_peak)
from edge.plan.graph import Graph, read_graph


@dataclass
class Prediction:
    model: str
    setup: Setup
    components: list[Component]
    steady: int
    before_loops: int
    peak: int
    peak_when: str
    arena: dict
    detector: dict
    report: dict | None
    notes: list[str] = field(default_factory=list)

    def group_total(self, group: str) -> int:
        return sum(c.bytes for c in self.components if c.group == group)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["setup"]["sinks"] = list(self.setup.sinks)
        data["totals"] = {g: self.group_total(g) for g in ("baseline", "interpreter", "camera", "sink", "transient")}
        return data


def model_report(model: Path) -> dict | None:
    """``{"map": ..., "map50": ..., "source": path}`` from ``MODEL.report.json`` beside the model."""
    path = model.with_name(model.stem + ".report.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    variant = data.get("quantization")
    models = data.get("models") or {}
    entry = models.get(variant) if isinstance(models, dict) else None
    if entry is None and isinstance(models, dict) and len(models) == 1:
        entry = next(iter(models.values()))
    evaluation = (entry or {}).get("eval") or data.get("eval") or {}
    if not isinstance(evaluation, dict) or not any(k in evaluation for k in ("map", "map50")):
        return None
    return {"map": evaluation.get("map"), "map50": evaluation.get("map50"), "source": str(path),
            "variant": variant}


# ---- the prediction -----------------------------------------------------------------------------

def predict(model: str | Path, setup: Setup, baseline: dict | None = None, *, graph: Graph | None = None) -> Prediction:
    model = Path(model)
    baseline = baseline or load_baseline()
    co = baseline["coefficients"]
    graph = graph or read_graph(model)
    plan = plan_arena(graph)
    facts = detector_facts(graph)
    notes = []
    components = [
        Component("python + numpy + OpenCV + edge + runtime", int(co["imports_bytes"]), "baseline",
                  "RSS once edge run's imports are done (measured)"),
        Component("runtime first use", int(co["runtime_first_use_bytes"]), "baseline",
                  "kernel code the first interpreter pages in (measured)"),
    ]
    interpreter = interpreter_parts(graph, plan, co)
    components += interpreter
    if setup.detectors > 1:  # each a second interpreter of the same file, as the tuner's (the file mapped again)
        further = setup.detectors - 1
        one = sum(c.bytes for c in interpreter) + int(co["camera_fixed_bytes"])
        components.append(Component("each further detector", further * one, "interpreter",
                                    f"{further} x {one / 2**20:.1f} MiB: another interpreter of the model "
                                    "(its own mapping, arena, packed weights) and a thread with its allocator "
                                    "arena, as a camera's"))
    if graph.subgraphs > 1:
        notes.append(f"{graph.subgraphs} subgraphs: only subgraph 0 is planned")
    if plan.dynamic:
        notes.append(f"{len(plan.dynamic)} tensors are sized at run time and not counted")
    if not facts["detector"]:
        notes.append(f"not an SSD detector ({facts.get('reason')}): interpreter part only, no camera pipeline")
        steady = sum(c.bytes for c in components)
        return _finish(model, setup, components, steady, steady, {"steady state": steady}, {}, plan, facts, notes, graph)

    n = setup.cameras
    components.append(Component("pipeline first use", int(co["pipeline_fixed_bytes"]), "camera",
                                "OpenCV and numpy code, numpy.random, capture and loop threads (measured)"))
    if n > 1:
        components.append(Component("each further camera", int(co["camera_fixed_bytes"]) * (n - 1), "camera",
                                    f"{n - 1} x {co['camera_fixed_bytes'] / 2**20:.2f} MiB: threads and their "
                                    "allocator arenas (measured)"))
    for part in camera_parts(facts, setup, co):
        part.bytes *= n
        if n > 1:
            part.note = f"{n} cameras x ({part.note})"
        components.append(part)
    kept = heap_part(graph.file_bytes, setup, co)
    if kept is not None:
        components.append(kept)
    components += sink_parts(setup, co)
    steady = sum(c.bytes for c in components)

    # Before the loops: sources built one after another; the last one's float64 bands on top.
    resident_before = sum(c.bytes for c in components if c.group in ("baseline", "interpreter"))
    earlier = (n - 1) * (setup.frame_bytes + int(co["source_leftover_bytes"]))
    transient = int(co["transient_fixed_bytes"]) + setup.frame_bytes + synthetic_band_peak(setup.width, setup.height)
    before_loops = resident_before + earlier + transient
    candidates = {"steady state": steady, "synthetic source build": before_loops}
    notes_by_phase = {"synthetic source build": f"float64 bands of {setup.width}x{setup.height} noise while the last "
                                                "source is built, above the steady state"}
    # edge run tunes threads for one source only (with --config they are fixed: all cores, or cores / K)
    if setup.threads == THREADS_AUTO and setup.cameras == 1 and (setup.cores or _usable_cores()) > 1:
        second = sum(c.bytes for c in interpreter)
        candidates["thread switch (--threads auto)"] = steady + second
        notes_by_phase["thread switch (--threads auto)"] = (
            f"the tuner opens the next thread count's interpreter ({second / 2**20:.1f} MiB) before the previous "
            "one is freed, and the allocator keeps that memory")
    if setup.may_take_two_detectors:
        second = sum(c.bytes for c in interpreter) + int(co["camera_fixed_bytes"])
        phase = "two detectors in turn (--threads auto)"
        candidates[phase] = steady + second + 2 * setup.frame_bytes
        notes_by_phase[phase] = (
            f"the tuner tries a second copy of the model ({second / 2**20:.1f} MiB with its thread) and two more "
            "ring frames, and keeps them where measured at least 5% faster (edge run --detectors 1 rules it out)")
    return _finish(model, setup, components, steady, before_loops, candidates, notes_by_phase, plan, facts, notes,
                   graph)


def _finish(model, setup, components, steady, before_loops, candidates, notes_by_phase, plan, facts, notes,
            graph) -> Prediction:
    when = max(candidates, key=lambda k: candidates[k])
    peak = candidates[when]
    if peak > steady:
        components.append(Component(f"transient: {when}", peak - steady, "transient", notes_by_phase.get(when, "")))
    for phase, value in candidates.items():
        if phase not in ("steady state", when) and phase in notes_by_phase:
            notes.append(f"{phase} would reach {value / 2**20:.1f} MiB (below the peak)")
    arena = _arena_dict(plan)
    arena["builtin_kernels_bytes"] = plan_arena(graph, kernels=KERNELS_BUILTIN).size
    return Prediction(str(model), setup, components, steady, before_loops, peak, when, arena, facts,
                      model_report(model), notes)


def _usable_cores() -> int:
    from edge.provenance import usable_cores

    return usable_cores()


def _arena_dict(plan: ArenaPlan) -> dict:
    return {"bytes": plan.size, "persistent_bytes": plan.persistent, "tensors": len(plan.allocations),
            "shared_in_place": len(plan.shared), "no_reuse_bytes": plan.planned_bytes, "peak_live_bytes": plan.peak_live,
            "alignment": plan.alignment}
