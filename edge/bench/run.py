"""``edge bench``: memory per frame and stage latency of our pipeline, the usual one and bare ``invoke()``.

One call benchmarks one or more models on the same source, in one process, and reports every
figure of ours next to the usual pipeline's (:mod:`edge.bench.baseline`) as a ratio. Per model, in order:

1. **interpreter**: a bare interpreter is loaded (RSS across ``Interpreter()`` and across
   ``allocate_tensors()``, and the sum of all tensor sizes), then ``invoke()`` alone is timed
   ``frames`` times on it: the ceiling any pipeline can reach with this model and thread count;
2. **ours**: :class:`~edge.detector.detector.Detector` fed by :class:`~edge.live.capture.Capture` (the capture
   thread and its frame ring, so capture, decode and the resize overlap ``invoke()``), as ``edge
   run`` does; its ``preprocess`` stage is what is left on the inference thread (colour order and
   encoding into the tensor);
3. **usual**: :class:`~edge.bench.baseline.UsualPipeline`, reading the same source synchronously.

Each pipeline runs ``warmup`` frames, then ``frames`` *timed* frames (tracemalloc off; per-stage
durations into :class:`~edge.detector.stages.StageTimes`; RSS every ``rss_every`` frames for the slope; the
three pipelines alternate in ``rounds`` rounds so that load from other processes falls on all of
them alike), then ``mem_frames`` *traced* frames under :class:`~edge.bench.memprofile.FrameMemoryProbe` (net heap growth and
transient per frame; run apart from the timed frames because tracing slows every allocation,
which would penalise the pipeline that allocates more).

Stages (seconds): ``capture_wait`` (ours: waiting for the capture thread's newest frame; usual:
the synchronous ``read()``), ``preprocess``, ``invoke``, ``postprocess``, ``sinks`` (none in a
bench: the cost of the empty sink loop). matplotlib is imported only by :func:`write_plots`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge.errors import EdgeError
from edge.backends.tflite import tensor_bytes as interpreter_tensor_bytes
from edge.memory import peak_rss_bytes, rss_bytes
from edge.bench.memprofile import TRACED_WARMUP, FrameMemoryProbe, RssSampler
from edge.detector.stages import STAGES, StageTimes
from edge.detector.step import Frame, run_frame

GET_TIMEOUT = 10.0  # seconds to wait for a frame before a run is declared stalled
KB = 1024
MB = 1024 * 1024

#: The issue's goals: (key, description, test on a model's result dict).
GOALS: tuple[tuple[str, str, Callable[[dict], bool | None]], ...] = (
    ("zero_growth", "ours: zero net heap growth per frame (trend under 1 B/frame)",
     lambda r: abs(r["ours"]["memory"]["growth_trend_bytes_per_frame"]) < 1.0),
    ("transient_16k", "ours: transient under 16 KB per frame",
     lambda r: r["ours"]["memory"]["transient_median_bytes"] < 16 * KB),
    ("rss_slope_10", "ours: RSS slope under 10 B/frame",
     lambda r: r["ours"]["rss"]["slope_bytes_per_frame"] < 10.0),
    ("bare_097", "ours: pipeline fps >= 0.97 x bare invoke fps",
     lambda r: r["ratios"]["ours_fps_over_bare_fps"] >= 0.97),
    ("usual_fps_12", "ours: >= 1.2 x the usual pipeline's fps",
     lambda r: None if r.get("usual") is None else r["ratios"]["ours_fps_over_usual_fps"] >= 1.2),
    ("usual_transient_1000", "ours: <= 1/1000 of the usual transient per frame",
     lambda r: None if r.get("usual") is None else r["ratios"]["ours_transient_over_usual_transient"] <= 1e-3),
)


@dataclass
class BenchSettings:
    """What one ``edge bench`` call runs. Frame counts are per pipeline; times in seconds."""

    models: list[Path]
    source: str = "synthetic"
    frames: int = 500
    warmup: int = 50
    mem_frames: int | None = None  # traced frames; None: same as frames
    threads: int | None = None
    runtime: str | None = None
    score_threshold: float = 0.5
    rss_every: int = 10
    traced_warmup: int = TRACED_WARMUP  # frames run under tracing before recording (see FrameMemoryProbe.run)
    rounds: int = 10  # timed frames of bare, ours and usual alternate in this many rounds
    usual: bool = True
    labels: Path | None = None

    def validate(self) -> None:
        if not self.models:
            raise EdgeError("edge bench: give at least one MODEL")
        for model in self.models:
            if not Path(model).is_file():
                raise EdgeError(f"{model}: no such model file")
        if self.frames < 2:
            raise EdgeError(f"--frames {self.frames}: must be at least 2")
        if self.warmup < 0:
            raise EdgeError(f"--warmup {self.warmup}: must be 0 or more")
        if self.mem_frames is not None and self.mem_frames < 1:
            raise EdgeError(f"--mem-frames {self.mem_frames}: must be at least 1")
        if self.rss_every < 1:
            raise EdgeError(f"--rss-every {self.rss_every}: must be at least 1")
        if self.traced_warmup < 0:
            raise EdgeError(f"--traced-warmup {self.traced_warmup}: must be 0 or more")
        if self.rounds < 1:
            raise EdgeError(f"--rounds {self.rounds}: must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise EdgeError(f"--threads {self.threads}: must be at least 1")

    @property
    def traced_frames(self) -> int:
        return self.mem_frames if self.mem_frames is not None else self.frames

    def to_dict(self) -> dict:
        return {"models": [str(m) for m in self.models], "source": self.source, "frames": self.frames,
                "warmup": self.warmup, "mem_frames": self.traced_frames, "threads": self.threads,
                "runtime": self.runtime, "score_threshold": self.score_threshold, "rss_every": self.rss_every,
                "rounds": self.rounds, "traced_warmup": self.traced_warmup, "usual": self.usual}


# ---- progress -------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr (tqdm when importable, which ai-edge-litert installs), or nothing.

    ``advance`` is called between frames, never inside a measured window.
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = None
        self._plain_next = 0.0
        self.total, self.done = total, 0
        self.enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False,
                             mininterval=0.5)
        except ImportError:
            self._bar = None

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=False)
        elif self.enabled:
            print(f"edge bench: {text}", file=sys.stderr)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() >= self._plain_next:
            self._plain_next = time.monotonic() + 5.0
            print(f"edge bench: {self.done}/{self.total} frames", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


_PROGRESS_EVERY = 25  # frames between progress updates


# ---- machine --------------------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU, cores, OS and library versions: every benchmark figure depends on them."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import cv2

        versions["opencv"] = cv2.__version__
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ai-edge-litert", "tflite-runtime", "tensorflow"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable,
            "os": platform.platform(), "versions": versions,
            "load_average_1min_at_start": None if load is None else round(load, 2)}


# ---- the loops --------------------------------------------------------------------------------------


def _stage_summary(times: StageTimes) -> dict:
    """Per stage: median, p90, p99, max and mean in milliseconds."""
    out = {}
    for stage in times.stages:
        p = times.percentiles(stage)
        out[stage] = {"p50_ms": round(p["p50"] * 1e3, 4), "p90_ms": round(p["p90"] * 1e3, 4),
                      "p99_ms": round(p["p99"] * 1e3, 4), "max_ms": round(p["max"] * 1e3, 4),
                      "mean_ms": round(p["mean"] * 1e3, 4)}
    return out


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
    memory_profile: object = None  # MemoryProfile, kept for the plots

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        stages = _stage_summary(self.times)
        total = self.times.window(self.times.stages[0])
        for stage in self.times.stages[1:]:
            total = total + self.times.window(stage)
        frame_ms = {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        if total.size:
            p50, p90, p99 = np.percentile(total, (50, 90, 99)) * 1e3
            frame_ms = {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4),
                        "p99_ms": round(float(p99), 4), "max_ms": round(float(total.max()) * 1e3, 4)}
        return {"frames": self.frames, "seconds": round(self.seconds, 4), "fps": round(self.fps, 3),
                "frames_dropped": self.dropped, "stages": stages, "frame": frame_ms,
                "rss": {**self.rss.summary(), "after_warmup_bytes": self.rss_after_warmup},
                "memory": self.memory}


class _OursLoop:
    """Our pipeline as ``edge run`` runs it: capture thread + Detector, reused buffers throughout."""

    def __init__(self, detector, source) -> None:
        from edge.live.capture import Capture

        self.detector = detector
        self.capture = Capture(source, prepare=detector.buffer.resize).start()
        self.sinks: list = []

    def frame(self, times: StageTimes) -> bool:
        capture = self.capture
        t0 = time.perf_counter()
        frame = capture.get(GET_TIMEOUT)
        if frame is None:
            return False
        try:
            _step_and_sinks(self.detector, frame, self.sinks, times, t0)
        finally:
            capture.release(frame)
        return True

    @property
    def dropped(self) -> int:
        return self.capture.counters.frames_dropped

    def close(self) -> None:
        self.capture.stop()


def _step_and_sinks(pipeline, frame, sinks: list, times: StageTimes, t0: float) -> None:
    """One frame through :func:`~edge.detector.step.run_frame` (the step ``edge run`` uses), then the sinks."""
    results = run_frame(pipeline, frame, times, t0)
    t4 = time.perf_counter()
    for sink in sinks:
        sink.write(frame, results, None)
    times.record("sinks", time.perf_counter() - t4)


class _UsualLoop:
    """The usual pipeline: read a frame, then the examples' per-frame code, all on one thread."""

    def __init__(self, usual, source) -> None:
        self.usual = usual
        self.source = source
        self.sinks: list = []
        self.dropped = 0
        self._frame = Frame()

    def frame(self, times: StageTimes) -> bool:
        t0 = time.perf_counter()
        image = self.source.read()
        if image is None:
            return False
        self._frame.image = image
        self._frame.seq += 1
        _step_and_sinks(self.usual, self._frame, self.sinks, times, t0)
        return True

    def close(self) -> None:
        self.source.close()


class _BareLoop:
    """``invoke()`` alone, on whatever input the interpreter holds: the ceiling for any pipeline."""

    dropped = 0

    def __init__(self, interpreter) -> None:
        self.interpreter = interpreter

    def frame(self, times: StageTimes) -> bool:
        clock = time.perf_counter
        t0 = clock()
        self.interpreter.invoke()
        times.record("invoke", clock() - t0)
        return True

    def close(self) -> None:
        pass


def _copy_input(src, dst) -> None:
    """Copy the image input tensor of ``src`` (holding a real frame) into ``dst``."""
    for d in src.get_input_details():
        if len(d["shape"]) == 4 and d["shape"][-1] == 3:
            dst.set_tensor(d["index"], src.get_tensor(d["index"]))


def resident_stage_times(stages: tuple[str, ...], capacity: int) -> StageTimes:
    """StageTimes whose arrays are already resident: its np.zeros pages would otherwise become
    resident one by one as frames are recorded, reading as ~40 B/frame of RSS growth."""
    times = StageTimes(stages, capacity=capacity)
    times._values.fill(0.0)
    return times


def _new_run(name: str, settings: BenchSettings, stages: tuple[str, ...] = STAGES) -> PipelineRun:
    return PipelineRun(name, resident_stage_times(stages, settings.frames), RssSampler(settings.frames, settings.rss_every))


def _warm_up(run: PipelineRun, loop, settings: BenchSettings, progress: Progress) -> None:
    progress.describe(f"{run.name}: warm-up")
    scratch = StageTimes(run.times.stages, capacity=64)
    for i in range(settings.warmup):
        if not loop.frame(scratch):
            raise EdgeError(f"--source {settings.source}: ended during warm-up; use a longer or looping source")
        if i % _PROGRESS_EVERY == 0:
            progress.advance(min(_PROGRESS_EVERY, settings.warmup - i))
    run.rss_after_warmup = rss_bytes()


def _timed_chunk(run: PipelineRun, loop, frames: int, progress: Progress) -> None:
    """``frames`` more timed frames (tracemalloc off), appended to ``run``'s stage times and RSS samples."""
    progress.describe(f"{run.name}: timed")
    dropped_before = loop.dropped
    sampler, times = run.rss, run.times
    sampler.segment += 1  # RSS jumps while other pipelines ran between chunks are not this one's
    first = run.frames
    done = 0
    start = time.perf_counter()
    for i in range(first, first + frames):
        if not loop.frame(times):
            break
        done += 1
        sampler.maybe_sample(i)
        if i % _PROGRESS_EVERY == 0:
            progress.advance(min(_PROGRESS_EVERY, first + frames - i))
    run.seconds += time.perf_counter() - start
    run.frames += done
    run.dropped += loop.dropped - dropped_before


def _traced(run: PipelineRun, loop, frames: int, progress: Progress, warmup: int = TRACED_WARMUP) -> None:
    """``frames`` frames under :class:`FrameMemoryProbe` after ``warmup`` traced, unrecorded frames.

    The warm-up must cover every object a step replaces from time to time: those made before
    tracing began read as growth when first replaced (the synthetic source respawns one of its
    up to 4 shapes every 90 frames, so it needs ~360).
    """
    progress.describe(f"{run.name}: traced")
    probe = FrameMemoryProbe(frames, rss_every=run.rss.every)
    scratch = StageTimes(run.times.stages, capacity=64)
    traced_times = resident_stage_times(run.times.stages, frames)
    with probe:
        for _ in range(warmup):
            loop.frame(scratch)
        begin, end = probe.begin, probe.end
        for i in range(frames):
            begin()
            ok = loop.frame(traced_times)
            end()
            if not ok:
                break
            if i % _PROGRESS_EVERY == 0:
                progress.advance(min(_PROGRESS_EVERY, frames - i))
        profile = probe.profile()
    run.memory = profile.summary()
    run.memory_profile = profile


def live_loop_frames(settings: BenchSettings) -> int:
    return max(20, settings.frames // 4)


def _live_loop_check(detector, settings: BenchSettings, progress: Progress) -> dict:
    """fps of ``edge run``'s own :class:`~edge.live.loop.LiveLoop` (no sinks), to confirm the bench's loop."""
    from edge.live.loop import LiveLoop
    from edge.live.sources import open_source

    frames = live_loop_frames(settings)
    progress.describe("ours: edge run loop")
    summary = LiveLoop(detector, open_source(settings.source, loop=True), [], max_frames=frames,
                       stats_every=0, rss_every=0, log=lambda message: None).run()
    progress.advance(frames)
    return {"frames": summary.frames_processed, "fps": round(summary.fps, 3), "frames_dropped": summary.frames_dropped,
            "invoke_p50_ms": round(summary.stages.get("invoke", {}).get("p50", 0.0) * 1e3, 4)
            if summary.stages else None}


def interpreter_memory(model: Path, runtime: str | None, threads: int | None):
    """Load a bare interpreter and measure it: ``(interpreter, runtime_info, dict of bytes)``.

    RSS is read across ``Interpreter()`` and across ``allocate_tensors()``; ``tensor_bytes`` sums
    every tensor's size from ``get_tensor_details()`` (weights included; the arena is smaller
    because intermediate tensors share memory).
    """
    from edge.backends.tflite import load_interpreter

    rss0 = rss_bytes()
    interpreter, runtime_info = load_interpreter(model, runtime, threads)
    rss1 = rss_bytes()
    try:
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise EdgeError(f"{model}: cannot allocate tensors ({exc})") from None
    rss2 = rss_bytes()
    tensor_bytes = interpreter_tensor_bytes(interpreter)
    return interpreter, runtime_info, {
        "rss_interpreter_bytes": rss1 - rss0,
        "rss_allocate_tensors_bytes": rss2 - rss1,
        "rss_total_bytes": rss2 - rss0,
        "tensor_bytes": tensor_bytes,
        "model_file_bytes": Path(model).stat().st_size,
    }


def bench_model(model: Path, settings: BenchSettings, progress: Progress) -> dict:
    """Every figure for one model.

    The timed frames of bare ``invoke()``, ours and the usual pipeline are interleaved in
    ``settings.rounds`` rounds, so that load from other processes (boards and CI machines are
    shared) falls on all three alike; the traced frames follow, ours then usual.
    """
    from edge.detector.detector import Detector
    from edge.live.sources import open_source

    model = Path(model)
    result: dict = {"model": str(model), "model_name": model.name}
    rss_start = rss_bytes()
    progress.describe(f"{model.name}: loading")
    interpreter, runtime_info, memory = interpreter_memory(model, settings.runtime, settings.threads)
    result["runtime"] = {"name": runtime_info.name, "version": runtime_info.version,
                         "threads": runtime_info.num_threads, "note": runtime_info.note}
    result["interpreter_memory"] = memory

    rss_before_load = rss_bytes()
    detector = Detector(model, labels=settings.labels, score_threshold=settings.score_threshold,
                        num_threads=settings.threads, runtime=settings.runtime)
    rss_after_load = rss_bytes()
    result["head"] = detector.head
    result["input_size"] = list(detector.input_size)

    usual = None
    if settings.usual:
        if detector.head != "postprocess":
            result["usual_skipped"] = ("the usual-pipeline baseline needs a TFLite_Detection_PostProcess model "
                                       f"({model.name} has a raw head)")
        else:
            from edge.bench.baseline import UsualPipeline

            norm = detector.info.normalization if detector.info else None
            usual = UsualPipeline(model, output_indices={role: out.index for role, out in detector.outputs.items()},
                                  score_threshold=settings.score_threshold, num_threads=settings.threads,
                                  runtime=settings.runtime, mean=norm.mean if norm else 127.5,
                                  std=norm.std if norm else 127.5)

    pipelines: list[tuple[PipelineRun, object]] = [(_new_run("bare", settings, ("invoke",)), _BareLoop(interpreter))]
    loops = [pipelines[0][1]]
    try:
        ours_loop = _OursLoop(detector, open_source(settings.source, loop=True))
        loops.append(ours_loop)
        pipelines.append((_new_run("ours", settings), ours_loop))
        if usual is not None:
            usual_loop = _UsualLoop(usual, open_source(settings.source, loop=True))
            loops.append(usual_loop)
            pipelines.append((_new_run("usual", settings), usual_loop))
        for run, loop in pipelines:
            _warm_up(run, loop, settings, progress)
        # Bare invoke() then runs on a real frame, as the pipelines do (NMS work depends on it).
        _copy_input(detector.backend.interpreter, interpreter)
        rounds = max(1, min(settings.rounds, settings.frames))
        for r in range(rounds):
            chunk = settings.frames * (r + 1) // rounds - settings.frames * r // rounds
            for run, loop in pipelines:
                _timed_chunk(run, loop, chunk, progress)
        for run, loop in pipelines[1:]:
            _traced(run, loop, settings.traced_frames, progress, settings.traced_warmup)
        ours_loop.close()
        result["live_loop"] = _live_loop_check(detector, settings, progress)
    finally:
        for loop in loops:
            loop.close()
    runs = {run.name: run for run, _ in pipelines}
    bare, ours = runs["bare"], runs["ours"]
    result["bare"] = {"frames": bare.frames, "seconds": round(bare.seconds, 4), "fps": round(bare.fps, 3),
                      "invoke": _stage_summary(bare.times)["invoke"]}
    result["ours"] = ours.to_dict()
    result["usual"] = runs["usual"].to_dict() if "usual" in runs else None
    result["rss"] = {"at_start_bytes": rss_start, "before_detector_bytes": rss_before_load,
                     "after_model_load_bytes": rss_after_load,
                     "after_warmup_bytes": ours.rss_after_warmup,
                     "detector_load_delta_bytes": rss_after_load - rss_before_load,
                     "peak_rss_process_bytes": peak_rss_bytes()}
    result["ratios"] = _ratios(result)
    result["_runs"] = {"ours": ours, "usual": runs.get("usual")}  # not JSON: for the plots
    return result


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 6) if b else None


def _ratios(r: dict) -> dict:
    ours, bare, usual = r["ours"], r["bare"], r.get("usual")
    ratios = {"ours_fps_over_bare_fps": _ratio(ours["fps"], bare["fps"])}
    if usual:
        ratios.update({
            "ours_fps_over_usual_fps": _ratio(ours["fps"], usual["fps"]),
            "usual_fps_over_bare_fps": _ratio(usual["fps"], bare["fps"]),
            "ours_transient_over_usual_transient": _ratio(ours["memory"]["transient_median_bytes"],
                                                         usual["memory"]["transient_median_bytes"]),
            "usual_transient_bytes_minus_ours": round(usual["memory"]["transient_median_bytes"]
                                                      - ours["memory"]["transient_median_bytes"], 1),
            "ours_preprocess_over_usual_preprocess": _ratio(ours["stages"]["preprocess"]["p50_ms"],
                                                            usual["stages"]["preprocess"]["p50_ms"]),
            "ours_postprocess_over_usual_postprocess": _ratio(ours["stages"]["postprocess"]["p50_ms"],
                                                              usual["stages"]["postprocess"]["p50_ms"]),
        })
    return ratios


def evaluate_goals(result: dict) -> list[dict]:
    """The issue's goals for one model: ``[{key, goal, met (True/False/None if not applicable)}]``."""
    out = []
    for key, text, test in GOALS:
        try:
            met = test(result)
        except (KeyError, TypeError):
            met = None
        out.append({"key": key, "goal": text, "met": met})
    return out


def run_bench(settings: BenchSettings, progress: bool = True) -> dict:
    """Run every model; returns the JSON-ready report (plus ``_runs`` entries used by the plots)."""
    settings.validate()
    from edge.live.sources import open_source

    open_source(settings.source, loop=True).close()  # fail early, with the source's own message
    machine = machine_info()
    pipelines = 3 if settings.usual else 2
    per_model = ((settings.warmup + settings.frames) * pipelines + settings.traced_frames * (pipelines - 1)
                 + live_loop_frames(settings))
    bar = Progress(per_model * len(settings.models), enabled=progress)
    started = time.time()
    try:
        results = [bench_model(Path(m), settings, bar) for m in settings.models]
    finally:
        bar.close()
    for r in results:
        r["goals"] = evaluate_goals(r)
    return {"edgekit_bench": 1, "started_unix": round(started, 1), "seconds": round(time.time() - started, 1),
            "machine": machine, "settings": settings.to_dict(), "command": _command_line(), "models": results}


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py")):
        argv = ["edge"] + argv[1:]
    elif argv and Path(argv[0]).name == "edge":
        argv[0] = "edge"
    return " ".join(argv)


# ---- output -----------------------------------------------------------------------------------------


def json_ready(report: dict) -> dict:
    """The report without the in-memory runs."""
    out = dict(report)
    out["models"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in report["models"]]
    return out


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(report: dict, path: Path) -> None:
    atomic_write(path, json.dumps(json_ready(report), indent=2) + "\n")


def human_bytes(n: float | None, signed: bool = False) -> str:
    if n is None:
        return "-"
    sign = "+" if signed and n > 0 else ""
    a = abs(n)
    if a >= MB:
        return f"{sign}{n / MB:.2f} MB"
    if a >= 10 * KB:
        return f"{sign}{n / KB:.1f} KB"
    if a == int(a):
        return f"{sign}{int(n)} B"
    return f"{sign}{n:.1f} B"


def _fmt_ratio(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}x"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison table: one row per model and pipeline."""
    header = ["model", "pipeline", "fps", "vs bare", "vs usual", "invoke p50", "pre p50", "post p50",
              "growth/frame", "transient/frame", "RSS slope"]  # growth: the trend (see MemoryProfile)
    rows = []
    for r in report["models"]:
        bare = r["bare"]
        rows.append([r["model_name"], "bare invoke()", f"{bare['fps']:.1f}", "1.00x", "", f"{bare['invoke']['p50_ms']:.2f} ms",
                     "", "", "", "", ""])
        for name in ("ours", "usual"):
            p = r.get(name)
            if not p:
                continue
            m = p["memory"]
            vs_usual = ""
            if name == "ours" and r.get("usual"):
                vs_usual = _fmt_ratio(r["ratios"]["ours_fps_over_usual_fps"])
            rows.append([
                "", name, f"{p['fps']:.1f}", _fmt_ratio(_ratio(p["fps"], bare["fps"])), vs_usual,
                f"{p['stages']['invoke']['p50_ms']:.2f} ms", f"{p['stages']['preprocess']['p50_ms']:.3f} ms",
                f"{p['stages']['postprocess']['p50_ms']:.3f} ms",
                human_bytes(m["growth_trend_bytes_per_frame"], signed=True), human_bytes(m["transient_median_bytes"]),
                f"{p['rss']['slope_bytes_per_frame']:+.1f} B",
            ])
    return header, rows


def format_table(report: dict) -> str:
    header, rows = table_rows(report)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    """The terminal output: table, then one line per model with the ours-vs-usual memory ratio and goals."""
    m = report["machine"]
    s = report["settings"]
    lines = [f"edge bench: {m['cpu']}, {m['usable_cores']} cores; source {s['source']}; "
             f"{s['frames']} timed + {s['mem_frames']} traced frames per pipeline after {s['warmup']} warm-up",
             "", format_table(report), ""]
    for r in report["models"]:
        ratios = r["ratios"]
        if r.get("usual"):
            ours_t = r["ours"]["memory"]["transient_median_bytes"]
            usual_t = r["usual"]["memory"]["transient_median_bytes"]
            lines.append(f"{r['model_name']}: transient per frame {human_bytes(ours_t)} (ours) vs "
                         f"{human_bytes(usual_t)} (usual) = {ratios['ours_transient_over_usual_transient']:.2e}; "
                         f"fps {ratios['ours_fps_over_usual_fps']:.2f}x usual, {ratios['ours_fps_over_bare_fps']:.3f}x bare")
        elif r.get("usual_skipped"):
            lines.append(f"{r['model_name']}: usual pipeline skipped: {r['usual_skipped']}")
        met = [g for g in r["goals"] if g["met"] is not None]
        missed = [g["goal"] for g in met if not g["met"]]
        lines.append(f"  goals met {sum(1 for g in met if g['met'])}/{len(met)}"
                     + (f"; missed: {'; '.join(missed)}" if missed else ""))
    return "\n".join(lines)


def format_markdown(report: dict, plots: list[str] | None = None, plots_note: str | None = None) -> str:
    """The readable report: machine, settings, comparison table, per-stage latency, memory, goals."""
    m, s = report["machine"], report["settings"]
    v = m["versions"]
    out = ["# edge bench report", ""]
    if report.get("command"):
        out += ["```", report["command"], "```", ""]
    out += [f"- Machine: {m['cpu']} ({m['machine']}), {m['usable_cores']} usable of {m['cores']} cores, {m['os']}",
            "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- Load average at start: {m['load_average_1min_at_start']} (other processes share these cores)",
            f"- Source: `{s['source']}`; per pipeline {s['warmup']} warm-up, {s['frames']} timed frames "
            f"(tracemalloc off), {s['mem_frames']} traced frames (tracemalloc on); RSS every {s['rss_every']} frames",
            f"- Run time: {report['seconds']} s", ""]
    out += ["## Comparison", ""]
    header, rows = table_rows(report)
    out += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c or " " for c in row) + " |" for row in rows]
    out.append("")
    out += ["*growth/frame*: net Python heap growth per frame (tracemalloc; least-squares trend of the cumulative "
            "growth over the traced frames, the mean is in the table below); "
            "*transient/frame*: median peak above the frame's start/end level, i.e. bytes allocated and freed "
            "within the frame; *RSS slope*: least-squares bytes per frame over the timed frames. "
            "Ours runs capture on its own thread (as `edge run` does); the usual pipeline reads synchronously, "
            "as the examples do. A few tens of bytes of growth per frame in the usual pipeline over a short "
            "run are numpy's caches of small blocks (shape arrays) being refilled under tracing: bounded, "
            "smaller per frame the longer the run, and absent from RSS.", ""]
    for r in report["models"]:
        out += [f"## {r['model_name']}", "",
                f"Runtime {r['runtime']['name']} {r['runtime']['version']}, {r['runtime']['threads']} thread(s); "
                f"{r['head']} head, input {r['input_size'][1]}x{r['input_size'][0]}.", ""]
        if r["runtime"].get("note"):
            out += [f"> {r['runtime']['note']}", ""]
        im, rss = r["interpreter_memory"], r["rss"]
        out += ["| memory | bytes |", "|---|---|",
                f"| model file | {human_bytes(im['model_file_bytes'])} |",
                f"| RSS across `Interpreter()` | {human_bytes(im['rss_interpreter_bytes'], True)} |",
                f"| RSS across `allocate_tensors()` | {human_bytes(im['rss_allocate_tensors_bytes'], True)} |",
                f"| sum of tensor sizes (`get_tensor_details()`) | {human_bytes(im['tensor_bytes'])} |",
                f"| RSS at start | {human_bytes(rss['at_start_bytes'])} |",
                f"| RSS after Detector load | {human_bytes(rss['after_model_load_bytes'])} "
                f"({human_bytes(rss['detector_load_delta_bytes'], True)}) |",
                f"| RSS after warm-up | {human_bytes(rss['after_warmup_bytes'])} |",
                f"| peak RSS of the process so far (VmHWM) | {human_bytes(rss['peak_rss_process_bytes'])} |", ""]
        out += ["| stage (ms) | ours p50 | p90 | p99 | max | usual p50 | p90 | p99 | max |", "|---|" + "---|" * 8]
        usual = r.get("usual")
        for stage in STAGES + ("frame",):
            o = r["ours"]["stages"][stage] if stage != "frame" else r["ours"]["frame"]
            u = (usual["stages"][stage] if stage != "frame" else usual["frame"]) if usual else None
            cells = [f"{o[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
            cells += [f"{u[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")] if u else ["-"] * 4
            out.append(f"| {stage} | " + " | ".join(cells) + " |")
        live = r.get("live_loop")
        live_text = (f" `edge run`'s own loop (LiveLoop, no sinks), run after: {live['fps']:.1f} fps over "
                     f"{live['frames']} frames." if live else "")
        out += ["", f"Bare `invoke()`: {r['bare']['fps']:.1f} fps, p50 {r['bare']['invoke']['p50_ms']:.2f} ms, "
                f"p99 {r['bare']['invoke']['p99_ms']:.2f} ms. Ours: {r['ours']['fps']:.1f} fps "
                f"({r['ours']['frames_dropped']} dropped)"
                + (f"; usual: {usual['fps']:.1f} fps." if usual else ".") + live_text, ""]
        out += ["| memory per frame | ours | usual |", "|---|---|---|"]
        keys = [("growth_trend_bytes_per_frame", "net heap growth (trend)"),
                ("growth_bytes_per_frame", "net heap growth (mean)"), ("growth_frames_nonzero", "frames with growth != 0"),
                ("transient_median_bytes", "transient, median"), ("transient_p99_bytes", "transient, p99"),
                ("transient_max_bytes", "transient, max"), ("probe_floor_transient_bytes", "probe floor (subtracted)")]
        for key, label in keys:
            o = r["ours"]["memory"].get(key)
            u = usual["memory"].get(key) if usual else None
            fmt = (lambda x: "-" if x is None else str(x)) if key == "growth_frames_nonzero" else human_bytes
            out.append(f"| {label} | {fmt(o)} | {fmt(u)} |")
        for label, key in (("RSS slope, timed frames (B/frame)", "slope_bytes_per_frame"),):
            o = r["ours"]["rss"].get(key)
            u = usual["rss"].get(key) if usual else None
            out.append(f"| {label} | {o:+.2f} | " + (f"{u:+.2f}" if u is not None else "-") + " |")
        out.append("")
        if r.get("usual_skipped"):
            out += [f"Usual pipeline skipped: {r['usual_skipped']}.", ""]
        out += ["Goals:", ""]
        for g in r["goals"]:
            mark = {True: "met", False: "**missed**", None: "n/a"}[g["met"]]
            out.append(f"- {g['goal']}: {mark}")
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    elif plots_note:
        out += ["## Plots", "", plots_note, ""]
    return "\n".join(out)


def write_plots(report: dict, directory: Path, stem: str = "bench") -> list[Path]:
    """PNG plots: RSS over frames (ours vs usual), latency per stage, transient per frame.

    Raises ImportError when matplotlib is absent (the board install); the caller reports it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    models = report["models"]
    colors = {"ours": "tab:green", "usual": "tab:red"}
    paths = []

    fig, axes = plt.subplots(len(models), 1, figsize=(9, 3.2 * len(models)), squeeze=False)
    for ax, r in zip(axes[:, 0], models):
        for name, run in r["_runs"].items():
            if run is None or run.rss.count == 0:
                continue
            frames, rss = run.rss.frames, run.rss.rss
            ax.plot(frames, (rss - rss[0]) / KB, color=colors[name], lw=1.2,
                    label=f"{name}: slope {run.rss.slope():+.1f} B/frame (within rounds)")
            if name == "ours":
                segments = run.rss.segments
                for boundary in frames[1:][np.diff(segments) != 0]:
                    ax.axvline(boundary, color="grey", ls=":", lw=0.8)
        ax.set_title(f"{r['model_name']}: RSS over the timed frames, relative to the first sample\n"
                     "(dotted: round boundaries, where the other pipelines ran in between)", fontsize=10)
        ax.set_xlabel("frame")
        ax.set_ylabel("RSS change (KB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}_rss.png"))
    plt.close(fig)

    fig, axes = plt.subplots(len(models), 1, figsize=(9, 3.4 * len(models)), squeeze=False)
    for ax, r in zip(axes[:, 0], models):
        data, positions, tick_pos, box_colors = [], [], [], []
        for s_i, stage in enumerate(STAGES):
            for p_i, name in enumerate(("ours", "usual")):
                run = r["_runs"].get(name)
                if run is None:
                    continue
                data.append(run.times.window(stage) * 1e3)
                positions.append(s_i * 3 + p_i)
                box_colors.append(colors[name])
            tick_pos.append(s_i * 3 + 0.5)
        parts = ax.boxplot(data, positions=positions, widths=0.8, whis=(1, 99), showfliers=False, patch_artist=True)
        for patch, color in zip(parts["boxes"], box_colors):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_xticks(tick_pos)
        ax.set_xticklabels(STAGES)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylabel("ms (whiskers p1-p99)")
        ax.set_title(f"{r['model_name']}: latency per stage, ours (green) vs usual (red)", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}_latency.png"))
    plt.close(fig)

    fig, axes = plt.subplots(len(models), 1, figsize=(9, 3.2 * len(models)), squeeze=False)
    for ax, r in zip(axes[:, 0], models):
        for name, run in r["_runs"].items():
            profile = getattr(run, "memory_profile", None)
            if profile is None or profile.frames == 0:
                continue
            ax.plot(np.arange(profile.frames), np.maximum(profile.transient, 1), color=colors[name], lw=0.8,
                    label=f"{name}: median {human_bytes(profile.transient_median)}")
        ax.set_yscale("log")
        ax.set_xlabel("traced frame")
        ax.set_ylabel("bytes allocated and freed")
        ax.set_title(f"{r['model_name']}: transient memory per frame (tracemalloc)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, directory / f"{stem}_transient.png"))
    plt.close(fig)
    return paths


def _save(fig, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_report(report: dict, directory: Path, stem: str = "bench") -> tuple[Path, list[Path], str | None]:
    """``<stem>.md`` and the PNG plots in ``directory``; returns (markdown path, plots, why plots were skipped)."""
    directory = Path(directory)
    plots: list[Path] = []
    note = None
    try:
        plots = write_plots(report, directory, stem)
    except ImportError as exc:
        note = (f"Plots skipped: matplotlib is not installed ({exc}); "
                "pip install 'edgekit[plots]' to get them.")
    md_path = directory / f"{stem}.md"
    atomic_write(md_path, format_markdown(report, [str(p) for p in plots], note))
    return md_path, plots, note


def run_and_write(settings: "BenchSettings", out_dir: Path, name: str, command: str) -> dict:
    """Run, print the table, write ``NAME.json`` + markdown (+ plots) under ``out_dir``; for benchmarks/."""
    report = run_bench(settings)
    report["command"] = command
    print(format_summary(report))
    write_json(report, out_dir / f"{name}.json")
    md, plots, note = write_report(report, out_dir, name)
    print(f"wrote {out_dir / (name + '.json')}, {md}" + "".join(f", {p}" for p in plots))
    if note:
        print(note, file=sys.stderr)
    return report
