"""Regenerate benchmarks/results/bench_rss_slope.*: RSS over a long run of our pipeline, and its slope.

The target (benchmarks/targets.py): under 10 bytes per frame over 50,000 frames. Our pipeline
alone (capture thread + Detector, as ``edge run`` runs it, no tracemalloc), RSS read from /proc
every ``--every`` frames into preallocated arrays, slope by least squares; a tracemalloc phase at
the end adds the net heap growth per frame. At ~17-20 ms a frame on 2 cores, 50,000 frames take 15-20 minutes: run it niced.

    nice -n 10 .venv/bin/python benchmarks/bench_rss_slope.py --frames 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bench.pipelines import OursLoop, OursTurnsLoop  # noqa: E402
from edge.bench.progress import Progress  # noqa: E402
from edge.bench.run import new_run, timed_chunk, traced, warm_up  # noqa: E402
from edge.bench.settings import BenchSettings  # noqa: E402
from edge.detector.detector import Detector  # noqa: E402
from edge.files import atomic_path, atomic_write, atomic_write_json  # noqa: E402
from edge.live.sources import open_source  # noqa: E402
from edge.memory import peak_rss_bytes, rss_bytes, rss_slope  # noqa: E402
from edge.provenance import machine_info  # noqa: E402
from targets import RSS_SLOPE_BYTES_PER_FRAME, verdict  # noqa: E402  (benchmarks/targets.py)

FIXTURES = ROOT.parent / "shared" / "fixtures"
KB = 1024


def plot(frames: np.ndarray, rss: np.ndarray, slope: float, title: str, path: Path) -> None:
    """RSS change (KB) over frames with the least-squares line; skipped, saying why, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"plot skipped: matplotlib is not installed ({exc})", file=sys.stderr)
        return
    change = (rss - rss[0]) / KB
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.plot(frames, change, lw=1, color="tab:green", label=f"RSS, sampled every {int(frames[1] - frames[0])} frames")
    ax.plot(frames, (frames - frames[0]) * slope / KB, lw=1, ls="--", color="black",
            label=f"least squares: {slope:+.3f} B/frame")
    span = max(64.0, float(np.abs(change).max()) * 1.2)  # at least +-64 KB, so a flat line looks flat
    ax.set_ylim(-span, span)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_xlabel("frame")
    ax.set_ylabel("RSS change (KB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def replot(out: Path, name: str) -> int:
    """Redraw the PNG from the committed JSON and samples CSV (no run)."""
    result = json.loads((out / f"{name}.json").read_text())
    samples = np.loadtxt(out / f"{name}_samples.csv", delimiter=",", skiprows=1, dtype=np.int64)
    plot(samples[:, 0], samples[:, 1], result["rss"]["slope_bytes_per_frame"],
         f"{result['model']}, our pipeline: RSS over {result['frames']:,} frames", out / f"{name}.png")
    return 0


def measure(args: argparse.Namespace) -> tuple[dict, object]:
    """Our pipeline over the warm-up, timed and traced frames; returns (result dict, the PipelineRun)."""
    settings = BenchSettings(models=[args.model], source=args.source, frames=args.frames, warmup=args.warmup,
                             mem_frames=args.mem_frames, threads=args.threads, rss_every=args.every)
    settings.validate()
    rss_start = rss_bytes()
    detector = Detector(args.model, num_threads=args.threads)
    detectors = [detector] + [detector.twin(args.threads) for _ in range(args.detectors - 1)]
    rss_loaded = rss_bytes()
    source = open_source(args.source, loop=True)
    settings = settings.resolved(source)
    progress = Progress(args.warmup + args.frames + settings.traced_warmup + args.mem_frames)
    run = new_run("ours", settings)
    loop = OursLoop(detector, source) if args.detectors == 1 else OursTurnsLoop(detectors, source)
    started = time.time()
    try:
        warm_up(run, loop, settings, progress)
        timed_chunk(run, loop, args.frames, progress)
        traced(run, loop, args.mem_frames, progress, settings.traced_warmup)
    finally:
        loop.close()
        progress.close()
    rss = run.rss.rss
    half = rss.size // 2
    second_half = round(rss_slope(run.rss.frames[half:], rss[half:]), 3) if half > 2 else None
    result = {
        "benchmark": "bench_rss_slope",
        "command": "benchmarks/bench_rss_slope.py " + " ".join(sys.argv[1:]),
        "model": args.model.name, "source": args.source, "runtime": detector.runtime_info.describe(),
        "detectors": args.detectors,
        "frames": run.frames, "seconds": round(run.seconds, 1), "fps": round(run.fps, 2),
        "frames_dropped": run.dropped,
        "rss": {**run.rss.summary(), "at_start_bytes": rss_start, "after_model_load_bytes": rss_loaded,
                "after_warmup_bytes": run.rss_after_warmup, "peak_process_bytes": peak_rss_bytes(),
                "growth_first_to_last_bytes": int(rss[-1] - rss[0]) if rss.size else 0,
                "slope_second_half_bytes_per_frame": second_half},
        "memory": run.memory,
        "target": f"RSS slope under {RSS_SLOPE_BYTES_PER_FRAME:g} bytes per frame",
        "target_met": bool(run.rss.slope() < RSS_SLOPE_BYTES_PER_FRAME),
        "machine": machine_info(),
        "wall_seconds": round(time.time() - started, 1),
    }
    return result, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=FIXTURES / "models" / "ssd_mobilenet_v1_coco_quant.tflite")
    parser.add_argument("--source", default=str(FIXTURES / "video" / "traffic_960x540.mp4"))
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--every", type=int, default=50, help="RSS sample every N frames")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--mem-frames", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (of each detector)")
    parser.add_argument("--detectors", type=int, default=1,
                        help="copies of the model taking the frames in turn (edge run --detectors K)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="bench_rss_slope")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON and CSV")
    args = parser.parse_args()
    if args.replot:
        return replot(args.out, args.name)

    result, run = measure(args)
    frames, rss = run.rss.frames, run.rss.rss
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.name}.json", result)
    # Samples, for anyone who wants to refit: frame index and RSS bytes.
    atomic_write(args.out / f"{args.name}_samples.csv",
                 "frame,rss_bytes\n" + "".join(f"{f},{r}\n" for f, r in zip(frames, rss)))
    second_half = result["rss"]["slope_second_half_bytes_per_frame"]
    print(f"{args.model.name}: {run.frames} frames at {run.fps:.1f} fps; RSS {rss[0] / 2**20:.1f} -> "
          f"{rss[-1] / 2**20:.1f} MB (max {rss.max() / 2**20:.1f}); slope {run.rss.slope():+.3f} B/frame "
          f"(second half {'-' if second_half is None else f'{second_half:+.3f}'}); "
          f"heap growth {run.memory['growth_bytes_per_frame']} B/frame, "
          f"transient {run.memory['transient_median_bytes']:.0f} B/frame")
    print(f"target: RSS slope under {RSS_SLOPE_BYTES_PER_FRAME:g} B/frame: {verdict(result['target_met'])}")
    plot(frames, rss, run.rss.slope(), f"{args.model.name}, our pipeline: RSS over {run.frames:,} frames",
         args.out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
