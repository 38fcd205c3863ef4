"""``edge run``: live detection from a camera, file, stream, image folder or the synthetic source.

Prints which runtime runs the model, a stats line every few seconds and a summary at the end
(frames, fps, per-stage latency, RSS at start and end) on stderr; detections go to the sinks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.commands._args import (CAPTURE_CHOICES, THREADS_AUTO, add_model_args, count_or_auto, model_from_args,
                                 nonnegative_float, positive_float, positive_int, unit_interval)
from edge.errors import EdgeError
from edge.live.sources import DEFAULT_STALL_TIMEOUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser, positional=True, auto_threads=True)
    parser.add_argument("--source", default="synthetic",
                        help="camera index (0), video file, rtsp/http URL, GStreamer pipeline ending in appsink, "
                             "picamera2, image folder or glob, or synthetic[:WxH[@FPS]] (default: synthetic)")
    parser.add_argument("--json", metavar="PATH|-", help="write JSON lines (one per frame) to PATH or stdout")
    parser.add_argument("--video", metavar="PATH",
                        help="write the annotated video (.mp4, .avi, .mkv), as .NAME.part.EXT until it is closed. "
                             "An MP4 cut by SIGKILL or power loss has no index and does not play beyond its last "
                             "closed segment (see --video-segment); without segments use .mkv (Matroska): cut "
                             "short it still plays up to the last block FFmpeg wrote (256 KB blocks: the one in "
                             "progress is lost, ~9 s of 160x120 video, and a run shorter than a block leaves "
                             "nothing)")
    parser.add_argument("--video-segment", type=positive_float, metavar="MINUTES",
                        help="start a new video file every MINUTES of video (frames at the file's fps): "
                             "STEM-0001.EXT, STEM-0002.EXT, ... beside --video PATH, each playable once it "
                             "ends, so a hard kill loses at most the open one and memory stays bounded")
    parser.add_argument("--preview", metavar="[HOST:]PORT",
                        help="serve a live preview page (127.0.0.1 unless HOST is given, e.g. 0.0.0.0:8080); with "
                             "--config every camera on one page, each with its own stream, snapshot and stats")
    parser.add_argument("--token", help="require ?token=T on the preview page (use it with a public HOST); "
                                        "visible in ps: prefer --token-file or EDGE_PREVIEW_TOKEN")
    parser.add_argument("--token-file", metavar="PATH", type=Path,
                        help="read the preview token from the first line of PATH (EDGE_PREVIEW_TOKEN works too)")
    parser.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N processed frames")
    parser.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    parser.add_argument("--loop", action="store_true", help="restart files and folders at their end")
    parser.add_argument("--realtime", action="store_true",
                        help="read files at their fps and drop frames the detector cannot keep up with")
    parser.add_argument("--capture", choices=CAPTURE_CHOICES, default="auto",
                        help="where frames are read: auto (default) on a thread of its own, beside invoke(), "
                             "except for a source that is not live (file, folder, synthetic) on one usable core, "
                             "which is read on the loop's thread (no second core to overlap with); thread; inline "
                             "(not for live sources)")
    parser.add_argument("--stall-timeout", type=positive_float, default=DEFAULT_STALL_TIMEOUT, metavar="S",
                        help=f"reopen a source that gives no frame for S seconds (default {DEFAULT_STALL_TIMEOUT:g})")
    parser.add_argument("--wait-for-source", type=nonnegative_float, default=0.0, metavar="S",
                        help="wait up to S seconds, with backoff, for a camera or stream that is not up yet at "
                             "start (default 0: fail at once)")
    parser.add_argument("--track", action="store_true",
                        help="give each object a stable track id (ByteTrack-style, confirmed after a few frames) "
                             "in the JSON lines, the video and the preview")
    parser.add_argument("--zones", type=Path, metavar="FILE",
                        help="zones and lines (JSON, or YAML with PyYAML) whose enter/leave/cross events go to the "
                             "JSON lines; implies --track")
    parser.add_argument("--track-low-score", type=unit_interval, default=0.1, metavar="S",
                        help="with --track, detections down to S keep existing tracks alive (default 0.1)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help='several cameras sharing the model: {"cameras": [{"name": "door", "source": "rtsp://...", '
                             '"zones": "door.json"}, ...]} (.json, or .yaml with PyYAML); fair, latest frame wins')
    parser.add_argument("--detectors", type=count_or_auto, default=THREADS_AUTO, metavar="K|auto",
                        help="K copies of the model, each on its own thread: with one --source they take its frames "
                             "in turn and the results go on in frame order (more frames a second where one "
                             "interpreter cannot keep the cores busy; each copy costs its interpreter's memory, "
                             "see edge plan --detectors); with --config they share the cameras through one fair "
                             "scheduler. With --threads auto each gets usable cores / K interpreter threads. "
                             "auto (default): one, or with --threads auto and one --source on several cores, two "
                             "with half the cores each when measured at least 5%% faster end to end")
    parser.add_argument("--clips", type=Path, metavar="DIR",
                        help="write a clip around each enter/cross event into DIR (needs --zones or --config zones)")
    parser.add_argument("--pre-roll", type=nonnegative_float, default=5.0, metavar="S",
                        help="with --clips: seconds before the event, kept as raw frames (ceil(S x fps) + 1 per camera; "
                             "default 5)")
    parser.add_argument("--post-roll", type=nonnegative_float, default=5.0, metavar="S",
                        help="with --clips: seconds after the clip's last event (default 5)")
    parser.add_argument("--notify", action="store_true",
                        help="systemd Type=notify: READY=1 after the first frame, WATCHDOG=1 while frames flow, "
                             "STATUS=, STOPPING=1 (see docker/edgekit.service)")
    parser.add_argument("--mqtt", metavar="URL",
                        help="publish zone/line events (Frigate-style new/update/end JSON), counts, occupancy, stats and "
                             "Home Assistant discovery to an MQTT broker: mqtt://[user:pass@]host[:port][/prefix] "
                             "(mqtts:// for TLS against the system's CA store; a user without :pass takes "
                             "EDGE_MQTT_PASSWORD); topics under edgekit/CAMERA unless /prefix is given (with --config: "
                             "each camera under its own name, PREFIX/NAME with a prefix). The run never waits for "
                             "the broker: up to 1000 event messages queue while it is away")
    parser.add_argument("--camera", default="camera", metavar="NAME",
                        help="this camera's name in the MQTT topics and the Home Assistant device (default: camera; "
                             "with --config the file names each camera)")
    parser.add_argument("--metrics", metavar="[HOST:]PORT",
                        help="serve Prometheus metrics at /metrics (127.0.0.1 unless HOST is given, e.g. 0.0.0.0:9108); "
                             "with --config the per-camera ones carry a camera label")
    parser.add_argument("--metrics-token-file", metavar="PATH", type=Path,
                        help="require the token on the first line of PATH on /metrics (?token=T or Authorization: "
                             "Bearer T; EDGE_METRICS_TOKEN works too)")
    parser.add_argument("--stats-every", type=nonnegative_float, default=5.0, metavar="S",
                        help="seconds between stats lines on stderr (0: none; default 5)")


def _log(message: str) -> None:
    print(f"edge run: {message}", file=sys.stderr, flush=True)


def check_run_paths(args: argparse.Namespace) -> None:
    """No output may land on an input (model, its sidecar, labels, a source file) or on another output."""
    from edge.contract.modelinfo import sidecar_path
    from edge.files import FILE, FOLDER, STREAM, check_paths
    from edge.models import default_model_path

    model = model_from_args(args) or default_model_path()
    check_paths([("MODEL", model), ("the model's sidecar", sidecar_path(model)), ("--labels", args.labels),
                 ("--source", args.source), ("--token-file", args.token_file), ("--zones", args.zones),
                 ("--config", args.config), ("--metrics-token-file", args.metrics_token_file)],
                [("--json", args.json, STREAM), ("--video", args.video, FILE), ("--clips", args.clips, FOLDER)])


def build_sinks(args: argparse.Namespace, source, events=None) -> list:
    """The sinks the options ask for; a failure closes the ones already made."""
    from edge.live.preview import PreviewSink
    from edge.live.sinks import JsonLinesSink
    from edge.live.video import VideoSink

    sinks = []
    try:
        if args.json:
            sinks.append(JsonLinesSink(args.json))
        if args.video:
            sinks.append(VideoSink(args.video, source.fps, segment_minutes=args.video_segment))
        if args.preview:
            sinks.append(PreviewSink(_preview_server(args)))
        if args.clips is not None:  # first, so a clip's path is known when the JSON sink writes its event
            from edge.live.clips import ClipSink

            sinks.insert(0, ClipSink(args.clips, pre_roll=args.pre_roll, post_roll=args.post_roll, fps=source.fps,
                                     log=_log))
        if args.notify:
            from edge.systemd import SystemdNotifySink

            sinks.append(SystemdNotifySink())
        mqtt = None
        if args.mqtt:
            from edge.events.mqtt import MqttSink

            mqtt = MqttSink(args.mqtt, camera=args.camera, zones=events, log=_log)
            sinks.append(mqtt)
            _log(f"mqtt to {mqtt.target.describe()}, topics under {mqtt.prefix}/"
                 + ("" if events is not None and events.config is not None else " (no --zones: stats only)"))
        if args.metrics:
            sinks.append(_metrics_sink(args, mqtt))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _metrics_sink(args: argparse.Namespace, mqtt=None, cameras=None):
    """The ``--metrics`` sink; with ``cameras`` (``--config``) its per-camera handles join their sinks."""
    from edge.live.metrics import MetricsServer, MetricsSink, parse_metrics_bind
    from edge.live.preview import is_loopback

    host, port = parse_metrics_bind(args.metrics)
    if not is_loopback(host) and not args.metrics_token:
        _log(f"warning: the metrics on {host}:{port} are open to anyone on the network; add --metrics-token-file")
    server = MetricsServer(host, port, token=args.metrics_token).start()
    try:
        sink = MetricsSink(server, mqtt=mqtt, cameras=cameras)
    except BaseException:
        server.close()
        raise
    _log(f"metrics at {server.url.split('?')[0]}" + (" (a camera label per camera)" if cameras else ""))
    return sink


def _preview_server(args: argparse.Namespace, cameras=None):
    """The ``--preview`` server: one camera's, or with ``cameras`` (``--config``) every camera's on
    one page, each with its own stream (its handles join the cameras' sinks)."""
    from edge.live.preview import PreviewServer, is_loopback, parse_bind

    host, port = parse_bind(args.preview)
    token = args.preview_token
    if not is_loopback(host) and not token:
        _log(f"warning: the preview on {host}:{port} is open to anyone on the network; add --token-file")
    if cameras is None:
        server = PreviewServer(host, port, token=token).start()
    else:
        from edge.live.preview_cameras import CamerasPreviewServer

        server = CamerasPreviewServer(host, port, [camera.name for camera in cameras], token=token)
        server.attach(cameras)
        server.start()
    _log(f"preview at {server.url}" + (f" ({len(cameras)} cameras, a stream each)" if cameras else ""))
    return server


def _event_stage(args: argparse.Namespace, detector, high_score: float):
    from edge.events.config import load_config
    from edge.events.stage import EventStage

    config = load_config(args.zones, labels=detector.labels) if args.zones is not None else None
    stage = EventStage(detector.labels, high_score=high_score, low_score=args.track_low_score, config=config,
                       detection_capacity=detector.detections.capacity)
    regions = f", {len(config.regions)} zones/lines from {args.zones}" if config is not None else ""
    _log(f"tracking: confirmed after {stage.tracker.confirm_frames} frames, ended after {stage.tracker.max_missed} "
         f"unseen{regions}")
    return stage


def _run_cameras(args: argparse.Namespace, specs, detector, tracking: bool, high_score: float) -> int:
    """``--config``: every camera of the file through one detector, or ``--detectors K`` (fixed
    threads: the tuner measures one source's frames, and here they are shared)."""
    from edge.commands._args import detector_from_args
    from edge.live.cameras_config import build_cameras, close_cameras
    from edge.live.multiloop import MultiLoop

    detectors = [detector] + [detector_from_args(args, threads=detector.runtime_info.num_threads)
                              for _ in range(args.detectors - 1)]
    if len(detectors) > 1:
        threads = detector.runtime_info.num_threads
        _log(f"detectors: {len(detectors)}, {threads} interpreter thread{'s' if threads != 1 else ''} each")

    cameras, shared = build_cameras(specs, detector, json_target=args.json, clips=args.clips,
                                    clip_options={"pre_roll": args.pre_roll, "post_roll": args.post_roll},
                                    track=tracking, high_score=high_score, low_score=args.track_low_score,
                                    wait=args.wait_for_source > 0, log=_log)
    notify, mqtt, preview = [], None, None
    try:
        if args.mqtt:  # a sink per camera, added to its sinks: each camera's own topics, as with --camera NAME
            from edge.events.mqtt_cameras import MqttCameras

            mqtt = MqttCameras(args.mqtt, cameras, log=_log)
            _log(mqtt.describe())
        if args.preview:  # one page and port, a stream per camera: a handle per camera, added to its sinks
            preview = _preview_server(args, cameras)
        if args.notify:
            from edge.systemd import SystemdNotifySink

            notify.append(SystemdNotifySink())
        if args.metrics:  # a camera label per camera (a handle each); invoke times, RSS, running loop-wide
            notify.append(_metrics_sink(args, mqtt, cameras))
        loop = MultiLoop(detectors, cameras, sinks=notify, max_frames=args.max_frames, duration=args.duration,
                         stats_every=args.stats_every, log=_log)
    except BaseException:
        for sink in notify:
            sink.close()
        if preview is not None:
            preview.close()
        if mqtt is not None:
            mqtt.close()
        close_cameras(cameras, shared)
        raise
    if preview is not None:
        preview.set_stats(loop.live_stats)  # the page's loop-wide numbers; each camera's come from its handle
    restore = loop.install_signal_handlers()
    try:
        summary = loop.run()
    finally:
        restore()
        for sink in shared:
            sink.close()
    print(summary.format(), file=sys.stderr, flush=True)
    for line in loop.reports():
        _log(line)
    return 1 if getattr(loop, "sink_error", None) is not None else 0


def main(args: argparse.Namespace) -> int:
    from edge.commands._args import THREADS_AUTO, detector_from_args, runtime_lines
    from edge.detector.threads import ROUNDS, SETTLE_FRAMES, TRIAL_FRAMES, Layout, layout_candidates, untuned_reason
    from edge.live.loop import LiveLoop
    from edge.live.preview import parse_bind
    from edge.live.sources import open_source_waiting
    from edge.provenance import usable_cores

    detectors_auto = args.detectors == THREADS_AUTO
    if detectors_auto:
        args.detectors = 1
    if (args.token is not None or args.token_file is not None) and not args.preview:
        raise EdgeError("--token and --token-file are for the preview page: add --preview [HOST:]PORT")
    if args.video_segment is not None and not args.video:
        raise EdgeError("--video-segment is for the video file: add --video PATH")
    if args.config is not None:
        given = [o for o, v in (("--source", args.source != "synthetic"), ("--zones", args.zones), ("--video", args.video),
                                ("--camera", args.camera != "camera"), ("--capture", args.capture != "auto")) if v]
        if given:
            raise EdgeError(f"--config names each camera, its source and zones: drop {', '.join(given)}")
    elif args.detectors > 1 and args.capture == "inline":
        raise EdgeError(f"--detectors {args.detectors} takes the frames in turn from a capture thread: "
                        "drop --capture inline")
    elif args.clips is not None and args.zones is None:
        raise EdgeError("--clips writes a clip per zone or line event: add --zones FILE")
    if args.metrics_token_file is not None and not args.metrics:
        raise EdgeError("--metrics-token-file is for the metrics: add --metrics [HOST:]PORT")
    if args.mqtt:
        from edge.events.mqtt_target import parse_mqtt_url

        parse_mqtt_url(args.mqtt)
    args.metrics_token = None
    if args.metrics:
        from edge.live.metrics import TOKEN_ENV as METRICS_TOKEN_ENV, parse_metrics_bind
        from edge.live.preview import resolve_token

        parse_metrics_bind(args.metrics)
        args.metrics_token = resolve_token(None, args.metrics_token_file, env_var=METRICS_TOKEN_ENV)
    args.preview_token = None
    if args.preview:
        from edge.live.preview import resolve_token

        parse_bind(args.preview)
        args.preview_token = resolve_token(args.token, args.token_file)
    check_run_paths(args)

    specs = None
    if args.config is not None:
        from edge.live.cameras_config import load_cameras_config

        specs = load_cameras_config(args.config)
        if args.detectors > len(specs):
            raise EdgeError(f"--detectors {args.detectors}: more than the {len(specs)} camera"
                            f"{'s' if len(specs) != 1 else ''} of --config {args.config} (a camera's frames go "
                            "through one detector at a time)")
        if args.mqtt:
            from edge.events.mqtt_cameras import check_camera_topics

            check_camera_topics([spec.name for spec in specs], f"--config {args.config}")
    candidates = None
    if args.threads == THREADS_AUTO:
        candidates = layout_candidates(several=detectors_auto and specs is None and args.capture != "inline")
        if args.detectors > 1:  # the cores shared out among the detectors, not tuned
            candidates = [Layout(args.detectors, max(1, usable_cores() // args.detectors))]
    tracking = args.track or args.zones is not None or bool(specs and any(s.zones for s in specs))
    high_score = args.score
    if tracking:  # the detector runs at the tracker's low threshold; the sinks see --score and tracked rows
        args.score = min(args.track_low_score, high_score)
    detector = detector_from_args(args, threads=candidates[0].threads if candidates else None)
    _log(f"model {detector.describe()}")
    for line in runtime_lines(detector.runtime_info) + [f"note: {note}" for note in detector.label_notes]:
        _log(line)
    untuned = untuned_reason(detector.runtime_info)
    if untuned and candidates:
        candidates = None
        _log(f"threads: not tuned, {untuned}")
    if specs is not None:
        return _run_cameras(args, specs, detector, tracking, high_score)
    detectors = detector
    if args.detectors > 1:
        threads = detector.runtime_info.num_threads
        detectors = [detector] + [detector.twin(threads) for _ in range(args.detectors - 1)]
        _log(f"detectors: {args.detectors} copies of the model, {threads} interpreter thread"
             f"{'s' if threads != 1 else ''} each, taking the frames in turn (results in frame order)")
    if candidates and len(candidates) > 1:
        _log(f"threads auto: measuring {', '.join(c.describe() for c in candidates)} end to end on the first "
             f"~{len(candidates) * ROUNDS * (TRIAL_FRAMES + SETTLE_FRAMES)} frames")
    events = _event_stage(args, detector, high_score) if tracking else None
    source = open_source_waiting(args.source, args.wait_for_source, log=_log, loop=args.loop, realtime=args.realtime,
                                 stall_timeout=args.stall_timeout)
    _log(f"source {source.describe()}" + (" (live: stale frames are dropped)" if source.live else ""))
    try:
        sinks = build_sinks(args, source, events)
    except BaseException:
        source.close()
        raise

    loop = LiveLoop(detectors, source, sinks, max_frames=args.max_frames, duration=args.duration,
                    stats_every=args.stats_every, log=_log, thread_candidates=candidates, events=events,
                    capture=args.capture)
    _log(f"capture: {loop.capture_how}")
    restore = loop.install_signal_handlers()
    try:
        summary = loop.run()
    finally:
        restore()
    print(summary.format(), file=sys.stderr, flush=True)
    for sink in sinks:
        line = sink.report()
        if line:
            _log(line)
    if summary.stop_reason == "source error":
        _log(f"source {args.source} failed: {loop.capture.error}")
        return 1
    if loop.sink_error is not None:  # said when it happened; again last, below the summary
        _log(f"stopped: {loop.sink_error}")
        return 1
    return 0
