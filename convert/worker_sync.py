"""What the workers exchange to train as one: small values, one batch size, the chief's state, the stop step.

Every function here is a collective: each worker must call it at the same point of the run.

- **Small values** (:func:`gather`): every worker's few integers, in one all-reduce.
- **One batch size**: ``--batch-size auto`` is measured on each worker and the smallest wins
  (:func:`agree_on_batch_size`, which also refuses workers that loaded different data).
- **One state**: the chief alone restores ``--resume``'s checkpoint, and every worker then takes the
  chief's variables (:func:`sync_from_chief`), so ``--resume`` works on all workers without a
  shared file system.
- **Stopping together** (:class:`StopAgreement`): SIGTERM on any worker stops every worker after the
  same step, so all can checkpoint (a checkpoint is collective); Ctrl-C stops that worker at once
  and the others as a lost worker (:mod:`convert.distributed`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

from convert.cluster import Cluster
from convert.distributed import is_chief, is_multi_worker, num_workers, worker_id
from edge.errors import EdgeError


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
        from convert.steps import create_slots

        create_slots(optimizer, model.trainable_variables, strategy)


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
