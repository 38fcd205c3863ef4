"""Measuring what :mod:`edge.plan.predict` predicts: ``edge run``'s pipeline, for real, in this process.

Run it in a fresh process (``python -m edge.plan.measure MODEL --source WxH ...``; ``edge plan
--measure`` does) so that nothing else is resident. It builds what ``edge run`` builds, in the same
order, from the same classes: the backend (LiteRT with its default XNNPACK delegate), one
:class:`~edge.detector.detector.Detector` per camera on that one backend (each with its own
FrameBuffer and Detections; frames take turns on the interpreter), a ``synthetic:WxH`` source, the
sinks and a :class:`~edge.live.loop.LiveLoop` per camera, and runs ``--max-frames`` frames on each.
It records RSS at each boundary and the peak (VmHWM) at the end, and prints one JSON object:

- ``imports``: RSS once everything ``edge run`` imports is imported (the runtime module included);
- ``interpreter``: RSS added by loading the model, allocating and two invokes (weights, arena,
  XNNPACK's copies, the runtime's first-use code pages), with ``weights_resident`` (the model file's
  resident pages, from /proc/self/smaps: mapped, not copied, when this equals the file size);
- ``pipeline``: RSS added by the sources, sinks and loops from there to the end of the run;
- ``peak``: VmHWM, as ``edge run``'s summary line reports it.

With ``--arena`` it afterwards (the peak is read first) loads the model once more without delegates
and reports the interpreter's own arena: the extent of its non-constant tensors' addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from edge.memory import peak_rss_bytes, rss_bytes

SINKS = ("json", "video", "preview")


def mapped_file_bytes(path: str | Path) -> int:
    """Resident bytes of every mapping of ``path`` in this process (0 if not mapped)."""
    target = os.path.realpath(path)
    total, current = 0, False
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                head = line.split(None, 5)
                if head and "-" in head[0] and not head[0].endswith(":"):
                    current = len(head) == 6 and head[5].strip() == target
                elif current and line.startswith("Rss:"):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def interpreter_arena(model: str | Path, plan_tensors: list[int]) -> dict:
    """The arena of a no-delegate LiteRT interpreter, from its tensors' addresses: ``extent`` is the
    span from the lowest to the highest end of ``plan_tensors`` (the non-constant tensors) and of the
    kernels' own temporaries; ``nonconstant_bytes`` their sum (the arena with no reuse)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(model), num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    wanted = set(plan_tensors)
    count = len(interpreter.get_tensor_details())
    spans, total = [], 0
    for index in range(count):
        if index < max(wanted, default=-1) + 1 and index not in wanted:
            continue  # constants: in the model file, not the arena
        try:
            array = interpreter.tensor(index)()
        except ValueError:
            continue
        if array.nbytes:
            start = array.__array_interface__["data"][0]
            spans.append((start, start + array.nbytes))
            total += array.nbytes
    extent = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0
    return {"extent": extent, "nonconstant_bytes": total, "tensors": len(spans)}


class _Turns:
    """One interpreter, several cameras: a frame holds it from preprocess to postprocess."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def _shared_detector_class():
    from edge.detector.detector import Detector

    class SharedDetector(Detector):
        turns: _Turns

        def preprocess(self, frame) -> None:
            self.turns.lock.acquire()
            try:
                super().preprocess(frame)
            except BaseException:
                self.turns.lock.release()
                raise

        def postprocess(self):
            try:
                return super().postprocess()
            finally:
                self.turns.lock.release()

    return SharedDetector


def import_like_edge_run(runtime: str | None = None) -> None:
    """Everything ``edge run`` imports before it loads a model: edge.cli, the run command (which
    imports the preview for its option parser), the detector, the loop, sources, sinks, the version
    lookup, the generated schema and the runtime's interpreter module."""
    import edge.backends  # noqa: F401
    import edge.cli  # noqa: F401
    import edge.commands.run  # noqa: F401
    import edge.detector.detector  # noqa: F401
    import edge.detector.threads  # noqa: F401
    import edge.files  # noqa: F401
    import edge.live.loop  # noqa: F401
    import edge.live.preview  # noqa: F401  (edge run imports it for --preview's parser)
    import edge.live.sinks  # noqa: F401
    import edge.live.source_kinds  # noqa: F401
    import edge.live.sources  # noqa: F401
    import edge.live.synthetic  # noqa: F401
    import edge.live.video  # noqa: F401
    import edge.models  # noqa: F401
    from edge.backends.tflite import RUNTIMES, _interpreter_class
    from edge.contract.tflite_file import builtin_operator_names
    from edge.provenance import package_version

    builtin_operator_names()
    package_version("edgekit")
    _interpreter_class(runtime or next(iter(RUNTIMES)))


def probe_interpreters(model: str, count: int = 2, threads: int | None = None, runtime: str | None = None) -> dict:
    """RSS added by each of ``count`` interpreters of ``model`` loaded one after another in this
    process (each allocated and invoked twice): the first carries the runtime's first-use cost."""
    from edge.backends import open_backend

    import_like_edge_run(runtime)
    out = {"imports": rss_bytes(), "interpreters": [], "weights_resident": []}
    keep = []
    for _ in range(count):
        before = rss_bytes()
        backend = open_backend(model, runtime, threads)
        for _ in range(2):
            backend.invoke()
        keep.append(backend)
        out["interpreters"].append(rss_bytes() - before)
    out["weights_resident"] = mapped_file_bytes(model)
    out["file_bytes"] = Path(model).stat().st_size
    return out


def run(model: str, width: int, height: int, *, cameras: int = 1, threads: int | None = None,
        sinks: tuple[str, ...] = (), frames: int = 60, runtime: str | None = None, arena: bool = False,
        snapshot: bool = True) -> dict:
    out: dict = {"start": rss_bytes()}
    import_like_edge_run(runtime)
    from edge.backends import open_backend
    from edge.live.loop import LiveLoop
    from edge.live.preview import PreviewServer, PreviewSink
    from edge.live.sinks import JsonLinesSink
    from edge.live.video import VideoSink
    from edge.live.sources import open_source

    out["imports"] = rss_bytes()

    backend = open_backend(model, runtime, threads)
    out["loaded"] = rss_bytes()
    for _ in range(2):
        backend.invoke()
    out["interpreter_done"] = rss_bytes()
    out["weights_resident"] = mapped_file_bytes(model)
    out["file_bytes"] = Path(model).stat().st_size
    out["runtime"] = backend.info.describe()

    SharedDetector = _shared_detector_class()
    turns = _Turns()
    tmp = tempfile.TemporaryDirectory(prefix="edge-plan-")
    loops, servers = [], []
    try:
        for camera in range(cameras):
            detector = SharedDetector(backend=backend)
            detector.turns = turns
            source = open_source(f"synthetic:{width}x{height}", seed=camera)
            made = []
            if "json" in sinks:
                made.append(JsonLinesSink(os.devnull))
            if "video" in sinks:
                made.append(VideoSink(Path(tmp.name) / f"camera{camera}.mp4", source.fps))
            if "preview" in sinks:
                server = PreviewServer("127.0.0.1", 0).start()
                servers.append(server)
                made.append(PreviewSink(server))
            loops.append(LiveLoop(detector, source, made, max_frames=frames, stats_every=0, log=lambda m: None))
        out["sources_done"] = rss_bytes()
        out["peak_before_loops"] = peak_rss_bytes()
        fetcher = None
        if snapshot and servers:
            fetcher = threading.Thread(target=_fetch_snapshots, args=(servers,), daemon=True)
            fetcher.start()
        errors: list[BaseException] = []

        def run_loop(loop) -> None:
            try:
                loop.run()
            except BaseException as exc:  # reported after the others finished
                errors.append(exc)

        workers = [threading.Thread(target=run_loop, args=(loop,), name=f"camera-{i}") for i, loop in enumerate(loops)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if fetcher is not None:
            fetcher.join(5.0)
        if errors:
            raise errors[0]
        out["end"] = rss_bytes()
        out["peak"] = peak_rss_bytes()
        out["frames"] = [loop.processed for loop in loops]
    finally:
        tmp.cleanup()
    if arena:
        from edge.plan.graph import read_graph

        graph = read_graph(model)
        out["arena"] = interpreter_arena(model, [t.index for t in graph.tensors if not t.constant and not t.temporary])
    return out


def _fetch_snapshots(servers) -> None:
    """A viewer asking each preview for /snapshot.jpg a few times, so the JPEG path is resident too. The
    viewer is another process (a browser elsewhere, in real use): its own memory is not this one's."""
    import subprocess

    urls = [f"http://127.0.0.1:{server.port}/snapshot.jpg" for server in servers]
    script = ("import sys, time, urllib.request\n"
              "for _ in range(3):\n"
              "    time.sleep(0.3)\n"
              "    for url in sys.argv[1:]:\n"
              "        try:\n"
              "            urllib.request.urlopen(url, timeout=5).read()\n"
              "        except OSError:\n"
              "            pass\n")
    subprocess.run([sys.executable, "-c", script, *urls], timeout=30, check=False)


# ---- running the runner in fresh processes and fitting the baseline -----------------------------

def run_fresh(model: str | Path, *, width: int = 640, height: int = 480, cameras: int = 1, threads: int | None = None,
              sinks: tuple[str, ...] = (), frames: int = 60, runtime: str | None = None, arena: bool = False,
              interpreters: int = 0, timeout: float = 600.0) -> dict:
    """:func:`run` (or :func:`probe_interpreters`) in a fresh ``python -m edge.plan.measure`` process."""
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


#: The calibration setups (the demo model): sizes other than the ones the benchmark checks.
CALIBRATION_SIZES = ((320, 240), (1920, 1080))


def measure_baseline(models: list[str | Path], *, frames: int = 30, threads: int = 1,
                     previous: dict | None = None, log=print) -> dict:
    """Measure every coefficient :mod:`edge.plan.predict` uses, from fresh processes on this machine.

    ``models[0]`` runs the pipeline setups (the bundled demo model); every model in ``models`` gets an
    interpreter probe, and two or more fix the XNNPACK ratio and the interpreter overhead together.
    """
    import platform

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
        return runs[name]

    probes = []
    for model in models:
        log(f"edge plan: measuring interpreters of {Path(model).name} ...")
        probe = run_fresh(model, interpreters=2, threads=threads)
        probes.append((str(model), probe))
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

    def pipeline(r: dict) -> int:
        return r["end"] - r["interpreter_done"]

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
                    "os": platform.platform(), "page_size": os.sysconf("SC_PAGE_SIZE")},
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
            "sinks": "run with the sink minus the run without, less the canvas (and the preview's frame copy), "
                     f"at {w0}x{h0} and {w1}x{h1}: per-pixel slope and fixed part; camera_fixed from 2 cameras",
        },
        "calibration": {"model": Path(main_model).name, "frames": frames, "threads": threads,
                        "sizes": [f"{w}x{h}" for w, h in CALIBRATION_SIZES],
                        "interpreter_probes": {Path(m).name: p for m, p in probes},
                        "runs": runs},
        "coefficients": co,
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.plan.measure", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--source", default="640x480", help="WxH of the synthetic source")
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--sinks", default="", help="comma-separated: json,video,preview")
    parser.add_argument("--max-frames", type=int, default=60)
    parser.add_argument("--runtime")
    parser.add_argument("--arena", action="store_true", help="also report the no-delegate interpreter's arena")
    parser.add_argument("--interpreters", type=int, metavar="K",
                        help="instead: load K interpreters one after another and report what each added")
    args = parser.parse_args(argv)
    if args.interpreters:
        print(json.dumps(probe_interpreters(args.model, args.interpreters, args.threads, args.runtime)))
        return 0
    width, height = (int(v) for v in args.source.lower().split("x"))
    sinks = tuple(s for s in args.sinks.split(",") if s)
    result = run(args.model, width, height, cameras=args.cameras, threads=args.threads, sinks=sinks,
                 frames=args.max_frames, runtime=args.runtime, arena=args.arena)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
