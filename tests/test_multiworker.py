"""``edge train --cluster``: two CPU workers on loopback ports train one model (MultiWorkerMirroredStrategy).

The slow tests share one story, told by the ``cluster_runs`` fixture (two launches of two worker
processes, the tiny SSDLite of tests/test_train.py: width 0.35, 160 px, synthetic shapes):

1. both workers start fresh with the same ``--out`` (as on a shared disk: only the chief may write
   there); the worker passes a larger ``--batch-size`` than the chief, so both must settle on the
   chief's; after the first checkpoint the non-chief worker is SIGKILLed. The chief must stop with one
   EdgeError line within the worker timeout, leaving only complete files in the run directory.
2. both start again with ``--resume``: the chief restores the checkpoint, the worker (which has no
   copy of it) takes the chief's state, and they finish the run; the worker's temporary files are
   gone, and the chief's run directory loads and detects, and converts to an int8 model the board runs.

The parsing tests need no TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convert import distributed
from convert.cluster import (check_port_free, check_worker_timeout, cluster_from_tf_config, parse_cluster,
                            resolve_cluster)
from convert.worker_sync import check_agreement
from edge.errors import EdgeError

ROOT = Path(__file__).resolve().parents[1]
SIZE, WIDTH = 160, 0.35
EPOCHS, STEPS, CHECKPOINT_EVERY = 1, 3, 1  # 3 steps, a checkpoint after each
CHIEF_BATCH, WORKER_BATCH = 4, 6  # per worker: the smallest wins, so the global batch is 8
WORKER_TIMEOUT = 20  # seconds
EXIT_MARGIN = 15  # seconds past the worker timeout for the survivor to print its line and exit


# ---------------------------------------------------------------- cluster descriptions (no TensorFlow)

def test_cluster_option_names_the_chief_and_every_worker():
    cluster = parse_cluster("10.0.0.5:2222, 10.0.0.6:2222,[::1]:3333", 1)
    assert cluster.addresses == ["10.0.0.5:2222", "10.0.0.6:2222", "[::1]:3333"]
    assert (cluster.address, cluster.worker_id, cluster.is_chief, cluster.num_workers) == ("10.0.0.6:2222", 1, False, 3)
    assert parse_cluster("a:1,b:2", 0).is_chief
    assert cluster.tf_config() == {"cluster": {"worker": cluster.addresses}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("text, index, message", [
    ("a:1,b:2", None, "needs --task-index"),
    ("a:1,b:2", 2, "--task-index 2: --cluster lists 2 worker"),
    ("a:1,a:1", 0, "listed twice"),
    ("a:1,b", 0, "'b' is not host:port"),
    ("a:1,b:70000", 0, "not host:port"),
    (",", 0, "no workers"),
])
def test_cluster_option_refuses_what_cannot_work(text, index, message):
    with pytest.raises(EdgeError, match=message):
        parse_cluster(text, index)


def test_tf_config_is_read_with_a_chief_job_first():
    text = json.dumps({"cluster": {"worker": ["w0:1", "w1:1"], "chief": ["c:1"]},
                       "task": {"type": "worker", "index": 1}})
    cluster = resolve_cluster(None, None, {"TF_CONFIG": text})
    assert cluster.addresses == ["c:1", "w0:1", "w1:1"] and cluster.worker_id == 2 and not cluster.is_chief
    chief = cluster_from_tf_config(json.dumps({"cluster": {"worker": ["w0:1"], "chief": ["c:1"]},
                                               "task": {"type": "chief", "index": 0}}))
    assert chief.is_chief and chief.address == "c:1"
    # --cluster wins over TF_CONFIG; neither means one machine.
    assert resolve_cluster("a:1,b:2", 0, {"TF_CONFIG": text}).source == "--cluster"
    assert resolve_cluster(None, None, {}) is None
    with pytest.raises(EdgeError, match="--task-index needs --cluster"):
        resolve_cluster(None, 0, {})


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG: expected"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG: expected"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}),
     "only 'chief' and 'worker'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}), "only 'chief'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), "task worker 3 is not"),
])
def test_tf_config_refuses_what_cannot_work(text, message):
    with pytest.raises(EdgeError, match=message):
        cluster_from_tf_config(text)


def test_worker_timeout_and_busy_port_are_refused_before_any_work():
    with pytest.raises(EdgeError, match="--worker-timeout 1: must be at least 5"):
        check_worker_timeout(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EdgeError, match=f"port {port} of this worker .* is not free"):
            check_port_free(parse_cluster(f"127.0.0.1:{port},127.0.0.1:1", 0))


def test_batch_agreement_takes_the_smallest_and_refuses_other_data():
    rows = [[16, 300, 7, 30, 9], [12, 300, 7, 30, 9], [24, 300, 7, 30, 9]]
    assert check_agreement(rows) == 12
    cluster = parse_cluster("a:1,b:2,c:3", 0)
    with pytest.raises(EdgeError, match=r"worker 2 \(c:3\) loaded other data .*298 training"):
        check_agreement(rows[:2] + [[24, 298, 7, 30, 9]], cluster)


def test_lost_worker_is_named_from_tensorflows_message():
    cluster = parse_cluster("127.0.0.1:5000,127.0.0.1:5001", 0)
    reset = ("Graph execution error:\n\nCollective ops is aborted by: recvmsg:Connection reset by peer\n"
             "Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling")
    assert distributed._peer(reset, _Fake(cluster)) == "worker 1 (127.0.0.1:5001)"
    assert distributed._reason(reset) == "connection reset"
    heartbeat = "Error reported from /job:worker/task:0: The following tasks are unhealthy (stopped sending " \
                "heartbeats):\n/job:worker/replica:0/task:1"
    assert distributed._peer(heartbeat, _Fake(cluster)) == "worker 1 (127.0.0.1:5001)"
    assert distributed._reason(heartbeat) == "stopped sending heartbeats"
    worker = parse_cluster("127.0.0.1:5000,127.0.0.1:5001", 1)
    silent_chief = "Deadline Exceeded\nRPC: /tensorflow.CoordinationService/Heartbeat"
    assert distributed._peer(silent_chief, _Fake(worker)) == "worker 0 (127.0.0.1:5000)"
    other = "Graph execution error:\n{{function_node __wrapped__CollectiveReduceV2}} Collective ops is aborted by: X"
    assert distributed._reason(other) == "Collective ops is aborted by: X"


class _Fake:
    def __init__(self, cluster):
        self._edge_cluster = cluster


# ---------------------------------------------------------------- two workers, for real

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _Worker:
    """One ``edge train --cluster`` process, its output in files, its temporary folder its own."""

    def __init__(self, base: Path, name: str, args: list[str], tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.out, self.err = tmp, base / f"{name}.out", base / f"{name}.err"
        env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
        env.pop("TF_CONFIG", None)
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "train", *args], cwd=ROOT, env=env,
                                         stdout=out, stderr=err)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"worker still running after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return f"--- stdout\n{self.out.read_text()[-3000:]}\n--- stderr\n{self.err.read_text()[-3000:]}"


def _launch(base: Path, tag: str, data: Path, val: Path, run_dir: Path, extra: list[str]) -> list[_Worker]:
    ports = _free_ports(2)
    cluster = ",".join(f"127.0.0.1:{p}" for p in ports)
    common = ["--data", str(data), "--val-data", str(val), "--out", str(run_dir), "--input-size", str(SIZE),
              "--width", str(WIDTH), "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
              "--checkpoint-every", str(CHECKPOINT_EVERY), "--backbone-weights", "none", "--workers", "1",
              "--quiet", "--cluster", cluster, "--worker-timeout", str(WORKER_TIMEOUT), *extra]
    return [_Worker(base, f"{tag}{i}", [*common, "--task-index", str(i), "--batch-size", str(batch)],
                    base / f"tmp-{tag}{i}") for i, batch in enumerate((CHIEF_BATCH, WORKER_BATCH))]


def _run_dir_files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}


def _complete_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the checkpoints the state file lists; fails on anything else in the run directory."""
    state = (run_dir / "checkpoints" / "checkpoint").read_text()
    steps = sorted(int(s) for s in re.findall(r'all_model_checkpoint_paths: "ckpt-(\d+)"', state))
    expected = {"config.json", "checkpoints", "checkpoints/checkpoint"} | {
        f"checkpoints/ckpt-{s}.{ext}" for s in steps for ext in ("index", "data-00000-of-00001")}
    files = _run_dir_files(run_dir) - {"history.json"}
    assert files == expected, f"unexpected or missing: {sorted(files ^ expected)}"
    return steps


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    from convert.data.synth import write_synthetic_voc

    base = tmp_path_factory.mktemp("multiworker")
    data, val, run_dir = base / "train", base / "val", base / "run"
    write_synthetic_voc(data, 48, size=SIZE, seed=1)
    write_synthetic_voc(val, 8, size=SIZE, seed=2)
    started = time.monotonic()

    # 1. fresh start; the non-chief worker dies after the first checkpoint.
    chief, worker = _launch(base, "kill", data, val, run_dir, [])
    state = run_dir / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 300
    while not state.exists():
        for w in (chief, worker):
            if w.proc.poll() is not None:
                pytest.fail(f"a worker exited before the first checkpoint ({w.proc.returncode}):\n{w.log()}")
        if time.monotonic() > deadline:
            chief.proc.kill()
            worker.proc.kill()
            pytest.fail(f"no checkpoint after 300 s:\n{chief.log()}")
        time.sleep(0.2)
    first_checkpoint = time.monotonic() - started
    worker.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    worker.proc.wait()
    chief_rc = chief.wait(WORKER_TIMEOUT + EXIT_MARGIN + 60)
    stopped_after = time.monotonic() - killed
    kill_run = {"chief_rc": chief_rc, "stopped_after": stopped_after, "first_checkpoint": first_checkpoint,
                "stderr": chief.err.read_text(), "stdout": chief.out.read_text(), "log": chief.log(),
                "files": _run_dir_files(run_dir), "config": json.loads((run_dir / "config.json").read_text())}
    kill_run["steps"] = _complete_checkpoints(run_dir)

    # 2. both start again with --resume and finish the run.
    t0 = time.monotonic()
    chief, worker = _launch(base, "resume", data, val, run_dir, ["--resume"])
    rcs = [w.wait(400) for w in (chief, worker)]
    resume_run = {"rcs": rcs, "seconds": time.monotonic() - t0, "chief": chief.out.read_text(),
                  "worker": worker.out.read_text(), "logs": chief.log() + worker.log(),
                  "worker_tmp": sorted(p.name for p in worker.tmp.iterdir() if "edge" in p.name)}
    print(f"\nmulti-worker: first checkpoint {first_checkpoint:.0f} s after start; chief stopped "
          f"{stopped_after:.1f} s after the kill; resumed run {resume_run['seconds']:.0f} s; "
          f"total {time.monotonic() - started:.0f} s")
    return {"kill": kill_run, "resume": resume_run, "run_dir": run_dir, "val": val}


@pytest.mark.slow
def test_survivor_stops_with_one_line_within_the_worker_timeout(cluster_runs):
    run = cluster_runs["kill"]
    assert run["chief_rc"] == 2, run["log"]
    errors = [line for line in run["stderr"].splitlines() if "edge: error:" in line]
    assert len(errors) == 1, run["log"]
    assert "lost contact with worker 1 (127.0.0.1:" in errors[0] and "--resume" in errors[0], errors[0]
    assert "Traceback" not in run["stderr"], run["log"]
    assert run["stopped_after"] < WORKER_TIMEOUT + EXIT_MARGIN, run["stopped_after"]
    # Both workers agreed on the chief's smaller batch: global batch = per-worker batch x 2.
    assert "global batch 8 = 4 per worker x 2 workers" in run["stdout"], run["log"]


@pytest.mark.slow
def test_nothing_half_written_after_a_lost_worker(cluster_runs):
    run = cluster_runs["kill"]
    assert run["steps"] and min(run["steps"]) >= CHECKPOINT_EVERY  # _complete_checkpoints checked every file
    assert not any(name.startswith(".") or "_temp" in name or ".part" in name for name in run["files"])
    assert run["config"]["training"]["batch_size"] == 2 * CHIEF_BATCH and run["config"]["training"]["workers"] == 2


@pytest.mark.slow
def test_resume_works_on_every_worker_and_only_the_chief_writes(cluster_runs):
    run, killed_at = cluster_runs["resume"], max(cluster_runs["kill"]["steps"])
    assert run["rcs"] == [0, 0], run["logs"]
    assert f"ckpt-{killed_at} at step {killed_at}" in run["chief"], run["logs"]  # the chief restored...
    assert f"took the chief's state at step {killed_at}" in run["worker"], run["logs"]  # ...and handed it over
    assert f"done: {EPOCHS * STEPS} steps, checkpoint " in run["chief"]
    assert f"done: {EPOCHS * STEPS} steps; the chief wrote the checkpoints" in run["worker"]
    assert run["worker_tmp"] == []  # the worker's temporary run directory (edge-train-worker1-*) is gone
    run_dir = cluster_runs["run_dir"]
    assert max(_complete_checkpoints(run_dir)) == EPOCHS * STEPS
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["final"]["steps"] == EPOCHS * STEPS
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert history[-1]["step"] == EPOCHS * STEPS


@pytest.mark.slow
def test_chiefs_run_directory_loads_and_detects(cluster_runs):
    from convert.checkpoints import load_trained_model
    from convert.evaluate import predict_keras
    from convert.data import load_dataset

    model, config = load_trained_model(cluster_runs["run_dir"])
    assert config.architecture.input_size == SIZE and config.architecture.width == WIDTH
    val = load_dataset(cluster_runs["val"])
    predictions, indices = predict_keras(model, config, val, batch_size=8, score_threshold=0.0)
    assert sorted(indices) == list(range(len(val.samples)))
    boxes, scores, classes = predictions[0]
    assert len(scores) > 0 and np.all(np.isfinite(boxes)) and np.all((scores >= 0) & (scores <= 1))
    assert set(classes.tolist()) <= set(range(len(config.labels)))


@pytest.mark.slow
def test_chiefs_run_directory_converts_to_int8_and_the_board_runs_it(cluster_runs, tmp_path, capsys):
    """What a user does next with the run two machines trained: edge convert, then edge detect."""
    from edge.cli import main

    run_dir, val = cluster_runs["run_dir"], cluster_runs["val"]
    out = tmp_path / "chief_int8.tflite"
    # A few dozen steps leave every score low: keep them all (threshold 0) so the board has boxes to report.
    assert main(["convert", str(run_dir), "-o", str(out), "--sparsity", "0", "--calib", str(val),
                 "--calib-images", "8", "--val", str(val), "--score-threshold", "0"]) == 0, capsys.readouterr().err
    report = json.loads(out.with_name("chief_int8.report.json").read_text())
    assert report["output_model"] == "int8-ptq"
    assert report["models"]["int8-ptq"]["stats"]["input"]["dtype"] == "uint8"  # full-integer, raw pixels in
    assert b"TFLite_Detection_PostProcess" in out.read_bytes()
    capsys.readouterr()
    image = sorted((val / "JPEGImages").iterdir())[0]
    assert main(["detect", str(out), str(image), "--score", "0.0", "--out", str(tmp_path / "detected")]) == 0
    assert image.name in capsys.readouterr().out
    assert json.loads((tmp_path / "detected" / "detections.json").read_text())


@pytest.mark.slow
def test_a_worker_that_never_joins_stops_the_chief_with_one_line(tmp_path):
    from convert.data.synth import write_synthetic_voc

    write_synthetic_voc(tmp_path / "data", 4, size=SIZE, seed=1)
    chief_port, absent_port = _free_ports(2)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    chief = _Worker(tmp_path, "alone", ["--data", str(tmp_path / "data"), "--out", str(run_dir), "--input-size",
                                        str(SIZE), "--width", str(WIDTH), "--backbone-weights", "none",
                                        "--cluster", f"127.0.0.1:{chief_port},127.0.0.1:{absent_port}",
                                        "--task-index", "0", "--worker-timeout", "5"], tmp_path / "tmp")
    assert chief.wait(5 + distributed.JOIN_GRACE + 60) == 2, chief.log()
    seconds = time.monotonic() - started  # TensorFlow's import included
    errors = [line for line in chief.err.read_text().splitlines() if "edge: error:" in line]
    assert len(errors) == 1 and "not every worker joined within 5 s" in errors[0], chief.log()
    assert seconds < 5 + 45, seconds
    assert not run_dir.exists()


@pytest.mark.slow
def test_partial_checkpoint_files_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
    for name in ("ckpt-4.index", "ckpt-4.data-00000-of-00001", "ckpt-6.index"):
        (folder / name).write_bytes(b"x")
    (folder / "ckpt-6_temp").mkdir()
    (folder / "ckpt-6_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    distributed.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
