"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy``, one process per machine.

Every worker of the :class:`~convert.cluster.Cluster` (parsed and checked by :mod:`convert.cluster`)
runs the same loop in lock-step: gradients are all-reduced by TensorFlow's collectives each step, so
the model stays identical everywhere. What this module adds around TensorFlow's engine:

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
- **Only the chief writes** (:func:`chief_writes`): the others write their run directory (config,
  checkpoints: saving reads synchronised variables, a collective every worker must join) into a
  temporary folder that is deleted afterwards. The chief's files are complete or absent:
  ``config.json`` and ``history.json`` go through :mod:`edge.files`, checkpoints through
  ``tf.train.CheckpointManager`` (its state file names only finished checkpoints).

What the workers agree on (batch size, the chief's state after ``--resume``, the step to stop at)
goes through :mod:`convert.worker_sync`. TensorFlow is imported only when a strategy is made.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from convert.cluster import DEFAULT_WORKER_TIMEOUT, JOBS, Cluster, check_port_free, check_worker_timeout
from edge.errors import EdgeError

JOIN_GRACE = 30  # seconds past the join timeout before the watchdog ends a process still waiting
COLLECTIVE_TIMEOUT_FACTOR = 10  # a collective waits this many worker timeouts for a live but stuck peer
SCRATCH_PREFIX = "edge-train-"  # non-chief workers' temporary run directories: edge-train-worker1-XXXX


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
