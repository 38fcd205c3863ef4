"""Soak: 5,000 frames from the synthetic source, JSON sink to a file, RSS sampled every 100 frames;
after warm-up RSS must drift by less than 2 MB.

To fit the test budget (the fixture SSD takes ~17 ms per invoke on 2 cores, ~90 s for 5,000 frames)
the model is a small real SSD-shaped TFLite built here (convolutions, raw box/class heads decoded
with anchors and NMS by the Detector). The 50,000-frame soak with the fixture SSD model, reporting
the RSS slope in bytes per frame, is benchmarks/soak.py.

The loop runs in a process of its own, as ``edge run`` does on a board: RSS is the whole process's, and
in the test process the threads and caches other tests left behind (TensorFlow's among them) move it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FRAMES = 5000
WARMUP = 500


def build_small_ssd(path: Path):
    """96x96 float input -> 3 strided convs -> 6x6 grid, one anchor per cell: box encodings [1,36,4] and
    class logits [1,36,4] (background + 3 shapes). Random weights: the point is the runtime path."""
    import numpy as np

    from convert.tf import import_tensorflow

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
    return small_ssd_info()


def small_ssd_info():
    """The anchors and labels the Detector decodes :func:`build_small_ssd`'s raw heads with."""
    from edge.contract.anchors import AnchorConfig
    from edge.contract.modelinfo import ModelInfo

    anchors = AnchorConfig(feature_map_sizes=[(6, 6)], input_size=(96, 96), min_scale=0.3, max_scale=0.3,
                           aspect_ratios=(1.0,), interpolated_scale_aspect_ratio=0.0,
                           reduce_boxes_in_lowest_layer=False)
    return ModelInfo(labels=["circle", "square", "triangle"], anchors=anchors, score_conversion="sigmoid")


SOAK = """
import json, sys
from edge.detector.detector import Detector
from edge.live.loop import LiveLoop
from edge.live.sinks import JsonLinesSink
from edge.live.sources import open_source
from tests.test_soak import small_ssd_info

model, out, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
detector = Detector(model, info=small_ssd_info(), score_threshold=0.3, num_threads=2)
loop = LiveLoop(detector, open_source("synthetic:160x120"), [JsonLinesSink(out)], max_frames=frames,
                stats_every=0, rss_every=100)
summary = loop.run()
print(json.dumps(summary.to_dict()))
print("tensorflow" in sys.modules, file=sys.stderr)
"""


@pytest.mark.slow
def test_rss_is_flat_over_5000_frames(tmp_path):
    model = tmp_path / "small_ssd.tflite"
    build_small_ssd(model)
    out = tmp_path / "soak.jsonl"
    run = subprocess.run([sys.executable, "-c", SOAK, str(model), str(out), str(FRAMES)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == "False", "the board loop pulled in TensorFlow"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["frames_processed"] == FRAMES and summary["frames_dropped"] == 0
    assert summary["detections"] > 0, "the JSON lines carry detections, not just empty frames"
    samples = summary["rss_samples"]
    assert len(samples) == FRAMES // 100
    after = [rss for frames, rss in samples if frames >= WARMUP]
    drift = after[-1] - after[0]
    assert abs(drift) < 2 * 1024 * 1024, f"RSS drifted {drift} bytes after warm-up"
    assert max(after) - min(after) < 2 * 1024 * 1024, "RSS wandered by 2 MB or more between samples"
    with open(out, "rb") as lines:
        assert sum(1 for _ in lines) == FRAMES
