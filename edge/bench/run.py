"""Running ``edge bench``: the phases every pipeline goes through, one model, every model.

One call benchmarks one or more models on the same source, in one process. Per model:

1. a second backend of the model is loaded for bare ``invoke()`` (RSS across the load, and the sum
   of every tensor's size), next to the :class:`~edge.detector.detector.Detector` ours runs on;
2. each pipeline of :mod:`edge.bench.pipelines` runs ``warmup`` frames;
3. ``frames`` *timed* frames (tracemalloc off; per-stage durations into
   :class:`~edge.detector.stages.StageTimes`; RSS every ``rss_every`` frames for the slope), the
   pipelines alternating in ``rounds`` rounds so that load from other processes (boards and CI
   machines are shared) falls on all of them alike;
4. ``mem_frames`` *traced* frames of ours and of the baseline under
   :class:`~edge.bench.memprofile.FrameMemoryProbe` (net heap growth and transient per frame), after
   ``traced_warmup`` traced but unrecorded frames; apart from the timed frames because tracing slows
   every allocation, which would penalise the pipeline that allocates more.

Stages (seconds): ``capture_wait`` (ours: waiting for the capture thread's newest frame; the
baseline: its synchronous ``read()``), ``preprocess``, ``invoke``, ``postprocess``, ``sinks``.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.bench import BASELINE, OURS
from edge.bench.memprofile import FrameMemoryProbe, MemoryProfile
from edge.bench.pipelines import BareLoop, BaselineLoop, OursLoop, OursTurnsLoop
from edge.bench.progress import Progress
from edge.bench.settings import BenchSettings
from edge.detector.stages import STAGES, StageTimes
from edge.errors import EdgeError
from edge.memory import RssSampler, peak_rss_bytes, rss_bytes
from edge.provenance import command_line, machine_info

REPORT_FORMAT = 3  # "edgekit_bench" in the JSON; 2: figures and ratios only, one RSS figure for the model load;
# 3: ours' layout (runtime.detectors, threads_auto.fps_by_layout keyed "2" / "2x1")
SCRATCH_FRAMES = 64  # ring size for the stage times of unrecorded (warm-up) frames
GROWTH_CHUNK = 25  # several detectors: frames between the idle points at which heap growth is read


def stage_summary(times: StageTimes) -> dict:
    """Per stage: median, p90, p99, max and mean in milliseconds."""
    out = {}
    for stage in times.stages:
        p = times.percentiles(stage)
        out[stage] = {f"{k}_ms": round(p[k] * 1e3, 4) for k in ("p50", "p90", "p99", "max", "mean")}
    return out


def frame_summary(times: StageTimes) -> dict:
    """Whole-frame latency (the sum of the stages, frame by frame) in milliseconds."""
    total = sum((times.window(stage) for stage in times.stages[1:]), times.window(times.stages[0]))
    if not total.size:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    p50, p90, p99 = np.percentile(total, (50, 90, 99)) * 1e3
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "max_ms": round(float(total.max()) * 1e3, 4)}


@dataclass
class PipelineRun:
    """What one pipeline's timed and traced phases measured."""

    name: str
    times: StageTimes
    rss: RssSampler
    frames: int = 0
    seconds: float = 0.0
    dropped: int = 0
    memory: dict = field(default_factory=dict)
    rss_after_warmup: int = 0
    memory_profile: MemoryProfile | None = None  # kept for the plots

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"frames": self.frames, "seconds": round(self.seconds, 4), "fps": round(self.fps, 3),
                "frames_dropped": self.dropped, "stages": stage_summary(self.times), "frame": frame_summary(self.times),
                "rss": {**self.rss.summary(), "after_warmup_bytes": self.rss_after_warmup},
                "memory": self.memory}

    def bare_dict(self) -> dict:
        """The figures of bare ``invoke()`` (one stage, no memory phase)."""
        return {"frames": self.frames, "seconds": round(self.seconds, 4), "fps": round(self.fps, 3),
                "invoke": stage_summary(self.times)["invoke"]}


def new_run(name: str, settings: BenchSettings, stages: tuple[str, ...] = STAGES) -> PipelineRun:
    return PipelineRun(name, StageTimes(stages, capacity=settings.frames),
                       RssSampler(settings.frames, settings.rss_every))


# ---- phases -------------------------------------------------------------------------------------------


def warm_up(run: PipelineRun, loop, settings: BenchSettings, progress: Progress) -> None:
    """``settings.warmup`` unrecorded frames; then the RSS the pipeline settled at."""
    progress.describe(f"{run.name}: warm-up")
    scratch = StageTimes(run.times.stages, capacity=SCRATCH_FRAMES)
    for i in range(settings.warmup):
        if not loop.frame(scratch):
            raise EdgeError(f"--source {settings.source}: ended during warm-up; use a longer or looping source")
        progress.tick(i, settings.warmup)
    run.rss_after_warmup = rss_bytes()


def timed_chunk(run: PipelineRun, loop, frames: int, progress: Progress) -> None:
    """``frames`` more timed frames (tracemalloc off), appended to ``run``'s stage times and RSS samples."""
    progress.describe(f"{run.name}: timed")
    dropped_before = loop.dropped
    sampler = run.rss
    sampler.segment += 1  # RSS jumps while other pipelines ran between chunks are not this one's
    first = run.frames
    done = 0
    start = time.perf_counter()
    if hasattr(loop, "frames"):  # several detectors: a chunk at a time, RSS sampled as each frame is handed on
        index = [first]

        def each() -> None:
            sampler.maybe_sample(index[0])
            progress.tick(index[0] - first, frames)
            index[0] += 1

        done = loop.frames(frames, run.times, each)
    else:
        for i in range(first, first + frames):
            if not loop.frame(run.times):
                break
            done += 1
            sampler.maybe_sample(i)
            progress.tick(i - first, frames)
    run.seconds += time.perf_counter() - start
    run.frames += done
    run.dropped += loop.dropped - dropped_before


def traced(run: PipelineRun, loop, frames: int, progress: Progress, warmup: int) -> None:
    """``frames`` frames under :class:`FrameMemoryProbe` after ``warmup`` traced, unrecorded frames.

    The warm-up must cover every object a step replaces from time to time: those made before
    tracing began read as growth when first replaced (hence ``Source.warmup_hint``).
    """
    progress.describe(f"{run.name}: traced")
    probe = FrameMemoryProbe(frames, rss_every=run.rss.every)
    scratch = StageTimes(run.times.stages, capacity=SCRATCH_FRAMES)
    traced_times = StageTimes(run.times.stages, capacity=frames)
    with probe:
        if hasattr(loop, "frames"):
            # Several detectors: the transient is read per span between two hand-ons; the growth at
            # points where every worker is idle (between chunks), as a frame's end is not one.
            loop.frames(warmup, scratch)
            begin, end = probe.begin, probe.end

            def each() -> None:
                end()
                begin()

            begin()
            for start in range(0, frames, GROWTH_CHUNK):
                first, level = probe.count, tracemalloc.get_traced_memory()[0]
                loop.frames(min(GROWTH_CHUNK, frames - start), traced_times, each)
                probe.set_growth(first, probe.count, tracemalloc.get_traced_memory()[0] - level)
                progress.tick(start, frames)
            profile = probe.profile()
            run.memory, run.memory_profile = profile.summary(), profile
            return
        for i in range(warmup):
            loop.frame(scratch)
            progress.tick(i, warmup)
        begin, end = probe.begin, probe.end
        for i in range(frames):
            begin()
            ok = loop.frame(traced_times)
            end()
            if not ok:
                break
            progress.tick(i, frames)
        profile = probe.profile()
    run.memory = profile.summary()
    run.memory_profile = profile


def round_sizes(settings: BenchSettings) -> list[int]:
    """Timed frames per round: ``settings.frames`` split as evenly as whole frames allow."""
    rounds = max(1, min(settings.rounds, settings.frames))
    return [settings.frames * (r + 1) // rounds - settings.frames * r // rounds for r in range(rounds)]


def progress_total(settings: BenchSettings) -> int:
    """Frames the progress bar counts for every model (``settings`` resolved)."""
    from edge.backends import is_onnx

    total = 0
    for model in settings.models:
        baselines = len(thread_plan(settings)) if settings.baseline and not is_onnx(model) else 0
        traced = ((settings.traced_warmup or 0) + settings.traced_frames) * (2 if baselines else 1)
        total += (settings.warmup + settings.frames) * (2 + baselines) + traced
    return total


# ---- one model ------------------------------------------------------------------------------------------


def thread_plan(settings: BenchSettings) -> list[int]:
    """Interpreter thread counts to run: ``auto`` gives all cores and one fewer (ours keeps the faster
    end to end, as ``edge run`` does; the baseline runs at each and its best counts); a number, that one."""
    from edge.detector.threads import thread_candidates
    from edge.provenance import usable_cores

    if settings.threads == "auto":
        return thread_candidates()
    return [settings.threads or usable_cores()]


def detector_threads(settings: BenchSettings) -> int:
    """Interpreter threads for each of ours' detectors when there are several: ``--threads N``,
    or under ``auto`` the usable cores shared out (as ``edge run --detectors K``)."""
    from edge.provenance import usable_cores

    if isinstance(settings.threads, int):
        return settings.threads
    return max(1, usable_cores() // int(settings.detectors))


def tune_layout(detector, loop, layouts: list, settings: BenchSettings, progress: Progress):
    """Let :class:`~edge.detector.threads.ThreadTuner` pick ours' layout (thread count, and where
    offered two detectors taking the frames in turn) on real frames, as ``edge run`` does; not on a
    GPU, where the CPU threads hardly matter (:func:`~edge.detector.threads.untuned_reason`).

    Returns ``(tuning, loop, detectors)``: what was measured (``None`` when nothing was), the loop
    ours runs from now on and its detectors. Single-detector trials run on ``loop``; the others on
    an :class:`~edge.bench.pipelines.OursTurnsLoop` of their own, opened for the first such trial.
    """
    from edge.detector.threads import ThreadTuner, untuned_reason
    from edge.live.sources import open_source

    if len(layouts) < 2 or untuned_reason(detector.runtime_info):
        return None, loop, [detector]
    progress.describe(f"{OURS}: choosing threads")
    tuner = ThreadTuner(lambda layout: None, layouts)  # the trials are switched here, between calls
    scratch = StageTimes(STAGES, capacity=SCRATCH_FRAMES)
    turns_loop, twins = None, []
    try:
        while not tuner.done:
            layout = tuner.current
            detector.set_threads(layout.threads)  # every loop is paused between trials
            if layout.detectors == 1:
                if not loop.frame(scratch):
                    raise EdgeError("the source ended while the thread count was being measured; use a looping source")
                tuner.frame_done()
                continue
            if turns_loop is None:
                rss_before = rss_bytes()
                twins = [detector.twin(layout.threads) for _ in range(layout.detectors - 1)]
                twins_rss = rss_bytes() - rss_before
                turns_loop = OursTurnsLoop([detector] + twins, open_source(settings.source, loop=True))
            left = tuner.frames_left_in_trial
            if turns_loop.frames(left, scratch, tuner.frame_done) < left:
                raise EdgeError("the source ended while the thread count was being measured; use a looping source")
    except BaseException:
        if turns_loop is not None:
            turns_loop.close()
        raise
    chosen = tuner.chosen
    detector.set_threads(chosen.threads)
    tuning = {"chosen": chosen.key, "detectors": chosen.detectors, "threads": chosen.threads,
              "fps_by_layout": {c.key: round(1.0 / m, 2) for c, m in tuner.medians.items()}}
    if twins:
        tuning["further_detectors_rss_bytes"] = twins_rss
    if chosen.detectors > 1:
        loop.close()
        return tuning, turns_loop, [detector] + twins
    if turns_loop is not None:
        turns_loop.close()
    return tuning, loop, [detector]


def load_measured(model: Path, settings: BenchSettings, threads: int | None = None):
    """A second backend of ``model`` for bare ``invoke()``, and ``(backend, memory)`` of loading it.

    ``memory``: ``rss_load_bytes`` (RSS across the load: the model file read, the interpreter and
    its tensor allocation), ``tensor_bytes`` (every tensor's size, weights included; the arena is
    smaller because intermediate tensors share memory) and ``model_file_bytes``.
    """
    from edge.backends import open_backend

    runtime, options = settings.model_runtime(model)
    rss_before = rss_bytes()
    backend = open_backend(model, runtime, threads, **options)
    return backend, {"rss_load_bytes": rss_bytes() - rss_before, **backend.memory()}


def open_baseline(detector, settings: BenchSettings, threads: int):
    """``(baseline pipeline or None, why it was skipped or None)`` for ``detector``'s model."""
    from edge.backends import is_onnx
    from edge.contract.modelinfo import HEAD_POSTPROCESS

    if not settings.baseline:
        return None, None
    if is_onnx(detector.model_path):
        return None, (f"the usual-pipeline baseline is TFLite-only (it is the TFLite examples' per-frame code on a "
                      f"TFLite interpreter); {detector.model_path.name} is compared with bare invoke() only")
    if detector.head != HEAD_POSTPROCESS:
        return None, (f"the usual-pipeline baseline needs a TFLite_Detection_PostProcess model "
                      f"({detector.model_path.name} has a {detector.head} head)")
    from edge.bench.baseline import BaselinePipeline

    norm = detector.info.normalization if detector.info else None
    indices = {role: spec.index for role, spec in detector.outputs.items()}
    baseline = BaselinePipeline(detector.model_path, output_indices=indices,
                                score_threshold=settings.score_threshold, num_threads=threads,
                                runtime=settings.runtime, mean=norm.mean if norm else 127.5,
                                std=norm.std if norm else 127.5)
    return baseline, None


def measure(detectors: list, baselines: dict[int, object], bare_backend, layouts: list, settings: BenchSettings,
            progress: Progress) -> tuple[dict[str, PipelineRun], dict | None]:
    """Layout choice, warm-up, the timed rounds (bare, ours, the baseline at each thread count,
    interleaved), then the traced frames of ours and of the fastest baseline. Ours runs
    ``detectors[0]`` with its layout measured among ``layouts`` (:func:`tune_layout`), or all of
    ``detectors`` in turn when given several (not tuned). ``result["detectors"]``: those ours ran."""
    from edge.live.sources import open_source

    detector = detectors[0]
    bare = BareLoop(bare_backend)
    pipelines: list[tuple[PipelineRun, object]] = [(new_run("bare", settings, ("invoke",)), bare)]
    tuning = None
    try:
        if len(detectors) > 1:
            ours_loop = OursTurnsLoop(detectors, open_source(settings.source, loop=True))
        else:
            ours_loop = OursLoop(detector, open_source(settings.source, loop=True), capture=settings.capture)
            layouts = layouts if ours_loop.capture_how.startswith("on a thread") else \
                [layout for layout in layouts if layout.detectors == 1]
            try:
                tuning, ours_loop, detectors = tune_layout(detector, ours_loop, layouts, settings, progress)
            except BaseException:
                ours_loop.close()
                raise
        pipelines.append((new_run(OURS, settings), ours_loop))
        for threads, baseline in baselines.items():
            loop = BaselineLoop(baseline, open_source(settings.source, loop=True))
            pipelines.append((new_run(f"{BASELINE}@{threads}", settings), loop))
        for run, loop in pipelines:
            warm_up(run, loop, settings, progress)
        bare.hold_input_of(detector.backend)  # bare invoke() then runs on a real frame, as the pipelines do
        for chunk in round_sizes(settings):
            for run, loop in pipelines:
                timed_chunk(run, loop, chunk, progress)
        runs = {run.name: (run, loop) for run, loop in pipelines}
        base = [runs[name] for name in runs if name.startswith(f"{BASELINE}@")]
        best = max(base, key=lambda pair: pair[0].fps) if base else None
        for run, loop in [runs[OURS]] + ([best] if best else []):
            traced(run, loop, settings.traced_frames, progress, settings.traced_warmup or 0)
    finally:
        for _, loop in pipelines:
            loop.close()
    result = {"bare": runs["bare"][0], OURS: runs[OURS][0], "capture": runs[OURS][1].capture_how,
              "detectors": detectors}
    if best is not None:
        result[BASELINE] = best[0]
        result["baseline_by_threads"] = {name.split("@")[1]: round(run.fps, 3)
                                         for name, (run, _) in runs.items() if name.startswith(f"{BASELINE}@")}
        result["baseline_threads"] = int(best[0].name.split("@")[1])
    return result, tuning


def bench_model(model: Path, settings: BenchSettings, progress: Progress) -> dict:
    """Every figure for one model; ``settings`` as :meth:`BenchSettings.resolved` returns them."""
    from edge.detector.detector import Detector
    from edge.detector.threads import untuned_reason

    model = Path(model)
    candidates = thread_plan(settings)
    progress.describe(f"{model.name}: loading")
    runtime, backend_options = settings.model_runtime(model)
    rss_start = rss_bytes()
    bare_backend, load_memory = load_measured(model, settings, candidates[0])
    rss_before = rss_bytes()
    fixed = settings.detectors if isinstance(settings.detectors, int) else 1
    ours_threads = candidates[0] if fixed == 1 else detector_threads(settings)
    detector = Detector(model, labels=settings.labels, score_threshold=settings.score_threshold,
                        num_threads=ours_threads, runtime=runtime, backend_options=backend_options)
    rss_loaded = rss_bytes()
    detectors = [detector] + [detector.twin(ours_threads) for _ in range(fixed - 1)]
    rss_all_loaded = rss_bytes()
    untuned = untuned_reason(detector.runtime_info) if len(candidates) > 1 else None
    baselines, skipped = {}, None
    for threads in candidates:
        baseline, skipped = open_baseline(detector, settings, threads)
        if baseline is not None:
            baselines[threads] = baseline
    from edge.detector.threads import Layout, layout_candidates

    if fixed > 1 or settings.threads != "auto":
        layouts = [Layout(fixed, ours_threads)]
    else:
        layouts = layout_candidates(several=settings.detectors == "auto" and settings.capture != "inline")
    runs, tuning = measure(detectors, baselines, bare_backend, layouts, settings, progress)
    capture_how = runs.pop("capture")
    ran = runs.pop("detectors")
    further = rss_all_loaded - rss_loaded if len(detectors) > 1 else (tuning or {}).get("further_detectors_rss_bytes")
    info = detector.backend.info
    result: dict = {"model": str(model), "model_name": model.name,
                    "runtime": {"name": info.name, "version": info.version, "threads": info.num_threads,
                                "bare_threads": bare_backend.info.num_threads, "note": info.note,
                                "threads_auto": tuning, "capture": capture_how,
                                "detectors": len(ran), "device": info.device, "fallback": info.fallback,
                                "warnings": list(info.warnings), "threads_not_tuned": untuned},
                    "interpreter_memory": load_memory, "head": detector.head, "input_size": list(detector.input_size)}
    if skipped:
        result["usual_skipped"] = skipped
    ours = runs[OURS]
    result["bare"] = runs["bare"].bare_dict()
    result[OURS] = ours.to_dict()
    result[BASELINE] = runs[BASELINE].to_dict() if BASELINE in runs else None
    if BASELINE in runs:
        result[BASELINE]["threads"] = runs["baseline_threads"]
        result[BASELINE]["fps_by_threads"] = runs["baseline_by_threads"]
    result["rss"] = {"at_start_bytes": rss_start, "before_detector_bytes": rss_before,
                     "after_model_load_bytes": rss_loaded, "after_warmup_bytes": ours.rss_after_warmup,
                     "detector_load_delta_bytes": rss_loaded - rss_before,
                     "further_detectors_load_delta_bytes": further if len(ran) > 1 else None,
                     "peak_rss_process_bytes": peak_rss_bytes()}
    result["ratios"] = ratios(result)
    result["_runs"] = {OURS: ours, BASELINE: runs.get(BASELINE)}  # not JSON: for the plots
    return result


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 6) if b else None


def ratios(result: dict) -> dict:
    """Ours over bare invoke and over the baseline (fps, transient, preprocess, postprocess).

    The keys name the baseline ``usual``, as the report does (see :data:`edge.bench.BASELINE`)."""
    ours, bare, base = result[OURS], result["bare"], result.get(BASELINE)
    out = {"ours_fps_over_bare_fps": _ratio(ours["fps"], bare["fps"])}
    if base:
        ours_t, base_t = ours["memory"]["transient_median_bytes"], base["memory"]["transient_median_bytes"]
        out.update({
            "ours_fps_over_usual_fps": _ratio(ours["fps"], base["fps"]),
            "usual_fps_over_bare_fps": _ratio(base["fps"], bare["fps"]),
            "ours_transient_over_usual_transient": _ratio(ours_t, base_t),
            "usual_transient_bytes_minus_ours": round(base_t - ours_t, 1),
            "ours_preprocess_over_usual_preprocess": _ratio(ours["stages"]["preprocess"]["p50_ms"],
                                                            base["stages"]["preprocess"]["p50_ms"]),
            "ours_postprocess_over_usual_postprocess": _ratio(ours["stages"]["postprocess"]["p50_ms"],
                                                              base["stages"]["postprocess"]["p50_ms"]),
        })
    return out


# ---- every model ----------------------------------------------------------------------------------------


def run_bench(settings: BenchSettings, progress: bool = True) -> dict:
    """Run every model; returns the report (JSON-ready through :func:`edge.bench.report.json_ready`,
    which drops the ``_runs`` entries the plots use)."""
    from edge.live.sources import open_source

    settings.validate()
    source = open_source(settings.source, loop=True)  # fail early, with the source's own message
    try:
        settings = settings.resolved(source)
    finally:
        source.close()
    machine = machine_info()
    bar = Progress(progress_total(settings), enabled=progress)
    started = time.time()
    try:
        results = [bench_model(Path(m), settings, bar) for m in settings.models]
    finally:
        bar.close()
    return {"edgekit_bench": REPORT_FORMAT, "started_unix": round(started, 1),
            "seconds": round(time.time() - started, 1), "machine": machine, "settings": settings.to_dict(),
            "command": command_line(), "models": results}


def run_and_write(settings: BenchSettings, out_dir: Path, name: str, command: str) -> dict:
    """Run, print the table, write ``NAME.json`` + ``NAME.md`` (+ plots) under ``out_dir``; for ``benchmarks/``."""
    from edge.bench.report import format_summary, write_json, write_report

    report = run_bench(settings)
    report["command"] = command
    print(format_summary(report))
    out_dir = Path(out_dir)
    write_json(report, out_dir / f"{name}.json")
    md, plots, note = write_report(report, out_dir, name)
    print(f"wrote {out_dir / (name + '.json')}, {md}" + "".join(f", {p}" for p in plots))
    if note:
        print(note, file=sys.stderr)
    return report
