"""Training loop: custom steps over tf.data, CheckpointManager checkpoints, per-epoch validation mAP.

A run directory holds ``config.json`` (written first, so even an interrupted run describes its
model), ``checkpoints/`` (``tf.train.Checkpoint(model, optimizer, step, epoch)`` through
``tf.train.CheckpointManager``) and ``history.json`` (loss and mAP per epoch). Resuming restores the
latest checkpoint, including the optimizer and the step counter, so the learning-rate schedule and
the step count carry on where the run stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.config import CHECKPOINT_DIR, CONFIG_NAME, SSDConfig
from convert.losses import LossConfig, detection_loss, score_conversion_for
from convert.metrics import MapResult, evaluate_map
from convert.model import build_ssd, set_batchnorm_momentum
from convert.pipeline import InputPipeline
from convert.tf import import_keras, import_tensorflow
from edge.contract.anchors import generate_anchors
from edge.contract.boxcoding import BoxDecoder
from edge.errors import EdgeError

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _same_model(a: SSDConfig, b: SSDConfig) -> bool:
    keys = ("architecture", "labels", "anchors", "box_coder", "normalization")
    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] for k in keys)


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int | None = None,
                   mixed_precision: bool = False):
    """Adam with linear warm-up then cosine decay (from scratch BN nets need the gentle start)."""
    keras = import_keras()
    total_steps = max(1, int(total_steps))
    warmup = min(total_steps // 10, 500) if warmup_steps is None else int(warmup_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.1 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup), alpha=0.02,
        warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=10.0)
    if mixed_precision:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def make_train_step(model, optimizer, loss_config: LossConfig, strategy=None):
    """A compiled step ``(images, targets) -> (total, box, class)`` losses, replica-averaged."""
    tf = import_tensorflow()
    strategy = strategy or tf.distribute.get_strategy()
    keras = import_keras()
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    # Plain tensor maths: keep autograph out of it (and out of import_tensorflow's os.environ use).
    loss_fn = tf.autograph.experimental.do_not_convert(detection_loss)

    def replica_step(images, targets):
        with tf.GradientTape() as tape:
            box_pred, class_logits = model(images, training=True)
            total, box_loss, class_loss = loss_fn(targets["box_targets"], targets["class_targets"],
                                                         box_pred, class_logits, loss_config)
            # Each replica normalises by its own positives; averaging across replicas is the mean.
            loss = total / strategy.num_replicas_in_sync
            if scaled:
                loss = optimizer.get_scaled_loss(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total, box_loss, class_loss

    def step(images, targets):
        per_replica = strategy.run(replica_step, args=(images, targets))
        return tuple(strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for v in per_replica)

    if strategy.num_replicas_in_sync > 1:  # distributed batches are PerReplica values: let TF trace them
        return tf.function(step)
    # One graph for every batch size (tracing the backward pass of MobileNetV2 costs many seconds, and
    # the batch-size search would otherwise trace once per size).
    size, num_anchors = model.input_shape[1:3], int(model.outputs[0].shape[1])
    signature = [tf.TensorSpec((None, *size, 3), tf.float32),
                 {"box_targets": tf.TensorSpec((None, num_anchors, 4), tf.float32),
                  "class_targets": tf.TensorSpec((None, num_anchors), tf.int32)}]
    return tf.function(step, input_signature=signature)


def predict(model, config: SSDConfig, dataset, batch_size: int = 16, score_threshold: float = 0.01,
            iou_threshold: float = 0.6, max_detections: int = 100):
    """Detections of ``model`` on every readable image of ``dataset``.

    Returns ``(predictions, indices)``: ``predictions[j] = (boxes xyxy pixels of the original image,
    scores, class ids 0-based)`` for ``dataset.samples[indices[j]]`` (unreadable images are left out).
    Decoding uses the runtime's :class:`edge.contract.boxcoding.BoxDecoder`; NMS is per class.
    """
    tf = import_tensorflow()
    pipeline = InputPipeline(dataset, config, augment=False)
    decoder = BoxDecoder(generate_anchors(config.anchors), config.box_coder)
    num_anchors = decoder.num_anchors
    decoded = np.empty((num_anchors, 4), np.float32)
    predictions, indices = [], []
    for images, idx, ok in pipeline.eval_dataset(batch_size):
        box_enc, logits = model(images, training=False)
        logits = tf.cast(logits, tf.float32)
        if config.score_conversion == "softmax":
            scores = tf.nn.softmax(logits)[..., 1:]
        else:
            scores = tf.sigmoid(logits)[..., 1:]
        enc = box_enc.numpy()
        boxes = np.empty((enc.shape[0], num_anchors, 1, 4), np.float32)
        for b in range(enc.shape[0]):
            boxes[b, :, 0] = decoder.decode(enc[b], decoded)
        nms = tf.image.combined_non_max_suppression(
            boxes, scores, max_output_size_per_class=max_detections, max_total_size=max_detections,
            iou_threshold=iou_threshold, score_threshold=score_threshold, clip_boxes=True)
        nb, ns, nc, nv = (t.numpy() for t in nms)
        for b, (index, good) in enumerate(zip(idx.numpy(), ok.numpy())):
            if not good:
                continue
            sample = dataset.samples[int(index)]
            k = int(nv[b])
            yxyx = nb[b, :k]
            xyxy = np.stack([yxyx[:, 1] * sample.width, yxyx[:, 0] * sample.height,
                             yxyx[:, 3] * sample.width, yxyx[:, 2] * sample.height], axis=-1)
            predictions.append((xyxy.astype(np.float32), ns[b, :k].astype(np.float32), nc[b, :k].astype(np.int32)))
            indices.append(int(index))
    return predictions, indices


def evaluate_model(model, config: SSDConfig, dataset, batch_size: int = 16) -> MapResult:
    """COCO mAP of a Keras SSD on ``dataset`` (readable images only)."""
    predictions, indices = predict(model, config, dataset, batch_size)
    return evaluate_map(dataset.subset(indices), predictions)


def _checkpoint_objects(model, optimizer=None):
    tf = import_tensorflow()
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    kwargs = {"model": model, "step": step, "epoch": epoch}
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    return tf.train.Checkpoint(**kwargs), step, epoch


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
    keras = import_keras()
    loss = loss or LossConfig()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    existing = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if existing and not resume:
        raise EdgeError(f"--out {run_dir}: already holds checkpoints ({Path(existing).name}); "
                        "pass --resume to continue it or choose a new run directory")
    if resume and existing and (run_dir / CONFIG_NAME).is_file():
        saved = SSDConfig.load(run_dir)
        if not _same_model(saved, config):
            raise EdgeError(f"--resume {run_dir}: its {CONFIG_NAME} describes a different model "
                            "(architecture, labels or anchors differ); use a new run directory")
    if len(dataset.samples) == 0:
        raise EdgeError("training set is empty")
    if list(dataset.labels) != list(config.labels):
        raise EdgeError(f"dataset labels {dataset.labels} differ from the model's {config.labels}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise EdgeError(f"--batch-size {batch_size}: must be at least 1")
    steps_per_epoch = int(steps_per_epoch or max(1, len(dataset.samples) // batch_size))
    total_steps = steps_per_epoch * int(epochs)
    checkpoint_every = int(checkpoint_every or steps_per_epoch)

    keras.utils.set_random_seed(seed)
    config.score_conversion = score_conversion_for(loss.classification)
    config.training.update({
        "epochs": int(epochs), "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
        "learning_rate": learning_rate, "loss": loss.classification, "seed": seed,
        "backbone_weights": str(backbone_weights), "train_images": len(dataset.samples),
        "val_images": len(val_dataset.samples) if val_dataset is not None else 0, "augment": augment,
    })
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir)

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_ssd(config, backbone_weights=backbone_weights)
        # Moving BN statistics must settle within the run: ~10 time constants over total_steps.
        set_batchnorm_momentum(model, min(0.99, max(0.9, 1.0 - 10.0 / total_steps)))
        optimizer = make_optimizer(learning_rate, total_steps, mixed_precision=mixed_precision)
        ckpt, step_var, epoch_var = _checkpoint_objects(model, optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=keep_checkpoints)
    history: list[dict] = []
    resumed_from = 0
    if resume and manager.latest_checkpoint:
        try:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, IndexError, tf.errors.OpError) as exc:
            raise EdgeError(f"--resume {manager.latest_checkpoint}: cannot restore ({str(exc).splitlines()[0]})") from None
        if (run_dir / HISTORY_NAME).is_file():
            history = json.loads((run_dir / HISTORY_NAME).read_text()).get("epochs", [])
        resumed_from = int(step_var.numpy())
        if verbose:
            print(f"resumed from {manager.latest_checkpoint} at step {resumed_from}")

    pipeline = InputPipeline(dataset, config, augment=augment, parallel=workers)
    # Resumed runs reshuffle differently (seed + step) rather than replay the same batches.
    data = pipeline.training_dataset(batch_size, seed=seed + int(step_var.numpy()))
    if strategy.num_replicas_in_sync > 1:
        data = strategy.experimental_distribute_dataset(data)
    train_step = make_train_step(model, optimizer, loss, strategy)
    iterator = iter(data)

    interrupted = {"signal": None}

    def on_sigterm(signum, frame):  # finish the current step, checkpoint, stop
        interrupted["signal"] = signum

    previous = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
    step_times: list[float] = []
    val_result: MapResult | None = None
    try:
        while int(step_var.numpy()) < total_steps:
            step = int(step_var.numpy())
            epoch = step // steps_per_epoch
            epoch_var.assign(epoch)
            in_epoch = step % steps_per_epoch
            bar = keras.utils.Progbar(steps_per_epoch, verbose=verbose, stateful_metrics=["loss", "box", "cls"],
                                      unit_name="step") if verbose else None
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}")
            sums = np.zeros(3)
            count = 0
            epoch_start = time.perf_counter()
            for i in range(in_epoch, steps_per_epoch):
                t0 = time.perf_counter()
                images, targets = next(iterator)
                losses = [float(v) for v in train_step(images, targets)]
                if not math.isfinite(losses[0]):
                    raise EdgeError(f"loss became {losses[0]} at step {step_var.numpy()}; "
                                    "lower --lr or check the annotations")
                step_times.append(time.perf_counter() - t0)
                step_var.assign_add(1)
                sums += losses
                count += 1
                if bar:
                    bar.update(i + 1, [("loss", losses[0]), ("box", losses[1]), ("cls", losses[2])])
                done = int(step_var.numpy())
                if done % checkpoint_every == 0 and i + 1 < steps_per_epoch:
                    manager.save(checkpoint_number=done)
                if interrupted["signal"]:
                    raise KeyboardInterrupt
            record = {"epoch": epoch + 1, "step": int(step_var.numpy()),
                      "loss": sums[0] / max(count, 1), "box_loss": sums[1] / max(count, 1),
                      "class_loss": sums[2] / max(count, 1),
                      "seconds": round(time.perf_counter() - epoch_start, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
            manager.save(checkpoint_number=int(step_var.numpy()))
            if val_dataset is not None:
                val_result = evaluate_model(model, config, val_dataset, val_batch_size)
                record.update({"val_map50": val_result.map50, "val_map": val_result.map})
                if verbose:
                    print(f"  val mAP@0.5 {val_result.map50:.3f}  mAP@[.5:.95] {val_result.map:.3f}")
            history.append(record)
            _write_json(run_dir / HISTORY_NAME, {"epochs": history, "skipped": pipeline.skipped})
    except KeyboardInterrupt:
        path = manager.save(checkpoint_number=int(step_var.numpy()))
        print(f"interrupted: saved {path} at step {int(step_var.numpy())}; continue with --resume")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    if manager.latest_checkpoint is None:  # resumed a finished run: nothing new to save
        manager.save(checkpoint_number=int(step_var.numpy()))
    if val_result is None and val_dataset is not None and history:
        val_result = evaluate_model(model, config, val_dataset, val_batch_size)
    config.training["final"] = {"steps": int(step_var.numpy()),
                                "val_map50": val_result.map50 if val_result else None,
                                "val_map": val_result.map if val_result else None}
    config.save(run_dir)
    skipped = pipeline.skipped
    if skipped and verbose:
        print(f"{len(skipped)} image(s) skipped: " + "; ".join(f"{Path(f).name}: {r}" for f, r in skipped[:5]))
    timed = step_times[1:] or step_times  # the first step includes tracing
    return TrainResult(run_dir=run_dir, checkpoint=manager.latest_checkpoint, steps=int(step_var.numpy()),
                       epochs=int(epochs), batch_size=batch_size, val_map=val_result, history=history,
                       skipped=skipped, seconds_per_step=float(np.mean(timed)) if timed else None,
                       resumed_from_step=resumed_from)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def load_trained_model(run_dir):
    """Rebuild the model from ``run_dir/config.json`` and restore its latest checkpoint.

    Returns ``(keras_model, SSDConfig)``. EdgeError when there is no checkpoint, it is unreadable,
    or its variables do not fit the model the config describes.
    """
    tf = import_tensorflow()
    run_dir = Path(run_dir)
    config = SSDConfig.load(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if latest is None:
        raise EdgeError(f"{run_dir}: no checkpoint under {CHECKPOINT_DIR}/ (train first, or point at a run directory)")
    model = build_ssd(config, backbone_weights="none")
    ckpt = tf.train.Checkpoint(model=model)
    try:
        status = ckpt.restore(latest)
        status.expect_partial()  # the optimizer and counters are not needed for inference
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as exc:
        raise EdgeError(f"{latest}: checkpoint does not match {run_dir / CONFIG_NAME} "
                        f"({str(exc).splitlines()[0][:200]})") from None
    except (tf.errors.OpError, IndexError, OSError) as exc:  # truncated/garbled files: IndexError from the reader
        message = getattr(exc, "message", None) or str(exc)
        raise EdgeError(f"{latest}: unreadable checkpoint ({message.splitlines()[0][:200]})") from None
    return model, config


def search_batch_size(config: SSDConfig, dataset, start: int = 4, max_batch: int = 256, steps: int = 3,
                      loss: LossConfig | None = None, mixed_precision: bool = False):
    """``--batch-size auto``: largest batch that trains ``steps`` real steps without GPU OOM.

    Uses a throwaway model and optimizer so the real run starts from clean weights.
    """
    from convert.gpu import find_batch_size

    model = build_ssd(config)
    optimizer = make_optimizer(1e-4, 100, warmup_steps=0, mixed_precision=mixed_precision)
    step = make_train_step(model, optimizer, loss or LossConfig())
    pipeline = InputPipeline(dataset, config, augment=False)

    def try_batch(size: int) -> None:
        images, targets = next(iter(pipeline.training_dataset(size, repeat=True)))
        for _ in range(steps):
            [float(v) for v in step(images, targets)]

    try:
        return find_batch_size(try_batch, start=start, max_batch=max_batch)
    finally:
        del model, optimizer, step
        import gc

        gc.collect()
        import_keras().backend.clear_session()
