"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy``, one process per machine.

``edge train --cluster host0:port,host1:port --task-index I`` (or a ``TF_CONFIG`` environment
variable) starts worker ``I`` of the cluster; task 0 (or TF_CONFIG's ``chief``) is the chief. Every
worker runs the same loop in lock-step: gradients are all-reduced by TensorFlow's collectives each
step, so the model stays identical everywhere. What this module adds around TensorFlow's engine:

- **Cluster description** (:func:`resolve_cluster`): ``--cluster``/``--task-index`` or TF_CONFIG,
  checked up front (addresses, duplicates, index, this worker's port free).
- **Bounded failure** (:func:`create_strategy`): the coordination service's heartbeats declare a
  worker that died or cannot be reached lost after ``--worker-timeout`` seconds (a killed process is
  usually noticed at once: its connections reset or are refused), every collective is aborted, and
  the survivors print one :class:`~edge.errors.EdgeError` line (:func:`lost_worker_error`) and exit
  at once (:func:`exit_at_once`). Joining at start is bounded by the same timeout; a live worker
  that hangs inside a step holds the others at most ``COLLECTIVE_TIMEOUT_FACTOR`` times as long
  (the collectives' own timeout).
- **Data**: the global batch is the per-worker batch times the workers; each worker reads its own
  interleaved share of the images (:func:`worker_shard`, explicit sharding before any image is
  decoded) and feeds its replicas per-replica batches (:func:`distribute_batches`).
- **One state**: the chief alone restores ``--resume``'s checkpoint, and every worker then takes the
  chief's variables (:func:`sync_from_chief`), so ``--resume`` works on all workers without a
  shared file system. ``--batch-size auto`` is measured on each worker and the smallest wins
  (:func:`agree_on_batch_size`, which also refuses workers that loaded different data).
- **Only the chief writes** (:func:`chief_writes`): the others write their run directory (config,
  checkpoints: saving reads synchronised variables, a collective every worker must join) into a
  temporary folder that is deleted afterwards. The chief's files are complete or absent:
  ``config.json`` and ``history.json`` go through :mod:`edge.files`, checkpoints through
  ``tf.train.CheckpointManager`` (its state file names only finished checkpoints).
- **Stopping together** (:class:`StopAgreement`): SIGTERM on any worker stops every worker after the
  same step, so all can checkpoint (a checkpoint is collective); Ctrl-C stops that worker at once
  and the others as a lost worker.

Pure Python until a strategy is made: parsing imports no TensorFlow.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import EdgeError

DEFAULT_WORKER_TIMEOUT = 60  # seconds: heartbeats, joining at start, the shutdown barrier
MIN_WORKER_TIMEOUT = 5  # heartbeats are sent every timeout / 2; shorter invites false alarms under load
JOIN_GRACE = 30  # seconds past the join timeout before the watchdog ends a process still waiting
COLLECTIVE_TIMEOUT_FACTOR = 10  # a collective waits this many worker timeouts for a live but stuck peer
JOBS = ("chief", "worker")  # the task types that train; TF_CONFIG's chief (if any) comes first
SCRATCH_PREFIX = "edge-train-"  # non-chief workers' temporary run directories: edge-train-worker1-XXXX


# ---------------------------------------------------------------- describing the cluster (no TensorFlow)

@dataclass(frozen=True)
class Cluster:
    """The training tasks (``{"chief": [...], "worker": [...]}`` as TF_CONFIG has it) and which one this is."""

    jobs: dict  # job name -> list of "host:port", in task order
    task_type: str  # "worker" or "chief"
    task_index: int
    source: str  # "--cluster" or "TF_CONFIG": for messages

    @property
    def addresses(self) -> list[str]:
        """Every task's address in worker-id order (the chief, if a separate job, first)."""
        return [a for job in JOBS for a in self.jobs.get(job, [])]

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def worker_id(self) -> int:
        """0 for the chief, then 1, 2, ... (TensorFlow's id in cluster)."""
        return self.addresses.index(self.address)

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def is_chief(self) -> bool:
        return self.worker_id == 0

    def tf_config(self) -> dict:
        return {"cluster": {k: list(v) for k, v in self.jobs.items()},
                "task": {"type": self.task_type, "index": self.task_index}}


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _check_address(address: str, where: str) -> str:
    address = address.strip()
    match = _ADDRESS.match(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise EdgeError(f"{where}: {address!r} is not host:port (e.g. 10.0.0.5:12345, [::1]:12345)")
    return address


def _check_jobs(jobs: dict, where: str) -> None:
    seen: set[str] = set()
    for job in jobs:
        for address in jobs[job]:
            if address in seen:
                raise EdgeError(f"{where}: {address} is listed twice; each worker needs its own host:port")
            seen.add(address)
    if len(jobs.get("chief", [])) > 1:
        raise EdgeError(f"{where}: at most one chief")
    if not seen:
        raise EdgeError(f"{where}: no workers listed")


def parse_cluster(text: str, task_index: int | None) -> Cluster:
    """``--cluster host0:port,host1:port,...`` with ``--task-index I``: task 0 is the chief."""
    if task_index is None:
        raise EdgeError("--cluster needs --task-index (0 on the chief, 1, 2, ... on the others, "
                        "in --cluster's order)")
    addresses = [_check_address(a, "--cluster") for a in text.split(",") if a.strip()]
    jobs = {"worker": addresses}
    _check_jobs(jobs, "--cluster")
    if not 0 <= task_index < len(addresses):
        raise EdgeError(f"--task-index {task_index}: --cluster lists {len(addresses)} worker(s), "
                        f"so 0..{len(addresses) - 1}")
    return Cluster(jobs, "worker", int(task_index), "--cluster")


def cluster_from_tf_config(text: str) -> Cluster:
    """TensorFlow's ``TF_CONFIG``: ``{"cluster": {"worker": [...], "chief": [...]}, "task": {...}}``."""
    where = "TF_CONFIG"
    try:
        data = json.loads(text)
        cluster, task = data["cluster"], data["task"]
        task_type, index = str(task["type"]), int(task["index"])
        if not isinstance(cluster, dict):
            raise TypeError("cluster is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EdgeError(f"{where}: expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                        f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}} ({exc})") from None
    unsupported = sorted(set(cluster) - set(JOBS))
    if unsupported or task_type not in JOBS:
        raise EdgeError(f"{where}: only 'chief' and 'worker' tasks train together "
                        f"(MultiWorkerMirroredStrategy); got {', '.join(unsupported) or task_type}")
    jobs = {}
    for job in JOBS:
        if job in cluster:
            if not isinstance(cluster[job], list):
                raise EdgeError(f"{where}: cluster.{job} must be a list of host:port")
            jobs[job] = [_check_address(str(a), f"{where} cluster.{job}") for a in cluster[job]]
    _check_jobs(jobs, where)
    if not 0 <= index < len(jobs.get(task_type, [])):
        raise EdgeError(f"{where}: task {task_type} {index} is not in the cluster "
                        f"({len(jobs.get(task_type, []))} {task_type} task(s))")
    return Cluster(jobs, task_type, index, where)


def resolve_cluster(cluster: str | None, task_index: int | None, environ=None) -> Cluster | None:
    """The cluster this process belongs to (``--cluster`` wins over TF_CONFIG), or None for one machine."""
    environ = os.environ if environ is None else environ
    if cluster:
        return parse_cluster(cluster, task_index)
    if task_index is not None:
        raise EdgeError("--task-index needs --cluster (or a TF_CONFIG environment variable instead of both)")
    text = environ.get("TF_CONFIG", "").strip()
    return cluster_from_tf_config(text) if text else None


def check_port_free(cluster: Cluster) -> None:
    """This worker's port must be free: TensorFlow's own error for a taken port is a page of gRPC."""
    port = int(cluster.address.rsplit(":", 1)[1])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((host, port))
            return
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here: try IPv4
                continue
            raise EdgeError(f"{cluster.source}: port {port} of this worker ({cluster.address}, task "
                            f"{cluster.task_type} {cluster.task_index}) is not free ({exc.strerror}); "
                            "stop what uses it or choose another port") from None


def check_worker_timeout(seconds: float) -> float:
    if not seconds >= MIN_WORKER_TIMEOUT:
        raise EdgeError(f"--worker-timeout {seconds}: must be at least {MIN_WORKER_TIMEOUT} seconds")
    return float(seconds)


# ---------------------------------------------------------------- the strategy

def create_strategy(cluster: Cluster, worker_timeout: float = DEFAULT_WORKER_TIMEOUT, *,
                    exit_on_join_timeout: bool = True):
    """``MultiWorkerMirroredStrategy`` for ``cluster``; blocks until every worker has joined.

    Call after :func:`convert.gpu.configure_gpus` and before anything else touches TensorFlow (the
    strategy starts this process's gRPC server and fixes its devices). Heartbeats, joining and the
    shutdown barrier are bounded by ``worker_timeout`` seconds, collectives by
    ``COLLECTIVE_TIMEOUT_FACTOR`` times that. Not every worker joined in time: :class:`EdgeError`;
    should TensorFlow keep waiting all the same, ``exit_on_join_timeout`` prints that line and ends
    the process ``JOIN_GRACE`` seconds later.
    """
    from convert.gpu import runtime_initialized
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    worker_timeout = check_worker_timeout(worker_timeout)
    if runtime_initialized():
        raise EdgeError("the multi-worker strategy must be created before TensorFlow runs anything "
                        "(create it right after configure_gpus())")
    check_port_free(cluster)
    ms = int(worker_timeout * 1000)
    leader = "/job:chief/replica:0/task:0" if "chief" in cluster.jobs else "/job:worker/replica:0/task:0"
    # The strategy configures the coordination service itself only when nobody did: set the
    # heartbeat and join timeouts first (TensorFlow's defaults are 10 s and unbounded).
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=leader, enable_health_check=True,
        cluster_register_timeout_in_ms=ms, heartbeat_timeout_in_ms=ms, shutdown_barrier_timeout_in_ms=ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster.jobs[job]))
                          for job in JOBS if job in cluster.jobs])
    # Registration is a barrier with that timeout on every task, the service's host included.
    context.context().coordination_service.cluster_register_with_barrier = True
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.jobs), task_type=cluster.task_type, task_id=cluster.task_index,
        rpc_layer="grpc", num_accelerators={"GPU": len(tf.config.list_physical_devices("GPU"))})
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=worker_timeout * COLLECTIVE_TIMEOUT_FACTOR)

    def not_joined(reason: str) -> EdgeError:
        return EdgeError(f"{cluster.source}: not every worker joined within {worker_timeout:g} s ({reason}); "
                         "start every worker with the same cluster and its own task index, and check that "
                         f"{', '.join(cluster.addresses)} reach each other (or raise --worker-timeout)")

    # A backstop: TensorFlow's join timeout has not always covered the coordination service's host
    # (the chief), whose wait happens inside a call that Python cannot interrupt.
    watchdog = threading.Timer(worker_timeout + JOIN_GRACE,
                               lambda: exit_at_once(not_joined("some never connected")))
    watchdog.daemon = True
    if exit_on_join_timeout:
        watchdog.start()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                             communication_options=options)
    except (tf.errors.OpError, RuntimeError) as exc:
        raise not_joined(_reason(str(exc))) from None
    finally:
        watchdog.cancel()
    strategy._edge_cluster = cluster  # for messages; TensorFlow's resolver keeps only the spec
    strategy._edge_worker_timeout = worker_timeout
    return strategy


def is_multi_worker(strategy) -> bool:
    return strategy is not None and getattr(strategy.extended, "_num_workers", 1) > 1


def num_workers(strategy) -> int:
    return getattr(strategy.extended, "_num_workers", 1) if strategy is not None else 1


def is_chief(strategy) -> bool:
    """True on the chief and whenever there is a single worker: the one that writes the run directory."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def worker_id(strategy) -> int:
    return int(getattr(strategy.extended, "_id_in_cluster", 0)) if strategy is not None else 0


def describe(strategy, per_worker_batch: int) -> str:
    """The start-up line: who this is, and the global batch."""
    cluster: Cluster | None = getattr(strategy, "_edge_cluster", None)
    n, me = num_workers(strategy), worker_id(strategy)
    where = f" ({cluster.address})" if cluster else ""
    role = "chief, writes the run directory" if is_chief(strategy) else "writes only temporary files"
    local = strategy.num_replicas_in_sync // n
    return (f"MultiWorkerMirroredStrategy: worker {me} of {n}{where}, {role}; {local} replica(s) here; "
            f"global batch {per_worker_batch * n} = {per_worker_batch} per worker x {n} workers")


# ---------------------------------------------------------------- exchanging small values

def _sum_over_workers(strategy, tensor):
    """``tensor`` (a plain, per-worker value) summed over the workers: one collective, cross-replica."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    return strategy.reduce(tf.distribute.ReduceOp.SUM, tensor, axis=None)


def gather(strategy, values: list[int]) -> list[list[int]]:
    """Every worker's ``values`` (same length everywhere), indexed by worker id: one all-reduce."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    n = num_workers(strategy)
    row = tf.constant([float(v) for v in values], tf.float64)
    mine = tf.one_hot(worker_id(strategy), n, dtype=tf.float64)[:, None] * row[None, :]  # zero rows but ours
    table = _sum_over_workers(strategy, mine).numpy()
    return [[int(round(v)) for v in table[w]] for w in range(n)]


def data_signature(dataset) -> list[int]:
    """Sizes and a checksum of the labels and file names: equal on workers that loaded the same data."""
    if dataset is None:
        return [0, 0]
    names = "\n".join(list(dataset.labels) + [Path(s.image_path).name for s in dataset.samples])
    return [len(dataset.samples), zlib.crc32(names.encode("utf-8"))]


def agree_on_batch_size(strategy, batch_size: int, train_set=None, val_set=None) -> int:
    """The smallest of every worker's per-worker batch size; EdgeError when the workers' data differ.

    Every worker must call it at the same point (it is a collective).
    """
    mine = [int(batch_size)] + data_signature(train_set) + data_signature(val_set)
    rows = gather(strategy, mine)
    return check_agreement(rows, getattr(strategy, "_edge_cluster", None))


def check_agreement(rows: list[list[int]], cluster: Cluster | None = None) -> int:
    """:func:`agree_on_batch_size` on the gathered rows ``[batch, train n, train crc, val n, val crc]``."""
    for w, row in enumerate(rows):
        if row[1:] != rows[0][1:]:
            who = f"worker {w} ({cluster.addresses[w]})" if cluster else f"worker {w}"
            raise EdgeError(f"{who} loaded other data than the chief ({row[1]} training / {row[3]} validation "
                            f"images vs {rows[0][1]} / {rows[0][3]}, or other file names or labels): give "
                            "every worker the same --data (and --val-data, --classes, --val-split, --seed)")
    return min(row[0] for row in rows)


# ---------------------------------------------------------------- input

def worker_shard(dataset, strategy):
    """This worker's share of ``dataset``: samples ``w, w + W, w + 2W, ...`` (all of it on one worker)."""
    if not is_multi_worker(strategy):
        return dataset
    n, w = num_workers(strategy), worker_id(strategy)
    if len(dataset.samples) < n:
        raise EdgeError(f"training set has {len(dataset.samples)} image(s), fewer than the {n} workers")
    return dataset.subset(range(w, len(dataset.samples), n))


def distribute_batches(strategy, pipeline, global_batch: int, seed: int):
    """Per-replica training batches from ``pipeline`` (already this worker's shard), as the strategy feeds them."""
    if global_batch % strategy.num_replicas_in_sync:
        raise EdgeError(f"global batch {global_batch} does not split evenly over "
                        f"{strategy.num_replicas_in_sync} replicas; choose a per-worker --batch-size that "
                        f"is a multiple of the GPUs per worker")

    def dataset_fn(input_context):
        # Each worker's pipeline reads its own shard (worker_shard): no automatic sharding on top.
        return pipeline.training_dataset(input_context.get_per_replica_batch_size(global_batch), seed=seed)

    return strategy.distribute_datasets_from_function(dataset_fn)


# ---------------------------------------------------------------- one state on every worker

def _state_variables(checkpoint) -> list:
    """Every variable a training checkpoint holds, in the same order on every worker."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    found, seen = [], set()
    for obj in tf.train.TrackableView(checkpoint).descendants():
        if isinstance(obj, tf.Variable) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)
    return found


def build_optimizer(strategy, model, optimizer) -> None:
    """Multi-worker: create the optimizer's slots now (inside the strategy's scope, before a restore),
    so the chief's restored slots exist as variables that :func:`sync_from_chief` can hand over."""
    if is_multi_worker(strategy):
        optimizer.build(model.trainable_variables)


def sync_from_chief(strategy, checkpoints, verbose: int = 1) -> None:
    """Multi-worker: every worker takes the chief's model, optimizer and counters (one all-reduce).

    The chief alone restores ``--resume``'s checkpoint (the others may have no copy of it); this
    hands its state to everyone, so all workers continue from the same step with the same weights.
    """
    if not is_multi_worker(strategy):
        return
    import numpy as np

    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    checkpoints.checkpoint.save_counter  # noqa: B018 (created lazily by a restore: make it exist everywhere)
    variables = _state_variables(checkpoints.checkpoint)
    chief = 1.0 if is_chief(strategy) else 0.0
    sizes = gather(strategy, [len(variables), sum(int(v.shape.num_elements()) for v in variables)])
    if any(row != sizes[0] for row in sizes):
        built = ", ".join(f"worker {w}: {a} variables / {b} values" for w, (a, b) in enumerate(sizes))
        raise EdgeError(f"workers built different models ({built}); every worker must run the same "
                        "edgekit version with the same options")

    # Each worker's own copy (first local replica; the others equal it), zeroed except on the chief.
    local = [strategy.experimental_local_results(v)[0] for v in variables]
    flat = tf.concat([tf.reshape(tf.cast(v.read_value(), tf.float64), [-1]) for v in local], 0)
    flat = _sum_over_workers(strategy, flat * chief)
    offset = 0
    for v in variables:
        size = int(v.shape.num_elements())
        value = tf.reshape(tf.cast(flat[offset:offset + size], v.dtype), v.shape)
        for component in strategy.experimental_local_results(v):
            component.assign(value)
        offset += size
    # Check what landed: every worker's checksum of its own variables must be the chief's.
    total = sum(float(np.sum(np.asarray(c.numpy(), np.float64)))  # on the host: the same order everywhere
                for v in variables for c in strategy.experimental_local_results(v))
    n = num_workers(strategy)
    sums = _sum_over_workers(strategy, tf.one_hot(worker_id(strategy), n, dtype=tf.float64) * total).numpy()
    if any(x != sums[0] for x in sums):
        raise EdgeError(f"workers disagree on the model after taking the chief's state (checksums {list(sums)}); "
                        "every worker must run the same edgekit and TensorFlow versions")
    if verbose and not is_chief(strategy):
        print(f"worker {worker_id(strategy)}: took the chief's state at step {checkpoints.steps_done}")


class StopAgreement:
    """``stop_requested()`` that is true on every worker at the same step once any worker got SIGTERM.

    One tiny all-reduce per step in multi-worker runs. :attr:`agreed` tells an interrupt handler
    whether every worker stops here (so a collective checkpoint can be saved) or only this one.
    """

    def __init__(self, strategy, requested: Callable[[], bool]) -> None:
        self.strategy, self.requested = strategy, requested
        self.multi = is_multi_worker(strategy)
        self.agreed = not self.multi  # on one worker, any interrupt can save

    def __call__(self) -> bool:
        if not self.multi:
            return self.requested()
        rows = gather(self.strategy, [1 if self.requested() else 0])
        stop = any(row[0] for row in rows)
        self.agreed = self.agreed or stop
        return stop


# ---------------------------------------------------------------- who writes, and how a lost worker ends

def scratch_dir(strategy) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}worker{worker_id(strategy)}-"))


_TASK = re.compile(r"/job:(chief|worker)(?:/replica:\d+)?/task:(\d+)")
_REASONS = (("stopped sending heartbeats", "stopped sending heartbeats"),
            ("connection reset", "connection reset"), ("connection refused", "connection refused"),
            ("socket closed", "connection closed"), ("failed to connect", "cannot connect"),
            ("coordinationservice/heartbeat", "its heartbeats got no answer"),
            ("deadline exceeded", "timed out"), ("timed out", "timed out"))


def _reason(text: str) -> str:
    low = text.lower()
    for needle, said in _REASONS:
        if needle in low:
            return said
    text = re.sub(r"\{\{[^}]*\}\}", "", text)  # TensorFlow's {{function_node ...}} prefixes
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "Graph execution error" not in line and not line.strip().startswith("[[")]
    return lines[0][:160] if lines else "no reason given"


def _peer(text: str, strategy) -> str:
    cluster: Cluster | None = getattr(strategy, "_edge_cluster", None)
    me = (cluster.task_type, cluster.task_index) if cluster else None
    for job, task in _TASK.findall(text):
        if (job, int(task)) != me:
            break
    else:  # nobody named: the coordination service's host (the chief) when the heartbeats failed
        if "heartbeat" not in text.lower() or (cluster and cluster.is_chief):
            return "a worker"
        job, task = ("chief" if cluster and "chief" in cluster.jobs else "worker"), "0"
    name = f"{job} {task}"
    if cluster and job in cluster.jobs and int(task) < len(cluster.jobs[job]):
        name += f" ({cluster.jobs[job][int(task)]})"
    return name


def is_peer_failure(exc: BaseException) -> bool:
    """An error that means a worker is gone (or the collectives were aborted because one is)."""
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError)
    return isinstance(exc, lost) or (isinstance(exc, tf.errors.OpError) and "ollective" in str(exc))


class LostWorker(EdgeError):
    """A worker died or cannot be reached: this one stopped. See :func:`exit_at_once`."""


def exit_at_once(exc: EdgeError) -> None:
    """Print the one line and end the process without tearing TensorFlow down.

    After a lost worker the teardown can block for a minute or more (the input pipeline's threads,
    whose Python map functions wait for the interpreter lock the teardown holds, and the
    coordination service's shutdown barrier waiting for the dead worker); every file is already
    complete or removed by then.
    """
    print(f"edge: error: {exc}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exc.exit_code)


def lost_worker_error(exc: BaseException, strategy, run_dir: Path) -> LostWorker:
    """The one line a surviving worker ends with."""
    from convert.checkpoints import latest_checkpoint

    text = str(exc)
    timeout = getattr(strategy, "_edge_worker_timeout", DEFAULT_WORKER_TIMEOUT)
    me = worker_id(strategy)
    if is_chief(strategy):
        latest = latest_checkpoint(run_dir)
        kept = (f"{run_dir} keeps its last complete checkpoint ({Path(latest).name})" if latest
                else f"{run_dir} holds no checkpoint yet")
    else:
        kept = "the chief's run directory keeps its last complete checkpoint"
    return LostWorker(f"lost contact with {_peer(text, strategy)} ({_reason(text)}; --worker-timeout "
                     f"{timeout:g} s): worker {me} stopped too; {kept}: start every worker again with --resume")


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Drop what an interrupted ``CheckpointManager.save`` can leave: ``ckpt-N_temp`` folders, and
    ``ckpt-N.*`` files the manager's state file does not list (written, but never committed)."""
    from convert.config import CHECKPOINT_DIR
    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return
    state = tf.train.get_checkpoint_state(str(folder))
    kept = {Path(p).name for p in (state.all_model_checkpoint_paths if state else [])}
    for entry in folder.iterdir():
        if entry.name == "checkpoint" or entry.name.startswith("."):
            continue
        prefix = entry.name.split(".")[0]
        if entry.name.endswith("_temp") or (prefix.startswith("ckpt-") and prefix not in kept):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def chief_writes(train_fn):
    """Decorator for :func:`convert.train.train`: multi-worker runs write only on the chief.

    With a multi-worker ``strategy``, a non-chief worker's ``run_dir`` becomes a fresh temporary
    folder (removed when training ends, whatever the outcome), and a lost worker ends training on
    every survivor with one :class:`EdgeError` line; the chief's run directory then holds only
    complete checkpoints.
    """
    signature = inspect.signature(train_fn)

    @functools.wraps(train_fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        strategy = bound.arguments.get("strategy")
        if not is_multi_worker(strategy):
            return train_fn(*args, **kwargs)
        run_dir = Path(bound.arguments["run_dir"])
        scratch = None if is_chief(strategy) else scratch_dir(strategy)
        if scratch is not None:
            bound.arguments["run_dir"] = scratch
        try:
            result = train_fn(*bound.args, **bound.kwargs)
        except Exception as exc:
            if not is_peer_failure(exc):
                raise
            if scratch is None:
                remove_partial_checkpoints(run_dir)
            raise lost_worker_error(exc, strategy, run_dir) from None
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        if scratch is not None:  # report the chief's paths: this worker's copies are gone
            result.checkpoint = str(run_dir / Path(result.checkpoint).relative_to(scratch))
            result.run_dir = run_dir
        return result

    return wrapper
