"""Regenerate benchmarks/results/cameras_rss.json: RSS of one process running N cameras on one detector.

For N = 1, 2, 4, 8 synthetic cameras (each N in a fresh subprocess, so no run inherits another's
heap) a :class:`~edge.live.multiloop.MultiLoop` runs the bundled demo model over ``--warmup`` then
``--frames`` frames per camera, RSS sampled every ``--every`` frames from /proc. Per N: the steady
RSS (median after warm-up), its least-squares slope (bytes per frame, all cameras together) and its
drift over the measured frames; then a least-squares fit ``RSS = base + N x per_camera`` over the
four steady values, printed and written with the residuals. Each camera's preallocated bytes (the
capture ring and resize buffers, stage-time rings: allocated, an upper bound on their resident
part) are reported beside the fitted per-camera cost, which also holds the source's own frames,
the capture thread and whatever it touches.

    nice -n 10 .venv/bin/python benchmarks/cameras_rss.py            # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write_json  # noqa: E402
from edge.memory import peak_rss_bytes, rss_bytes, rss_slope  # noqa: E402
from targets import RSS_SLOPE_BYTES_PER_FRAME  # noqa: E402  (benchmarks/targets.py)

MB = 2**20
COUNTS = (1, 2, 4, 8)


def child(args: argparse.Namespace) -> int:
    """One N: build the detector and N cameras, run, print one JSON line."""
    from edge.detector.detector import Detector
    from edge.live.cameras import Camera
    from edge.live.multiloop import MultiLoop
    from edge.live.synthetic import SyntheticSource
    from edge.models import DEMO_MODEL

    n, (width, height) = args.child, args.size
    rss_start = rss_bytes()
    detector = Detector(DEMO_MODEL, num_threads=args.threads)
    rss_detector = rss_bytes()
    cameras = [Camera(f"cam{i}", SyntheticSource(f"synthetic:{width}x{height}", width, height, seed=i,
                                                 realtime=args.live, fps=args.fps)) for i in range(n)]
    rss_cameras = rss_bytes()
    warmup = n * args.warmup
    loop = MultiLoop(detector, cameras, max_frames=n * (args.warmup + args.frames), stats_every=0,
                     rss_every=args.every, log=lambda message: print(message, file=sys.stderr))
    summary = loop.run()
    frames = np.array([f for f, _ in summary.rss_samples if f >= warmup], np.int64)
    rss = np.array([r for f, r in summary.rss_samples if f >= warmup], np.int64)
    shares = [c.share for c in summary.cameras]
    print(json.dumps({
        "cameras": n,
        "frames": summary.frames_processed,
        "seconds": round(summary.elapsed_s, 1),
        "fps": round(summary.fps, 1),
        "share_min": round(min(shares), 4),
        "share_max": round(max(shares), 4),
        "rss_start_bytes": rss_start,
        "rss_after_detector_bytes": rss_detector,
        "rss_after_sources_bytes": rss_cameras,
        "rss_steady_bytes": int(np.median(rss)),
        "rss_first_after_warmup_bytes": int(rss[0]),
        "rss_last_bytes": int(rss[-1]),
        "drift_after_warmup_bytes": int(rss[-1] - rss[0]),
        "slope_bytes_per_frame": round(rss_slope(frames, rss), 3),
        "samples_after_warmup": int(rss.size),
        "peak_bytes": peak_rss_bytes(),
        "preallocated_bytes_per_camera": summary.cameras[0].preallocated_bytes,
        "stop_reason": summary.stop_reason,
    }))
    return 0


def fit(ns: np.ndarray, rss: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least squares ``rss = base + n * per_camera``: (base, per_camera, residuals)."""
    design = np.stack([np.ones_like(ns, dtype=np.float64), ns.astype(np.float64)], axis=1)
    (base, per_camera), *_ = np.linalg.lstsq(design, rss.astype(np.float64), rcond=None)
    return float(base), float(per_camera), rss - (base + per_camera * ns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS), help="camera counts (default 1 2 4 8)")
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(320, 240),
                        metavar="WxH", help="synthetic frame size (default 320x240)")
    parser.add_argument("--warmup", type=int, default=400, help="frames per camera before measuring (default 400: "
                        "the synthetic scene respawns its shapes every 90 frames, whose drawing caches settle)")
    parser.add_argument("--frames", type=int, default=800, help="measured frames per camera (default 800)")
    parser.add_argument("--every", type=int, default=25, help="RSS sample every N frames (default 25)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--live", action="store_true", help="pace the cameras at --fps (frames dropped)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cameras_rss.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from edge.provenance import machine_info

    started = time.time()
    runs = []
    for n in args.counts:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(n),
                   "--size", f"{args.size[0]}x{args.size[1]}", "--warmup", str(args.warmup),
                   "--frames", str(args.frames), "--every", str(args.every), "--threads", str(args.threads),
                   "--fps", str(args.fps)] + (["--live"] if args.live else [])
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        run = json.loads(result.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(f"N={n}: steady RSS {run['rss_steady_bytes'] / MB:.2f} MB, slope {run['slope_bytes_per_frame']:+.2f} "
              f"B/frame, drift {run['drift_after_warmup_bytes'] / 1024:+.0f} KB over {args.frames * n} frames, "
              f"{run['fps']:.0f} fps, shares {run['share_min']:.3f}-{run['share_max']:.3f}", flush=True)
    ns = np.array([r["cameras"] for r in runs])
    steady = np.array([r["rss_steady_bytes"] for r in runs])
    base, per_camera, residuals = fit(ns, steady)
    flat = all(abs(r["slope_bytes_per_frame"]) < RSS_SLOPE_BYTES_PER_FRAME for r in runs)
    report = {
        "benchmark": "cameras_rss",
        "command": "benchmarks/cameras_rss.py " + " ".join(sys.argv[1:]),
        "model": "demo_ssd_int8.tflite (bundled)",
        "source": f"synthetic:{args.size[0]}x{args.size[1]}" + (f"@{args.fps:g} realtime" if args.live else
                                                                 " (lossless: every frame processed)"),
        "threads": args.threads,
        "warmup_frames_per_camera": args.warmup,
        "frames_per_camera": args.frames,
        "runs": runs,
        "fit": {
            "base_bytes": round(base),
            "per_camera_bytes": round(per_camera),
            "residuals_bytes": [int(round(r)) for r in residuals],
            "max_abs_residual_bytes": int(round(float(np.abs(residuals).max()))),
            "preallocated_bytes_per_camera": runs[0]["preallocated_bytes_per_camera"],
            "frame_bytes": args.size[0] * args.size[1] * 3,
        },
        "steady_state": {
            "target": f"RSS slope under {RSS_SLOPE_BYTES_PER_FRAME:g} bytes per frame for every N",
            "met": flat,
            "slopes_bytes_per_frame": {str(r["cameras"]): r["slope_bytes_per_frame"] for r in runs},
        },
        "machine": machine_info(),
        "wall_seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    slopes = ", ".join(f"{r['slope_bytes_per_frame']:+.2f}" for r in runs)
    print(f"fit: RSS = {base / MB:.2f} MB + N x {per_camera / MB:.3f} MB "
          f"(max residual {np.abs(residuals).max() / MB:.3f} MB); preallocated per camera "
          f"{runs[0]['preallocated_bytes_per_camera'] / MB:.3f} MB; steady state "
          f"{'flat' if flat else 'NOT flat'} (slopes {slopes} "
          f"B/frame)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
