"""Training loop: custom steps over tf.data, CheckpointManager checkpoints, per-epoch validation mAP.

A run directory holds ``config.json`` (written first, so even an interrupted run describes its
model), ``checkpoints/`` (see :mod:`convert.checkpoints`) and ``history.json`` (loss and mAP per
epoch). Resuming restores the latest checkpoint, including the optimizer and the step counter, so
the learning-rate schedule and the step count carry on where the run stopped. The step itself is
:func:`convert.steps.make_train_step`; validation is :func:`convert.evaluate.evaluate_keras`.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from convert.checkpoints import TrainingCheckpoints, latest_checkpoint
from convert.config import CONFIG_NAME, SSDConfig
from convert.evaluate import evaluate_keras
from convert.losses import LossConfig, score_conversion_for
from convert.metrics import MapResult
from convert.model import build_ssd, set_batchnorm_momentum
from convert.pipeline import InputPipeline
from convert.steps import make_optimizer, make_train_step
from convert.tf import import_keras, import_tensorflow
from edge.errors import EdgeError
from edge.files import atomic_write_json
from edge.memory import peak_rss_bytes

log = logging.getLogger(__name__)
HISTORY_NAME = "history.json"
DEFAULT_BATCH_SIZE = 8


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: str  # path prefix of the final checkpoint (``.../checkpoints/ckpt-N``)
    steps: int  # optimizer steps done in total (across resumes)
    epochs: int
    batch_size: int
    val_map: MapResult | None = None  # after the last epoch, when a validation set was given
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # images the pipeline left out
    seconds_per_step: float | None = None  # mean over this invocation's steps (after the first)
    resumed_from_step: int = 0  # step of the checkpoint this invocation started from (0: fresh)


@dataclass
class _Schedule:
    epochs: int
    steps_per_epoch: int
    checkpoint_every: int  # steps between checkpoints inside an epoch

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def _same_model(a: SSDConfig, b: SSDConfig) -> bool:
    keys = ("architecture", "labels", "anchors", "box_coder", "normalization")
    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] for k in keys)


def _check_run(config: SSDConfig, dataset, run_dir: Path, resume: bool, batch_size: int) -> None:
    """Refuse, before anything is written, a run that would overwrite or mix up checkpoints."""
    existing = latest_checkpoint(run_dir)
    if existing and not resume:
        raise EdgeError(f"--out {run_dir}: already holds checkpoints ({Path(existing).name}); "
                        "pass --resume to continue it or choose a new run directory")
    if resume and existing and (run_dir / CONFIG_NAME).is_file():
        if not _same_model(SSDConfig.load(run_dir), config):
            raise EdgeError(f"--resume {run_dir}: its {CONFIG_NAME} describes a different model "
                            "(architecture, labels or anchors differ); use a new run directory")
    if len(dataset.samples) == 0:
        raise EdgeError("training set is empty")
    if list(dataset.labels) != list(config.labels):
        raise EdgeError(f"dataset labels {dataset.labels} differ from the model's {config.labels}")
    if batch_size < 1:
        raise EdgeError(f"--batch-size {batch_size}: must be at least 1")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _checkpoint_on_interrupt(checkpoints: TrainingCheckpoints) -> Iterator[Callable[[], bool]]:
    """Ctrl-C or SIGTERM: the current step finishes, a checkpoint is saved, KeyboardInterrupt goes on.

    Yields ``stop_requested()``, true once SIGTERM arrived; the loop checks it after every step.
    """
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum)) \
        if _main_thread() else None
    try:
        yield lambda: bool(received)
    except KeyboardInterrupt:
        path = checkpoints.save()
        print(f"interrupted: saved {path} at step {checkpoints.steps_done}; continue with --resume")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _train_epoch(checkpoints: TrainingCheckpoints, train_step, batches, schedule: _Schedule, step_times: list,
                 stop_requested: Callable[[], bool], verbose: int) -> dict:
    """The rest of the current epoch (all of it unless resumed mid-epoch); returns its history record."""
    step = checkpoints.steps_done
    epoch, in_epoch = divmod(step, schedule.steps_per_epoch)
    checkpoints.epoch.assign(epoch)
    bar = import_keras().utils.Progbar(schedule.steps_per_epoch, verbose=verbose, unit_name="step",
                                       stateful_metrics=["loss", "box", "cls"]) if verbose else None
    if verbose:
        print(f"epoch {epoch + 1}/{schedule.epochs}")
    sums, count = np.zeros(3), 0
    epoch_start = time.perf_counter()
    for i in range(in_epoch, schedule.steps_per_epoch):
        t0 = time.perf_counter()
        images, targets = next(batches)
        losses = [float(v) for v in train_step(images, targets)]
        if not math.isfinite(losses[0]):
            raise EdgeError(f"loss became {losses[0]} at step {checkpoints.step.numpy()}; "
                            "lower --lr or check the annotations")
        step_times.append(time.perf_counter() - t0)
        checkpoints.step.assign_add(1)
        sums += losses
        count += 1
        if bar:
            bar.update(i + 1, [("loss", losses[0]), ("box", losses[1]), ("cls", losses[2])])
        if checkpoints.steps_done % schedule.checkpoint_every == 0 and i + 1 < schedule.steps_per_epoch:
            checkpoints.save()
        if stop_requested():
            raise KeyboardInterrupt
    mean = sums / max(count, 1)
    return {"epoch": epoch + 1, "step": checkpoints.steps_done, "loss": mean[0], "box_loss": mean[1],
            "class_loss": mean[2], "seconds": round(time.perf_counter() - epoch_start, 2),
            "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1)}


def _resume(checkpoints: TrainingCheckpoints, run_dir: Path, verbose: int) -> list[dict]:
    """Restore the latest checkpoint; returns the history of the epochs it covers."""
    checkpoints.restore_latest()
    history = []
    if (run_dir / HISTORY_NAME).is_file():
        history = json.loads((run_dir / HISTORY_NAME).read_text()).get("epochs", [])
    if verbose:
        print(f"resumed from {checkpoints.latest} at step {checkpoints.steps_done}")
    return history


def _record_settings(config: SSDConfig, run_dir: Path, schedule: _Schedule, batch_size: int, dataset,
                     val_dataset, *, learning_rate: float, loss: LossConfig, seed: int, backbone_weights,
                     augment: bool) -> None:
    """config.json first: even an interrupted run describes its model and how it was trained."""
    config.score_conversion = score_conversion_for(loss.classification)
    config.training.update({
        "epochs": schedule.epochs, "batch_size": batch_size, "steps_per_epoch": schedule.steps_per_epoch,
        "learning_rate": learning_rate, "loss": loss.classification, "seed": seed,
        "backbone_weights": str(backbone_weights), "train_images": len(dataset.samples),
        "val_images": len(val_dataset.samples) if val_dataset is not None else 0, "augment": augment,
    })
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir)


def _build_model(config: SSDConfig, schedule: _Schedule, learning_rate: float, backbone_weights,
                 mixed_precision: bool):
    model = build_ssd(config, backbone_weights=backbone_weights)
    # Moving BN statistics must settle within the run: ~10 time constants over total_steps.
    set_batchnorm_momentum(model, min(0.99, max(0.9, 1.0 - 10.0 / schedule.total_steps)))
    return model, make_optimizer(learning_rate, schedule.total_steps, mixed_precision=mixed_precision)


def _batches(pipeline: InputPipeline, strategy, batch_size: int, seed: int):
    data = pipeline.training_dataset(batch_size, seed=seed)
    if strategy.num_replicas_in_sync > 1:
        data = strategy.experimental_distribute_dataset(data)
    return iter(data)


def _record_final(config: SSDConfig, run_dir: Path, steps: int, val_result: MapResult | None) -> None:
    config.training["final"] = {"steps": steps, "val_map50": val_result.map50 if val_result else None,
                                "val_map": val_result.map if val_result else None}
    config.save(run_dir)


def train(config: SSDConfig, dataset, run_dir, epochs: int, batch_size: int = DEFAULT_BATCH_SIZE,
          steps_per_epoch: int | None = None, val_dataset=None, seed: int = 0, *,
          learning_rate: float = 2e-3, loss: LossConfig | None = None, backbone_weights="none",
          resume: bool = False, checkpoint_every: int | None = None, keep_checkpoints: int = 3,
          augment: bool = True, verbose: int = 1, strategy=None, mixed_precision: bool = False,
          val_batch_size: int = 16, workers: int = 2) -> TrainResult:
    """Train ``config``'s SSD on ``dataset``; checkpoints and config.json go to ``run_dir``.

    ``steps_per_epoch`` defaults to one pass over the data. ``checkpoint_every`` (steps) adds
    checkpoints inside an epoch so a killed run loses little; one is always written at each epoch's
    end and on Ctrl-C / SIGTERM. ``resume=True`` continues from the latest checkpoint in ``run_dir``
    (its config.json must describe the same model); ``resume=False`` refuses a run_dir that already
    has checkpoints rather than overwrite them.
    """
    tf = import_tensorflow()
    loss = loss or LossConfig()
    run_dir, batch_size = Path(run_dir), int(batch_size)
    _check_run(config, dataset, run_dir, resume, batch_size)
    per_epoch = int(steps_per_epoch or max(1, len(dataset.samples) // batch_size))
    schedule = _Schedule(int(epochs), per_epoch, int(checkpoint_every or per_epoch))
    import_keras().utils.set_random_seed(seed)
    _record_settings(config, run_dir, schedule, batch_size, dataset, val_dataset, learning_rate=learning_rate,
                     loss=loss, seed=seed, backbone_weights=backbone_weights, augment=augment)

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model, optimizer = _build_model(config, schedule, learning_rate, backbone_weights, mixed_precision)
        checkpoints = TrainingCheckpoints(model, optimizer, run_dir, keep_checkpoints)
    history = _resume(checkpoints, run_dir, verbose) if resume and checkpoints.latest else []
    resumed_from = checkpoints.steps_done

    pipeline = InputPipeline(dataset, config, augment=augment, parallel=workers)
    # Resumed runs reshuffle differently (seed + step) rather than replay the same batches.
    batches = _batches(pipeline, strategy, batch_size, seed + checkpoints.steps_done)
    train_step = make_train_step(model, optimizer, loss, strategy)
    step_times: list[float] = []
    val_result: MapResult | None = None
    with _checkpoint_on_interrupt(checkpoints) as stop_requested:
        while checkpoints.steps_done < schedule.total_steps:
            record = _train_epoch(checkpoints, train_step, batches, schedule, step_times, stop_requested, verbose)
            checkpoints.save()
            if val_dataset is not None:
                val_result = evaluate_keras(model, config, val_dataset, val_batch_size)
                record.update({"val_map50": val_result.map50, "val_map": val_result.map})
                if verbose:
                    print(f"  val mAP@0.5 {val_result.map50:.3f}  mAP@[.5:.95] {val_result.map:.3f}")
            history.append(record)
            atomic_write_json(run_dir / HISTORY_NAME, {"epochs": history, "skipped": pipeline.skipped})

    if checkpoints.latest is None:  # resumed a finished run: nothing new to save
        checkpoints.save()
    if val_result is None and val_dataset is not None and history:
        val_result = evaluate_keras(model, config, val_dataset, val_batch_size)
    _record_final(config, run_dir, checkpoints.steps_done, val_result)
    skipped = pipeline.skipped
    if skipped and verbose:
        print(f"{len(skipped)} image(s) skipped: " + "; ".join(f"{Path(f).name}: {r}" for f, r in skipped[:5]))
    timed = step_times[1:] or step_times  # the first step includes tracing
    return TrainResult(run_dir=run_dir, checkpoint=checkpoints.latest, steps=checkpoints.steps_done,
                       epochs=schedule.epochs, batch_size=batch_size, val_map=val_result, history=history,
                       skipped=skipped, seconds_per_step=float(np.mean(timed)) if timed else None,
                       resumed_from_step=resumed_from)
