"""``edge run``: live detection from a camera, file, stream, image folder or the synthetic source.

Prints which runtime runs the model, a stats line every few seconds and a summary at the end
(frames, fps, per-stage latency, RSS at start and end) on stderr; detections go to the sinks.
"""

from __future__ import annotations

import argparse
import sys

from edge.detector.buffer import LETTERBOX, STRETCH
from edge.errors import EdgeError
from edge.backends.tflite import RUNTIMES
from edge.live.sources import DEFAULT_STALL_TIMEOUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="detector .tflite (same as --model)")
    parser.add_argument("--model", help="detector .tflite (default: the bundled demo model, synthetic shapes)")
    parser.add_argument("--labels", help="labels file, one per line (default: the model's own labels)")
    parser.add_argument("--source", default="synthetic",
                        help="camera index (0), video file, rtsp/http URL, GStreamer pipeline ending in appsink, "
                             "picamera2, image folder or glob, or synthetic[:WxH[@FPS]] (default: synthetic)")
    parser.add_argument("--json", metavar="PATH|-", help="write JSON lines (one per frame) to PATH or stdout")
    parser.add_argument("--video", metavar="PATH", help="write the annotated video (.mp4, .avi, .mkv)")
    parser.add_argument("--preview", metavar="[HOST:]PORT",
                        help="serve a live preview page (127.0.0.1 unless HOST is given, e.g. 0.0.0.0:8080)")
    parser.add_argument("--token", help="require ?token=T on the preview page (use it with a public HOST)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--loop", action="store_true", help="restart files and folders at their end")
    parser.add_argument("--realtime", action="store_true",
                        help="read files at their fps and drop frames the detector cannot keep up with")
    parser.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT, metavar="S",
                        help=f"reopen a source that gives no frame for S seconds (default {DEFAULT_STALL_TIMEOUT:g})")
    parser.add_argument("--threads", type=int, metavar="N", help="interpreter threads (default: all cores)")
    parser.add_argument("--score", type=float, default=0.5, metavar="S", help="minimum score (default 0.5)")
    parser.add_argument("--runtime", choices=list(RUNTIMES), help="force a TFLite runtime (default: the first found)")
    parser.add_argument("--resize", choices=[STRETCH, LETTERBOX], help="how frames fit the input (default: the model's)")
    parser.add_argument("--stats-every", type=float, default=5.0, metavar="S",
                        help="seconds between stats lines on stderr (0: none; default 5)")


def _log(message: str) -> None:
    print(f"edge run: {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from edge.detector.detector import Detector
    from edge.live.loop import LiveLoop
    from edge.live.preview import PreviewServer, PreviewSink, is_loopback, parse_bind
    from edge.live.sinks import JsonLinesSink, VideoSink
    from edge.live.sources import open_source

    if args.max_frames is not None and args.max_frames < 1:
        raise EdgeError(f"--max-frames {args.max_frames}: must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise EdgeError(f"--duration {args.duration}: must be more than 0 seconds")
    if args.threads is not None and args.threads < 1:
        raise EdgeError(f"--threads {args.threads}: must be at least 1")
    if args.token and not args.preview:
        raise EdgeError("--token is for the preview page: add --preview [HOST:]PORT")
    if args.model_path and args.model and args.model_path != args.model:
        raise EdgeError(f"two models given: {args.model_path} and --model {args.model}; give one")
    bind = parse_bind(args.preview) if args.preview else None

    detector = Detector(args.model_path or args.model, labels=args.labels, score_threshold=args.score,
                        num_threads=args.threads, runtime=args.runtime, resize=args.resize)
    _log(f"model {detector.describe()}")
    if detector.runtime_info.note:
        _log(f"note: {detector.runtime_info.note}")
    source = open_source(args.source, loop=args.loop, realtime=args.realtime, stall_timeout=args.stall_timeout)
    _log(f"source {source.describe()}" + (" (live: stale frames are dropped)" if source.live else ""))

    sinks = []
    try:
        if args.json:
            sinks.append(JsonLinesSink(args.json))
        if args.video:
            sinks.append(VideoSink(args.video, source.fps))
        if bind:
            host, port = bind
            if not is_loopback(host) and not args.token:
                _log(f"warning: the preview on {host}:{port} is open to anyone on the network; add --token")
            server = PreviewServer(host, port, token=args.token).start()
            sinks.append(PreviewSink(server))
            _log(f"preview at {server.url}")
    except BaseException:
        for sink in sinks:
            sink.close()
        source.close()
        raise

    loop = LiveLoop(detector, source, sinks, max_frames=args.max_frames, duration=args.duration,
                    stats_every=args.stats_every, log=_log)
    restore = loop.install_signal_handlers()
    try:
        summary = loop.run()
    finally:
        restore()
    print(summary.format(), file=sys.stderr, flush=True)
    for sink in sinks:
        if sink.report():
            _log(sink.report())
    if summary.stop_reason == "source error":
        _log(f"source {args.source} failed: {loop.capture.error}")
        return 1
    return 0
