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
``--interpreters K`` instead loads K interpreters one after another (:func:`probe_interpreters`), and
``--malloc-threshold`` reports glibc's mmap threshold after the imports and after loading the model
(:func:`malloc_thresholds`; each in a process of its own, as both leave allocations behind).

Running these in fresh processes and comparing with a prediction is :mod:`edge.plan.check`; fitting
the baseline from them is :mod:`edge.plan.calibrate`.
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
            # edge run --config reads every camera on a thread of its own; one camera as edge run would
            loops.append(LiveLoop(detector, source, made, max_frames=frames, stats_every=0, log=lambda m: None,
                                  capture="auto" if cameras == 1 else "thread"))
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


# ---- glibc's mmap threshold -----------------------------------------------------------------------

def mmap_threshold() -> int:
    """glibc's current mmap threshold (the smallest chunk size it maps on its own), or 0 off glibc.

    A binary search over request sizes: a request is mmapped when ``mallinfo2().hblks`` goes up.
    Every probe is leaked on purpose: freeing a mapped one would raise the threshold being measured,
    and freeing a heap one would leave a top chunk that serves the next probe. So the probes stay
    (address space, a page each of RSS): measure in a process of its own, after everything else.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        info = libc.mallinfo2
    except (OSError, AttributeError):
        return 0

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    info.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    from edge.plan.allocator import MMAP_THRESHOLD_MAX, request_size

    lo, hi = 1, MMAP_THRESHOLD_MAX + (1 << 20)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        before = info().hblks
        libc.malloc(mid)
        if info().hblks > before:
            hi = mid
        else:
            lo = mid
    return request_size(hi)


def malloc_thresholds(model: str | None, threads: int | None = None, runtime: str | None = None) -> dict:
    """glibc's mmap threshold once ``edge run``'s imports are done and, with ``model``, once it is
    loaded and invoked (what the planner's :func:`edge.plan.allocator.threshold_after_load` predicts).
    The first probe's leftovers are allocated, not free, so they do not change what the load does."""
    import_like_edge_run(runtime)
    out = {"imports": mmap_threshold()}
    if model:
        from edge.backends import open_backend

        backend = open_backend(model, runtime, threads)
        backend.invoke()
        out["loaded"] = mmap_threshold()
        out["file_bytes"] = Path(model).stat().st_size
    return out


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
    parser.add_argument("--malloc-threshold", action="store_true",
                        help="instead: glibc's mmap threshold after the imports and after loading the model")
    args = parser.parse_args(argv)
    if args.malloc_threshold:
        print(json.dumps(malloc_thresholds(args.model, args.threads, args.runtime)))
        return 0
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
