"""GPU set-up for training: memory growth or a hard cap, mixed precision, and the batch-size search.

TensorFlow by default maps nearly all memory of every visible GPU when it first touches one, which
starves every other process on a shared desktop. Growth (allocate as needed) or a logical device
with ``memory_limit`` fixes that, but only before the runtime initialises its devices; afterwards TF
refuses (``RuntimeError: Physical devices cannot be modified after being initialized``), so
:func:`configure_gpus` must run first and says so clearly when it did not.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Callable

from convert.tf import import_tensorflow
from edge.errors import EdgeError

log = logging.getLogger(__name__)

_TOO_LATE = (
    "configure_gpus() was called after TensorFlow had already initialised its devices (something in "
    "this process ran a TensorFlow op, built a Keras model, created a tf.Variable or listed logical "
    "devices first{what}), so GPU "
    "memory settings can no longer change. Call configure_gpus() before any other TensorFlow use, "
    "or set TF_FORCE_GPU_ALLOW_GROWTH=true in the environment before starting Python."
)


@dataclass
class GpuSetup:
    """What :func:`configure_gpus` found and did."""

    gpus: list[str] = field(default_factory=list)  # physical GPU names
    memory_growth: bool = False
    memory_limit_mb: int | None = None
    mixed_precision: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.gpus:
            return "no GPU found: training on the CPU (" + "; ".join(self.notes) + ")" if self.notes else \
                "no GPU found: training on the CPU"
        mem = f"memory limit {self.memory_limit_mb} MB" if self.memory_limit_mb else (
            "memory growth on" if self.memory_growth else "TensorFlow default memory (maps nearly all)")
        return f"{len(self.gpus)} GPU(s) ({', '.join(self.gpus)}): {mem}" + (
            ", mixed_float16" if self.mixed_precision else "")


def runtime_initialized() -> bool:
    """True once TensorFlow's eager context exists (device settings are then frozen)."""
    tf = import_tensorflow()
    from tensorflow.python.eager import context

    # The context handle is created by the first op / device listing; TF's own device-config setters
    # test exactly this attribute before refusing.
    del tf
    return getattr(context.context(), "_context_handle", None) is not None


def configure_gpus(memory_growth: bool = True, memory_limit_mb: int | None = None,
                   mixed_precision: bool = False) -> GpuSetup:
    """Configure every visible GPU; call before anything else touches TensorFlow.

    - ``memory_growth``: allocate GPU memory as needed, set identically on all GPUs (TF requires
      the same growth setting on every GPU of a process).
    - ``memory_limit_mb``: instead, a hard cap per GPU through one logical device with
      ``memory_limit`` (growth and a cap are exclusive in TensorFlow).
    - ``mixed_precision``: the ``mixed_float16`` Keras policy (GPUs only; ignored with a note on CPU).

    With no GPU it changes nothing and says so. Called too late, raises :class:`EdgeError` saying
    what happened and how to fix it.
    """
    tf = import_tensorflow()
    if memory_limit_mb is not None and memory_limit_mb <= 0:
        raise EdgeError(f"--memory-limit {memory_limit_mb}: must be a positive number of megabytes")
    too_late = runtime_initialized()
    gpus = tf.config.list_physical_devices("GPU")  # does not initialise the runtime
    setup = GpuSetup(gpus=[g.name for g in gpus])
    if too_late:
        if gpus and _already_configured(tf, gpus, memory_growth, memory_limit_mb):
            setup.memory_growth = memory_growth and memory_limit_mb is None
            setup.memory_limit_mb = memory_limit_mb
            return setup
        raise EdgeError(_TOO_LATE.format(what=""))
    if not gpus:
        if mixed_precision:
            setup.notes.append("mixed precision needs a GPU, left off")
        return setup
    try:
        if memory_limit_mb is not None:
            for gpu in gpus:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(memory_limit_mb))])
            setup.memory_limit_mb = int(memory_limit_mb)
        elif memory_growth:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
            setup.memory_growth = True
    except RuntimeError as exc:  # initialised between our check and the call (another thread)
        raise EdgeError(_TOO_LATE.format(what=f"; TensorFlow said: {exc}")) from None
    if mixed_precision:
        from convert.tf import import_keras

        import_keras().mixed_precision.set_global_policy("mixed_float16")
        setup.mixed_precision = True
    log.info("%s", setup.describe())
    return setup


def _already_configured(tf, gpus, memory_growth: bool, memory_limit_mb: int | None) -> bool:
    """Calling again with the settings already in force is harmless, not an error."""
    try:
        if memory_limit_mb is not None:
            configs = [tf.config.get_logical_device_configuration(g) for g in gpus]
            return all(c and c[0].memory_limit == memory_limit_mb for c in configs)
        return all(tf.config.experimental.get_memory_growth(g) == memory_growth for g in gpus)
    except (RuntimeError, ValueError):
        return False


def mirrored_strategy_if_needed():
    """``MirroredStrategy`` over all GPUs when there are several, else the default strategy."""
    tf = import_tensorflow()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@dataclass
class BatchSearch:
    batch_size: int  # chosen (after the safety margin)
    largest_ok: int  # largest size that ran without ResourceExhaustedError
    first_oom: int | None  # smallest size that raised, None if none did
    tried: list[tuple[int, str]] = field(default_factory=list)  # (size, "ok" | "oom")

    def describe(self) -> str:
        oom = f", first OOM at {self.first_oom}" if self.first_oom else ", no OOM up to the largest tried"
        return f"auto batch size: {self.batch_size} (largest that fit: {self.largest_ok}{oom})"


def find_batch_size(try_batch: Callable[[int], None], start: int = 2, max_batch: int = 256,
                    safety_margin: float = 0.1) -> BatchSearch:
    """Double the batch size from ``start`` while ``try_batch(size)`` (a few real training steps)
    succeeds, stop at the first ``tf.errors.ResourceExhaustedError``, and keep the largest size that
    ran, reduced by ``safety_margin`` (fragmentation and the longer-lived validation buffers need
    headroom). Other errors propagate: only OOM means "too big".
    """
    tf = import_tensorflow()
    tried: list[tuple[int, str]] = []
    largest_ok, first_oom = 0, None
    size = max(1, int(start))
    while size <= max_batch:
        try:
            try_batch(size)
        except tf.errors.ResourceExhaustedError:
            tried.append((size, "oom"))
            first_oom = size
            gc.collect()  # drop the failed step's tensors before the next attempt
            break
        tried.append((size, "ok"))
        largest_ok = size
        size *= 2
    if largest_ok == 0:
        raise EdgeError(f"--batch-size auto: even a batch of {start} runs out of GPU memory; "
                        "use a smaller --input-size or --width, or free the GPU")
    if first_oom is not None:
        # Refine between the last success and the first failure (one bisection pass of 2 probes).
        lo, hi = largest_ok, first_oom
        for _ in range(2):
            mid = (lo + hi) // 2
            if mid <= lo:
                break
            try:
                try_batch(mid)
            except tf.errors.ResourceExhaustedError:
                tried.append((mid, "oom"))
                hi = mid
                gc.collect()
                continue
            tried.append((mid, "ok"))
            lo = mid
        largest_ok, first_oom = lo, hi
    chosen = max(1, int(largest_ok * (1.0 - safety_margin)))
    return BatchSearch(chosen, largest_ok, first_oom, tried)
