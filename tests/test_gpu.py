"""GPU set-up: configure_gpus ordering and no-GPU behaviour (fresh processes, since TensorFlow's device
state is per process), and the auto batch-size search against TensorFlow's own ResourceExhaustedError
raised by a real training step above a memory cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge.errors import EdgeError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_configure_gpus_after_tensorflow_initialised_raises_clear_error():
    proc = _run("""
        from convert.tf import import_tensorflow
        tf = import_tensorflow()
        tf.constant(1.0) + 1.0  # initialises the runtime and its devices
        from convert.gpu import configure_gpus
        from edge.errors import EdgeError
        try:
            configure_gpus()
        except EdgeError as exc:
            print("ERROR:", exc)
        """)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("ERROR:"))
    assert "after TensorFlow had already initialised" in line
    assert "Call configure_gpus() before any other TensorFlow use" in line
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in line


def test_configure_gpus_first_reports_gpus_and_leaves_cpu_machine_unchanged():
    proc = _run("""
        import json
        from convert.gpu import configure_gpus, runtime_initialized
        from convert.tf import import_keras, import_tensorflow
        setup = configure_gpus(memory_growth=True, mixed_precision=True)
        tf = import_tensorflow()
        gpus = tf.config.list_physical_devices("GPU")
        print(json.dumps({
            "gpus": setup.gpus, "describe": setup.describe(), "growth": setup.memory_growth,
            "mixed": setup.mixed_precision, "initialised": runtime_initialized(),
            "policy": import_keras().mixed_precision.global_policy().name,
            "growth_set": [tf.config.experimental.get_memory_growth(g) for g in gpus],
        }))
        # Still usable afterwards, and a repeat call with the same settings is not an error on GPUs.
        print(float(tf.reduce_sum(tf.ones(3))))
        """)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[0])
    assert proc.stdout.splitlines()[1] == "3.0"
    assert report["initialised"] is False  # configure_gpus itself never initialises the runtime
    if not report["gpus"]:
        assert report["describe"].startswith("no GPU found")
        assert "mixed precision needs a GPU" in report["describe"]
        assert report["growth"] is False and report["mixed"] is False
        assert report["policy"] == "float32"  # nothing changed
    else:  # a GPU machine: growth on every GPU, mixed precision policy set
        assert report["growth_set"] == [True] * len(report["gpus"])
        assert report["policy"] == "mixed_float16"


def test_configure_gpus_rejects_bad_memory_limit():
    from convert.gpu import configure_gpus

    with pytest.raises(EdgeError, match="--memory-limit -5"):
        configure_gpus(memory_limit_mb=-5)


def test_auto_batch_size_keeps_largest_batch_below_first_resource_exhausted():
    """A real training step on a tiny SSD; above a byte cap TensorFlow's own
    ResourceExhaustedError is raised, as the GPU allocator does when a batch does not fit."""
    from convert.config import SSDConfig
    from convert.gpu import find_batch_size
    from convert.losses import LossConfig
    from convert.model import build_ssd
    from convert.steps import make_optimizer, make_train_step
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    config = SSDConfig.create(["a"], input_size=96, width=0.35)  # smallest valid model: fast steps
    model = build_ssd(config)
    step = make_train_step(model, make_optimizer(1e-4, 10, warmup_steps=0), LossConfig())
    num_anchors = config.anchors.num_anchors
    image_bytes = 96 * 96 * 3 * 4
    cap_bytes = 21 * image_bytes  # a "GPU" that fits 21 images' input tensors
    ran = []

    def try_batch(size: int) -> None:
        if size * image_bytes > cap_bytes:
            raise tf.errors.ResourceExhaustedError(
                None, None, f"OOM when allocating tensor with shape[{size},96,96,3]")
        images = tf.random.uniform((size, 96, 96, 3), -1, 1)
        classes = np.zeros((size, num_anchors), np.int32)
        classes[:, :3] = 1
        targets = {"box_targets": tf.zeros((size, num_anchors, 4)), "class_targets": tf.constant(classes)}
        total, _, _ = step(images, targets)
        assert np.isfinite(float(total))
        ran.append(size)

    search = find_batch_size(try_batch, start=2, max_batch=256, safety_margin=0.1)
    # 2, 4, 8, 16 fit; 32 fails; bisection: 24 fails, 20 fits.
    assert ran == [2, 4, 8, 16, 20]
    assert search.largest_ok == 20 and search.first_oom == 24
    assert search.batch_size == 18  # 10 % margin below the largest that fitted
    assert [s for s, r in search.tried if r == "oom"] == [32, 24]
    assert "auto batch size: 18" in search.describe()


def test_auto_batch_size_errors():
    from convert.gpu import find_batch_size
    from convert.tf import import_tensorflow

    tf = import_tensorflow()

    def always_oom(size):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM")

    with pytest.raises(EdgeError, match="even a batch of 4 runs out of GPU memory"):
        find_batch_size(always_oom, start=4)

    def broken(size):  # only OOM means "too big"; other failures are bugs and propagate
        raise tf.errors.InvalidArgumentError(None, None, "bad shape")

    with pytest.raises(tf.errors.InvalidArgumentError):
        find_batch_size(broken)
    assert find_batch_size(lambda size: None, start=2, max_batch=64).largest_ok == 64


def test_single_device_uses_default_strategy():
    from convert.gpu import mirrored_strategy_if_needed
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    strategy = mirrored_strategy_if_needed()
    expected = 1 if len(tf.config.list_logical_devices("GPU")) <= 1 else len(tf.config.list_logical_devices("GPU"))
    assert strategy.num_replicas_in_sync == expected
