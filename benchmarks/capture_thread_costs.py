"""Where the capture thread's time goes, alone and beside a running interpreter, per OpenCV thread count.

Per frame of the looped fixture video: decode (``VideoCapture.read`` into a reused array), the copy
into a capture-ring slot, and the resize to the model input (``FrameBuffer.resize``); and the
interpreter's ``invoke()`` p50 while that capture work runs beside it. OpenCV parallelises resize
and colour conversion over its own thread pool, which competes with the interpreter's threads; the
table shows what each choice costs on this machine.

    .venv/bin/python benchmarks/capture_thread_costs.py \\
        --model ../shared/fixtures/models/ssd_mobilenet_v1_coco_quant.tflite \\
        --video ../shared/fixtures/video/traffic_960x540.mp4 --frames 300
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.detector.detector import Detector  # noqa: E402
from edge.files import atomic_write_json  # noqa: E402
from edge.provenance import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "capture_thread_costs.json"


def capture_costs(video: str, detector: Detector, frames: int) -> dict:
    """Milliseconds per stage (p50) of decode, ring copy and resize over ``frames`` frames."""
    cap = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
    ok, buffer = cap.read()
    slot = np.empty_like(buffer)
    resized = detector.buffer.resize(buffer, None)
    times = np.zeros((3, frames))
    clock = time.perf_counter
    for i in range(frames):
        t0 = clock()
        ok, _ = cap.read(buffer)
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            cap.read(buffer)
        t1 = clock()
        np.copyto(slot, buffer)
        t2 = clock()
        detector.buffer.resize(slot, resized)
        t3 = clock()
        times[:, i] = (t1 - t0, t2 - t1, t3 - t2)
    cap.release()
    p50 = np.median(times, axis=1) * 1e3
    return {"decode_ms": round(float(p50[0]), 3), "ring_copy_ms": round(float(p50[1]), 3),
            "resize_ms": round(float(p50[2]), 3)}


def invoke_beside_capture(video: str, detector: Detector, frames: int) -> dict:
    """invoke() p50 alone and while a capture thread decodes, copies and resizes as fast as it can."""
    def invoke_p50(n: int) -> float:
        durations = np.zeros(n)
        for i in range(n):
            t0 = time.perf_counter()
            detector.invoke()
            durations[i] = time.perf_counter() - t0
        return float(np.median(durations) * 1e3)

    alone = invoke_p50(frames)
    stop = threading.Event()
    result = {}

    def capture() -> None:
        worker = Detector(detector.model_path, num_threads=1)  # its own buffer; the resize is the same
        n = 0
        while not stop.is_set():
            result.update(capture_costs(video, worker, 30))
            n += 30
        result["capture_frames"] = n

    thread = threading.Thread(target=capture)
    thread.start()
    beside = invoke_p50(frames)
    stop.set()
    thread.join()
    return {"invoke_alone_ms": round(alone, 3), "invoke_beside_capture_ms": round(beside, 3),
            "capture_beside_invoke": {k: v for k, v in result.items() if k.endswith("_ms")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    parser.add_argument("--opencv-threads", type=int, nargs="+", default=[0, 1],
                        help="OpenCV thread counts to compare (0: OpenCV's default pool)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    default_threads = cv2.getNumThreads()
    detector = Detector(args.model, num_threads=args.threads)
    cap = cv2.VideoCapture(args.video)
    detector.detect(cap.read()[1])
    cap.release()
    rows = []
    for cv_threads in args.opencv_threads:
        cv2.setNumThreads(cv_threads if cv_threads > 0 else default_threads)
        row = {"opencv_threads": cv2.getNumThreads(), "alone": capture_costs(args.video, detector, args.frames)}
        row.update(invoke_beside_capture(args.video, detector, args.frames))
        rows.append(row)
    cv2.setNumThreads(default_threads)
    print(f"{'OpenCV threads':>14} {'decode':>8} {'copy':>7} {'resize':>7} | {'invoke alone':>12} "
          f"{'beside capture':>14} | capture beside invoke: decode / copy / resize (ms p50)")
    for r in rows:
        a, b = r["alone"], r["capture_beside_invoke"]
        print(f"{r['opencv_threads']:>14} {a['decode_ms']:>8.3f} {a['ring_copy_ms']:>7.3f} {a['resize_ms']:>7.3f} | "
              f"{r['invoke_alone_ms']:>12.3f} {r['invoke_beside_capture_ms']:>14.3f} | "
              f"{b.get('decode_ms', 0):.3f} / {b.get('ring_copy_ms', 0):.3f} / {b.get('resize_ms', 0):.3f}")
    atomic_write_json(args.out, {"command": "benchmarks/capture_thread_costs.py " + " ".join(sys.argv[1:]),
                                 "machine": machine_info(), "interpreter_threads": args.threads, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
