"""Soak: N frames (default 50,000) from `synthetic` through the live loop with the JSON sink, RSS
sampled every 100 frames; reports the RSS slope in bytes per frame after warm-up and the drift.
Writes benchmarks/results/soak.json.

    nice .venv/bin/python benchmarks/soak.py --model ../shared/fixtures/models/ssd_mobilenet_v1_coco_quant.tflite \
        --frames 50000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.detector.detector import Detector  # noqa: E402
from edge.files import atomic_write_json  # noqa: E402
from edge.live.loop import LiveLoop  # noqa: E402
from edge.live.sinks import JsonLinesSink  # noqa: E402
from edge.live.sources import open_source  # noqa: E402
from edge.provenance import machine_info  # noqa: E402
from targets import RSS_SLOPE_BYTES_PER_FRAME, verdict  # noqa: E402  (benchmarks/targets.py)

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--labels")
    parser.add_argument("--source", default="synthetic:320x240")
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    detector = Detector(args.model, labels=args.labels, num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sink = JsonLinesSink(Path(tmp) / "soak.jsonl")
        loop = LiveLoop(detector, open_source(args.source), [sink], max_frames=args.frames, stats_every=60,
                        rss_every=100)
        summary = loop.run()
        lines = sink.lines
    mb = 1024 * 1024
    slope = summary.rss_slope(args.warmup)
    drift = summary.rss_drift(args.warmup)
    print(summary.format())
    print(f"RSS slope after {args.warmup} frames: {slope:+.3f} bytes/frame; drift {drift / mb:+.3f} MB "
          f"over {summary.frames_processed - args.warmup} frames")
    met = None if slope is None else slope < RSS_SLOPE_BYTES_PER_FRAME
    print(f"target: RSS slope under {RSS_SLOPE_BYTES_PER_FRAME:g} B/frame: {verdict(met)}")
    report = {
        "benchmark": "soak", "model": Path(args.model).name, "source": args.source, "threads": args.threads,
        "frames": summary.frames_processed, "json_lines": lines, "warmup_frames": args.warmup,
        "rss_slope_bytes_per_frame": slope, "rss_drift_bytes": drift, "rss_start": summary.rss_start,
        "rss_end": summary.rss_end, "rss_peak": summary.rss_peak, "fps": summary.fps,
        "elapsed_s": summary.elapsed_s, "frames_dropped": summary.frames_dropped,
        "stages_ms": {k: {q: v[q] * 1e3 for q in ("p50", "p99")} for k, v in summary.stages.items()},
        "rss_samples": summary.rss_samples, "runtime": detector.runtime_info.describe(),
        "target": f"RSS slope under {RSS_SLOPE_BYTES_PER_FRAME:g} bytes per frame", "target_met": met,
        "machine": {**machine_info(), "load_average_at_end": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
