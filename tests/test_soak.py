"""Soak: 5,000 frames from the synthetic source, JSON sink to a file, RSS sampled every 100 frames;
after warm-up RSS must drift by less than 2 MB.

To fit the test budget (the fixture SSD takes ~17 ms per invoke on 2 cores, ~90 s for 5,000 frames)
the model is a small real SSD-shaped TFLite built here (convolutions, raw box/class heads decoded
with anchors and NMS by the Detector). The 50,000-frame soak with the fixture SSD model, reporting
the RSS slope in bytes per frame, is benchmarks/soak.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.detector.detector import Detector
from edge.live.loop import LiveLoop
from edge.live.sinks import JsonLinesSink
from edge.live.sources import open_source

FRAMES = 5000
WARMUP = 500


def build_small_ssd(path: Path):
    """96x96 float input -> 3 strided convs -> 6x6 grid, one anchor per cell: box encodings [1,36,4] and
    class logits [1,36,4] (background + 3 shapes). Random weights: the point is the runtime path."""
    import numpy as np

    from convert.tf import import_tensorflow
    from edge.contract.anchors import AnchorConfig
    from edge.contract.modelinfo import ModelInfo

    tf = import_tensorflow()
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, 96, 96, 3], name="image")
        x = image
        for channels_in, channels_out, stride in ((3, 16, 2), (16, 32, 2), (32, 32, 4)):  # 96 -> 48 -> 24 -> 6
            kernel = tf.constant(rng.normal(0, 0.2, (3, 3, channels_in, channels_out)).astype("float32"))
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=stride, padding="SAME"))
        head = tf.constant(rng.normal(0, 0.1, (1, 1, 32, 8)).astype("float32"))
        out = tf.reshape(tf.nn.conv2d(x, head, strides=1, padding="SAME"), [1, 36, 8])
        encodings = tf.identity(out[:, :, :4], name="box_encodings")
        logits = tf.identity(out[:, :, 4:], name="class_predictions")
        with tf.compat.v1.Session(graph=graph) as sess:
            converter = tf.compat.v1.lite.TFLiteConverter.from_session(sess, [image], [encodings, logits])
            path.write_bytes(converter.convert())
    anchors = AnchorConfig(feature_map_sizes=[(6, 6)], input_size=(96, 96), min_scale=0.3, max_scale=0.3,
                           aspect_ratios=(1.0,), interpolated_scale_aspect_ratio=0.0,
                           reduce_boxes_in_lowest_layer=False)
    return ModelInfo(labels=["circle", "square", "triangle"], anchors=anchors, score_conversion="sigmoid")


@pytest.mark.slow
def test_rss_is_flat_over_5000_frames(tmp_path):
    model = tmp_path / "small_ssd.tflite"
    info = build_small_ssd(model)
    detector = Detector(model, info=info, score_threshold=0.3, num_threads=2)
    out = tmp_path / "soak.jsonl"
    loop = LiveLoop(detector, open_source("synthetic:160x120"), [JsonLinesSink(out)], max_frames=FRAMES,
                    stats_every=0, rss_every=100)
    summary = loop.run()
    assert summary.frames_processed == FRAMES and summary.frames_dropped == 0
    assert summary.detections > 0, "the JSON lines carry detections, not just empty frames"
    assert len(summary.rss_samples) == FRAMES // 100
    drift = summary.rss_drift(WARMUP)
    assert drift is not None and abs(drift) < 2 * 1024 * 1024, f"RSS drifted {drift} bytes after warm-up"
    after = [rss for frames, rss in summary.rss_samples if frames >= WARMUP]
    assert max(after) - min(after) < 2 * 1024 * 1024, "RSS wandered by 2 MB or more between samples"
    with open(out, "rb") as lines:
        assert sum(1 for _ in lines) == FRAMES
