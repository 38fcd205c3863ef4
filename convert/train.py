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

from convert import distributed, worker_sync
from convert.checkpoints import TrainingCheckpoints, latest_checkpoint
from convert.config import CONFIG_NAME, SSDConfig
from convert.evaluate import evaluate_keras
from convert.losses import LossConfig, score_conversion_for
from convert.metrics import MapResult
from convert.model import build_ssd, set_batchnorm_momentum
from convert.pipeline import InputPipeline
from convert.steps import create_slots, make_optimizer, make_train_step
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


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A run directory with checkpoints is continued with ``resume`` or refused (before anything is
    written into it, pseudo-labels included)."""
    existing = latest_checkpoint(run_dir)
    if existing and not resume:
        raise EdgeError(f"--out {run_dir}: already holds checkpoints ({Path(existing).name}); "
                        "pass --resume to continue it or choose a new run directory")


def _check_run(config: SSDConfig, dataset, run_dir: Path, resume: bool, batch_size: int) -> None:
    """Refuse, before anything is written, a run that would overwrite or mix up checkpoints."""
    check_run_dir(run_dir, resume)
    existing = latest_checkpoint(run_dir)
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
def _checkpoint_on_interrupt(checkpoints: TrainingCheckpoints, strategy=None) -> Iterator[Callable[[], bool]]:
    """Ctrl-C or SIGTERM: the current step finishes, a checkpoint is saved, KeyboardInterrupt goes on.

    Yields ``stop_requested()``, true once SIGTERM arrived; the loop checks it after every step.
    Several workers: SIGTERM on any stops all after the same step (a checkpoint is collective);
    Ctrl-C stops this worker alone, without a checkpoint (the others could not join it).
    """
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum)) \
        if _main_thread() else None
    stop = worker_sync.StopAgreement(strategy, lambda: bool(received))
    try:
        yield stop
    except KeyboardInterrupt:
        if not stop.agreed:
            print("interrupted: this worker stopped without a checkpoint (the other workers stop as after a "
                  "lost worker); continue from the last one with --resume on every worker")
            raise
        path = checkpoints.save()
        if not distributed.is_chief(strategy):  # its copy is temporary: the chief saved the same step
            path = "the chief's checkpoint"
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
                     augment: bool, teacher=None, distill=None) -> None:
    """config.json first: even an interrupted run describes its model and how it was trained."""
    config.score_conversion = score_conversion_for(loss.classification)
    config.training.update({
        "epochs": schedule.epochs, "batch_size": batch_size, "steps_per_epoch": schedule.steps_per_epoch,
        "learning_rate": learning_rate, "loss": loss.classification, "seed": seed,
        "backbone_weights": str(backbone_weights), "train_images": len(dataset.samples),
        "val_images": len(val_dataset.samples) if val_dataset is not None else 0, "augment": augment,
    })
    if teacher is not None:
        config.training["distillation"] = {**teacher.describe(), "weight": distill.weight,
                                           "temperature": distill.temperature,
                                           "box_confidence": distill.box_confidence}
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir)


def _build_model(config: SSDConfig, schedule: _Schedule, learning_rate: float, backbone_weights,
                 mixed_precision: bool):
    model = build_ssd(config, backbone_weights=backbone_weights)
    # Moving BN statistics must settle within the run: ~10 time constants over total_steps.
    set_batchnorm_momentum(model, min(0.99, max(0.9, 1.0 - 10.0 / schedule.total_steps)))
    return model, make_optimizer(learning_rate, schedule.total_steps, mixed_precision=mixed_precision)


SMALL_BATCH = 16  # per replica: below it a pretrained backbone's BatchNorm keeps its statistics


class _BackboneFreezing:
    """``freeze_backbone_epochs`` and BatchNorm for small batches; the backbone is the MobileNetV2 trunk
    (:func:`convert.pretrained_names.backbone_layer_names`), not the extra layers or heads.

    - Epochs before ``freeze_backbone_epochs``: every backbone layer is ``trainable=False``. Its weights
      stay as loaded and its BatchNorm layers run in inference mode (tf-keras normalises a
      non-trainable BN with its moving statistics and leaves them alone), so the randomly initialised
      extra layers and heads learn on stable features first instead of sending large early gradients
      into the pretrained weights.
    - From then on the backbone convs train. Its BatchNorm layers stay frozen (inference mode, gamma,
      beta and statistics as loaded) when the backbone is pretrained and the batch per replica is below
      :data:`SMALL_BATCH`: the mean and variance of a few images are noisy (batch-norm accuracy falls
      off below ~16 per device), training-mode BN would normalise every batch by them, and a short run
      would drag the moving averages away from statistics estimated on far more data. This is the usual
      detection fine-tuning choice (the OD API's ``freeze_batchnorm``, Detectron's frozen BN). With 16 or
      more per replica the backbone BN trains normally.
    - A random backbone (``none``) has no statistics worth keeping: its BN always trains, and freezing
      it is refused. BN of the extra layers and heads always trains.

    The optimizer's slots are built for every variable before anything is frozen, so unfreezing (and
    resuming in either phase) finds them; the train step is traced again whenever the flags change.
    """

    def __init__(self, model, optimizer, strategy, backbone_weights, freeze_epochs: int, batch_per_replica: int):
        from convert.pretrained_names import backbone_layer_names

        pretrained = backbone_weights not in (None, "none", "")
        if freeze_epochs < 0:
            raise EdgeError(f"--freeze-backbone-epochs {freeze_epochs}: must be 0 or more")
        if freeze_epochs and not pretrained:
            raise EdgeError(f"--freeze-backbone-epochs {freeze_epochs}: needs pretrained --backbone-weights "
                            "(a frozen random backbone would stay random)")
        self.freeze_epochs = int(freeze_epochs)
        self.freeze_bn = pretrained and batch_per_replica < SMALL_BATCH
        self.active = bool(self.freeze_epochs or self.freeze_bn)
        self.state = None
        by_name = {layer.name: layer for layer in model.layers}
        self.layers = [(by_name[name], kind == "bn") for name, kind, _ in backbone_layer_names()]
        if self.active:
            create_slots(optimizer, model.trainable_variables, strategy)

    def apply(self, epoch: int) -> bool:
        """Set the flags for ``epoch`` (0-based); True when they changed (trace the step again)."""
        state = (epoch < self.freeze_epochs, self.freeze_bn)
        if not self.active or state == self.state:
            return False
        for layer, is_bn in self.layers:
            layer.trainable = not (state[0] or (is_bn and state[1]))
        self.state = state
        return True

    def describe(self) -> str:
        if not self.active:
            return "trainable"
        return "frozen" if self.state[0] else "trainable, BN frozen" if self.freeze_bn else "trainable"


def _batches(pipeline: InputPipeline, strategy, batch_size: int, seed: int):
    if distributed.is_multi_worker(strategy):  # batch_size is global; each worker reads its own shard
        return iter(distributed.distribute_batches(strategy, pipeline, batch_size, seed))
    data = pipeline.training_dataset(batch_size, seed=seed)
    if strategy.num_replicas_in_sync > 1:
        data = strategy.experimental_distribute_dataset(data)
    return iter(data)


def _record_final(config: SSDConfig, run_dir: Path, steps: int, val_result: MapResult | None) -> None:
    config.training["final"] = {"steps": steps, "val_map50": val_result.map50 if val_result else None,
                                "val_map": val_result.map if val_result else None}
    config.save(run_dir)


@distributed.chief_writes  # several workers: the others' run_dir is a temporary folder, removed after
def train(config: SSDConfig, dataset, run_dir, epochs: int, batch_size: int = DEFAULT_BATCH_SIZE,
          steps_per_epoch: int | None = None, val_dataset=None, seed: int = 0, *,
          learning_rate: float = 2e-3, loss: LossConfig | None = None, backbone_weights="none",
          resume: bool = False, checkpoint_every: int | None = None, keep_checkpoints: int = 3,
          augment: bool = True, verbose: int = 1, strategy=None, mixed_precision: bool = False,
          val_batch_size: int = 16, workers: int = 2, freeze_backbone_epochs: int = 0, teacher=None,
          distill=None) -> TrainResult:
    """Train ``config``'s SSD on ``dataset``; checkpoints and config.json go to ``run_dir``.

    ``steps_per_epoch`` defaults to one pass over the data. ``checkpoint_every`` (steps) adds
    checkpoints inside an epoch so a killed run loses little; one is always written at each epoch's
    end and on Ctrl-C / SIGTERM. ``resume=True`` continues from the latest checkpoint in ``run_dir``
    (its config.json must describe the same model); ``resume=False`` refuses a run_dir that already
    has checkpoints rather than overwrite them. ``freeze_backbone_epochs`` and the BatchNorm policy
    for pretrained backbones: :class:`_BackboneFreezing`. ``teacher`` (a :class:`convert.distill.Teacher`
    built for ``config``) adds distillation, weighted by ``distill`` (:class:`convert.distill.DistillConfig`);
    config.training["distillation"] and each epoch's ``distill_loss`` record it.
    """
    tf = import_tensorflow()
    loss = loss or LossConfig()
    run_dir, batch_size = Path(run_dir), int(batch_size)
    if teacher is not None:
        from convert.distill import DistillConfig, check_compatible

        distill = (distill or DistillConfig()).validate()
        student = SSDConfig.from_dict(config.to_dict())
        student.score_conversion = score_conversion_for(loss.classification)
        check_compatible(teacher.config, student, f"--teacher {teacher.source}" if teacher.source else "teacher")
    _check_run(config, dataset, run_dir, resume, batch_size)
    per_epoch = int(steps_per_epoch or max(1, len(dataset.samples) // batch_size))
    schedule = _Schedule(int(epochs), per_epoch, int(checkpoint_every or per_epoch))
    import_keras().utils.set_random_seed(seed)
    _record_settings(config, run_dir, schedule, batch_size, dataset, val_dataset, learning_rate=learning_rate,
                     loss=loss, seed=seed, backbone_weights=backbone_weights, augment=augment, teacher=teacher,
                     distill=distill)

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model, optimizer = _build_model(config, schedule, learning_rate, backbone_weights, mixed_precision)
        checkpoints = TrainingCheckpoints(model, optimizer, run_dir, keep_checkpoints)
        worker_sync.build_optimizer(strategy, model, optimizer)
    history = _resume(checkpoints, run_dir, verbose) if resume and checkpoints.latest else []
    worker_sync.sync_from_chief(strategy, checkpoints, verbose)  # several workers: all start from the chief's state
    resumed_from = checkpoints.steps_done
    freezing = _BackboneFreezing(model, optimizer, strategy, backbone_weights, freeze_backbone_epochs,
                                 batch_size // strategy.num_replicas_in_sync)
    if verbose and getattr(model, "pretrained_report", None) is not None:
        print(model.pretrained_report.describe())

    pipeline = InputPipeline(distributed.worker_shard(dataset, strategy), config, augment=augment, parallel=workers,
                             teacher_config=None if teacher is None else teacher.config)
    # Resumed runs reshuffle differently (seed + step) rather than replay the same batches.
    batches = _batches(pipeline, strategy, batch_size, seed + checkpoints.steps_done)
    train_step = make_train_step(model, optimizer, loss, strategy, teacher=teacher, distill=distill)
    step_times: list[float] = []
    val_result: MapResult | None = None
    with _checkpoint_on_interrupt(checkpoints, strategy) as stop_requested:
        while checkpoints.steps_done < schedule.total_steps:
            if freezing.apply(checkpoints.steps_done // schedule.steps_per_epoch):
                train_step = make_train_step(model, optimizer, loss, strategy, teacher=teacher, distill=distill)
            record = _train_epoch(checkpoints, train_step, batches, schedule, step_times, stop_requested, verbose)
            record["backbone"] = freezing.describe()
            if teacher is not None:  # the step returns the detection terms apart; the rest is distillation
                record["distill_loss"] = record["loss"] - loss.box_weight * record["box_loss"] - record["class_loss"]
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
