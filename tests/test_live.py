"""The live loop end to end: the traffic video through `edge run`, allocation-free steady state
(tracemalloc), a stuck preview viewer that must not slow the detector, annotation, and recurrent
model state carried across frames."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.live.annotate import Annotator
from edge.contract.detections import Detections
from edge.detector.detector import Detector
from edge.live.loop import LiveLoop
from edge.live.preview import PreviewServer, PreviewSink, parse_bind
from edge.live.sinks import JsonLinesSink, Sink
from edge.live.video import VideoSink
from edge.live.sources import open_source

PROJECT = Path(__file__).resolve().parents[1]


def test_edge_run_on_the_traffic_video(ssd_model_path, coco_labels_path, traffic_video, tmp_path):
    out_json, out_video = tmp_path / "traffic.jsonl", tmp_path / "traffic.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--model", str(ssd_model_path), "--labels", str(coco_labels_path),
         "--source", str(traffic_video), "--json", str(out_json), "--video", str(out_video), "--threads", "2"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(20)), "every frame of the file is processed, in order"
    with_cars = [r for r in records if any(d["label"] == "car" and d["score"] >= 0.5 for d in r["detections"])]
    assert len(with_cars) >= 15
    for r in records:
        assert (r["width"], r["height"]) == (960, 540)
        for d in r["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 960 and 0 <= y0 < y1 <= 540
    cap = cv2.VideoCapture(str(out_video))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (540, 960, 3)
        frames += 1
    assert frames == 20
    assert "20 read, 20 processed, 0 dropped" in result.stderr and "litert" in result.stderr
    assert "invoke" in result.stderr and "RSS" in result.stderr


def test_cli_errors_are_one_line(tmp_path, ssd_model_path):
    for extra, words in ((["--source", "nope.mp4"], "--source nope.mp4"), (["--max-frames", "0"], "--max-frames"),
                         (["--preview", "x:y"], "--preview x:y"), (["--video", str(tmp_path / "a.gif")], "--video")):
        result = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--model", str(ssd_model_path), *extra],
                                cwd=PROJECT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("edge: error: ") and words in last and "Traceback" not in result.stderr


def test_model_as_positional_argument_with_letterbox_and_forced_runtime(ssd_model_path, coco_labels_path,
                                                                         traffic_video, tmp_path):
    """`edge run model.tflite ...`, as the README's path and `edge bench MODEL` put it."""
    out_json = tmp_path / "boxes.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", str(ssd_model_path), "--labels", str(coco_labels_path),
         "--source", str(traffic_video), "--max-frames", "3", "--json", str(out_json), "--resize", "letterbox",
         "--runtime", "litert", "--stats-every", "0"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"model {ssd_model_path.name}" in result.stderr and "runtime litert" in result.stderr
    records = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert len(records) == 3
    cars = [d for r in records for d in r["detections"] if d["label"] == "car"]
    assert cars, "letterboxed frames still show the cars"
    for car in cars:  # boxes are mapped back through the padding into the 960x540 frame
        x0, y0, x1, y1 = car["box"]
        assert 0 <= x0 < x1 <= 960 and 0 <= y0 < y1 <= 540
    both = subprocess.run([sys.executable, "-m", "edge.cli", "run", str(ssd_model_path), "--model", "other.tflite"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "two models given" in both.stderr.strip().splitlines()[-1]


class _TracedWindow(Sink):
    """Starts tracemalloc after ``start`` frames and reads it ``frames`` frames later."""

    def __init__(self, start: int, frames: int) -> None:
        self.first, self.end, self.seen = start, start + frames, 0
        self.before = self.after = self.peak = 0

    def write(self, frame, detections, annotated) -> None:
        self.seen += 1
        if self.seen == self.first:
            tracemalloc.start()
            self.before = tracemalloc.get_traced_memory()[0]
        elif self.seen == self.end:
            self.after, self.peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()


@pytest.mark.slow
def test_steady_state_allocates_nothing_frame_sized(ssd_model_path, coco_labels_path, tmp_path):
    """Capture thread + preprocess + invoke + postprocess + annotation + JSON and video sinks, traced
    over 150 frames of 320x240: no frame-sized allocation (230 KB) at any point, no net growth."""
    detector = Detector(ssd_model_path, labels=coco_labels_path, num_threads=2)
    window = _TracedWindow(start=40, frames=150)
    sinks = [JsonLinesSink(tmp_path / "out.jsonl"), VideoSink(tmp_path / "out.mp4", 30), window]
    loop = LiveLoop(detector, open_source("synthetic:320x240"), sinks, max_frames=200, stats_every=0, rss_every=0)
    summary = loop.run()
    assert summary.frames_processed == 200 and window.after
    frame_bytes = 320 * 240 * 3
    transient = window.peak - max(window.before, window.after)
    growth = window.after - window.before
    assert transient < frame_bytes // 4, f"{transient} bytes allocated at once inside the traced frames"
    assert growth < 16 * 1024, f"{growth} bytes kept over 150 frames"


def test_stuck_viewer_never_slows_the_detector(ssd_model_path):
    """A client that opens the MJPEG stream and never reads: frames for it are dropped, the loop runs on."""
    detector = Detector(ssd_model_path, num_threads=1)
    server = PreviewServer("127.0.0.1", 0).start()
    loop = LiveLoop(detector, open_source("synthetic:640x480"), [PreviewSink(server)], max_frames=120,
                    duration=60, stats_every=0)
    server.set_stats(loop.live_stats)
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        summary = loop.run()
    finally:
        stuck.close()
    assert summary.stop_reason == "max-frames" and summary.frames_processed == 120
    exchange = server.exchange
    assert exchange.encoded >= 1, "the viewer did get frames until its socket filled up"
    assert exchange.dropped > 0 and exchange.offered < 120


def test_parse_bind():
    assert parse_bind("8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_bind("[::1]:8080") == ("::1", 8080)


def test_annotator_draws_into_one_buffer_and_leaves_the_frame_alone():
    det = Detections(4, ["circle", "square"])
    det._xyxy[:2] = [[10, 10, 60, 50], [70, 20, 120, 90]]
    det._scores[:2] = [0.9, 0.7]
    det._class_ids[:2] = [0, 1]
    det.count = 2
    frame = np.full((120, 160, 3), 50, np.uint8)
    original = frame.copy()
    annotator = Annotator()
    first = annotator.draw(frame, det, "12.0 fps")
    second = annotator.draw(frame, det)
    assert first is second and np.array_equal(frame, original)
    assert (np.abs(second.astype(int) - 50).sum(axis=2) > 0).sum() > 200, "boxes and tags were drawn"
    gray = annotator.draw(np.full((120, 160), 50, np.uint8), det)
    assert gray.shape == (120, 160, 3)


# ---- recurrent state (LSTM-SSD style raw_outputs/X -> raw_inputs/init_X) ---------------------------


def _build_recurrent_model(path: Path) -> None:
    """A tiny raw-head SSD whose state input ``raw_inputs/init_c`` [1, 4] is fed by ``raw_outputs/c`` =
    ``init_c + 1``; the class logit of anchor 0 is ``init_c[0] - 2``, so scores change frame by frame."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, 32, 32, 3], name="image")
        state = tf.compat.v1.placeholder(tf.float32, [1, 4], name="raw_inputs/init_c")
        new_state = tf.identity(state + 1.0, name="raw_outputs/c")
        anchors = 4  # 2x2 feature map, one box per location
        encodings = tf.identity(tf.zeros([1, anchors, 4]) + 0.0 * tf.reduce_mean(image), name="box_encodings")
        logit = state[:, :1] - 2.0  # [1, 1]
        background = tf.zeros([1, anchors, 1]) - 5.0
        person = tf.concat([tf.reshape(logit, [1, 1, 1]), tf.zeros([1, anchors - 1, 1]) - 5.0], axis=1)
        scores = tf.identity(tf.concat([background, person], axis=2), name="class_predictions")
        with tf.compat.v1.Session(graph=graph) as sess:
            converter = tf.compat.v1.lite.TFLiteConverter.from_session(
                sess, [image, state], [encodings, scores, new_state])
            path.write_bytes(converter.convert())


@pytest.mark.slow
def test_recurrent_state_is_carried_across_frames(tmp_path):
    from edge.contract.anchors import AnchorConfig
    from edge.contract.modelinfo import ModelInfo

    model = tmp_path / "lstm_like.tflite"
    _build_recurrent_model(model)
    anchors = AnchorConfig(feature_map_sizes=[(2, 2)], input_size=(32, 32), min_scale=0.5, max_scale=0.5,
                           aspect_ratios=(1.0,), interpolated_scale_aspect_ratio=0.0,
                           reduce_boxes_in_lowest_layer=False)
    info = ModelInfo(labels=["thing"], anchors=anchors, score_conversion="sigmoid", has_background=True)
    detector = Detector(model, info=info, score_threshold=0.01)
    assert len(detector.backend.state_pairs) == 1
    lines = []

    class Collect(Sink):
        def write(self, frame, detections, annotated):
            lines.append(detections.scores.max() if detections.count else 0.0)

    loop = LiveLoop(detector, open_source("synthetic:64x64"), [Collect()], max_frames=5, stats_every=0)
    loop.run()
    # Frame k sees init_c = k (zeros on the first): score = sigmoid(k - 2).
    expected = [1 / (1 + np.exp(-(k - 2.0))) for k in range(5)]
    np.testing.assert_allclose(lines, expected, atol=1e-3)
