"""The training step, shared by ``edge train`` and the pruning / QAT fine-tuning of ``edge convert``.

:func:`make_optimizer` is Adam behind a warm-up + cosine schedule; :func:`make_train_step` compiles
one step of the detection loss into a ``tf.function`` (replica-averaged under a distribution
strategy, loss-scaled under mixed precision), after :func:`create_slots` has made the optimizer's
variables; :func:`search_batch_size` finds the largest batch
such a step runs with on the GPU (``--batch-size auto``). With a teacher (:mod:`convert.distill`) the
step adds the distillation terms to the detection loss.
"""

from __future__ import annotations

from convert.losses import LossConfig, detection_loss
from convert.tf import import_keras, import_tensorflow


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int | None = None,
                   mixed_precision: bool = False):
    """Adam with linear warm-up then cosine decay (from scratch BN nets need the gentle start).

    tf-keras's OptimizerV2 Adam (``optimizers.legacy``): one fused ``ResourceApplyAdam`` op per
    variable, where the newer optimizer builds each variable's update from a dozen ops through a
    distribution ``merge_call`` in Python, which made tracing the step of a MobileNetV2 SSD (~500
    variables) cost 2.5x more CPU (``python benchmarks/train_step_trace.py``). Same update rule,
    same steady step time.
    """
    keras = import_keras()
    total_steps = max(1, int(total_steps))
    warmup = min(total_steps // 10, 500) if warmup_steps is None else int(warmup_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.1 if warmup else learning_rate,
        decay_steps=max(1, total_steps - warmup), alpha=0.02,
        warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
    optimizer = keras.optimizers.legacy.Adam(learning_rate=schedule, global_clipnorm=10.0)
    if mixed_precision:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def create_slots(optimizer, variables, strategy=None) -> None:
    """Create ``optimizer``'s variables (step counter, learning-rate terms, Adam's moments for each of
    ``variables``) now, eagerly, inside ``strategy``'s scope. A ``tf.function`` that creates variables on
    its first call is traced twice (once to create them, once without); creating them here saves that
    second trace. Restoring a checkpoint first is fine: the restored values land as the slots appear.
    Variables that already have slots keep them."""
    tf = import_tensorflow()
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer._create_all_weights(list(variables))  # OptimizerV2's own (also Keras's h5 loader's) entry


def make_train_step(model, optimizer, loss_config: LossConfig, strategy=None, teacher=None, distill=None):
    """A compiled step ``(images, targets) -> (total, box, class)`` losses, replica-averaged.

    ``teacher``: a :class:`convert.distill.Teacher`; ``total`` then includes ``distill.weight`` times
    the distillation terms (``distill`` defaults to :class:`convert.distill.DistillConfig`), while
    ``box`` and ``class`` stay the detection terms, so ``total - box_weight * box - class`` is the
    weighted distillation loss.
    """
    tf = import_tensorflow()
    strategy = strategy or tf.distribute.get_strategy()
    keras = import_keras()
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    # Plain tensor maths: keep autograph out of it (and out of import_tensorflow's os.environ use).
    loss_fn = tf.autograph.experimental.do_not_convert(detection_loss)
    if teacher is not None:
        from convert.distill import DistillConfig, distillation_loss

        distill = (distill or DistillConfig()).validate()
        distill_fn = tf.autograph.experimental.do_not_convert(distillation_loss)
        teacher_fn = tf.autograph.experimental.do_not_convert(teacher.targets)

    def replica_step(images, targets):
        if teacher is not None:  # outside the tape: nothing of the teacher is differentiated
            teacher_box, teacher_logits = teacher_fn(images, targets.get("teacher_images"))
        with tf.GradientTape() as tape:
            box_pred, class_logits = model(images, training=True)
            total, box_loss, class_loss = loss_fn(targets["box_targets"], targets["class_targets"],
                                                         box_pred, class_logits, loss_config)
            if teacher is not None:
                class_distill, box_distill = distill_fn(box_pred, class_logits, teacher_box, teacher_logits,
                                                        distill, teacher.score_conversion, loss_config.huber_delta)
                total = total + distill.weight * (class_distill + box_distill)
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

    create_slots(optimizer, model.trainable_variables, strategy)
    if strategy.num_replicas_in_sync > 1:  # distributed batches are PerReplica values: let TF trace them
        return tf.function(step)
    # One graph for every batch size (tracing the backward pass of MobileNetV2 costs many seconds, and
    # the batch-size search would otherwise trace once per size).
    size, num_anchors = model.input_shape[1:3], int(model.outputs[0].shape[1])
    target_specs = {"box_targets": tf.TensorSpec((None, num_anchors, 4), tf.float32),
                    "class_targets": tf.TensorSpec((None, num_anchors), tf.int32)}
    if teacher is not None and teacher.sees_own_view:
        side = teacher.input_size
        target_specs["teacher_images"] = tf.TensorSpec((None, side, side, 3), tf.float32)
    signature = [tf.TensorSpec((None, *size, 3), tf.float32), target_specs]
    # Without autograph: the step and the layers have no tensor-dependent Python control flow, and
    # converting every layer's call (TFMOT's pruning wrappers above all) is a third of the first
    # step's tracing: 64 -> 46 s for a pruning-wrapped tiny SSD on two cores, the same losses.
    return tf.function(step, input_signature=signature, autograph=False)


def search_batch_size(config, dataset, start: int = 4, max_batch: int = 256, steps: int = 3,
                      loss: LossConfig | None = None, mixed_precision: bool = False, teacher=None, distill=None):
    """``--batch-size auto``: largest batch that trains ``steps`` real steps without GPU OOM.

    Uses a throwaway model and optimizer so the real run starts from clean weights; a ``teacher``
    (distillation) runs in the measured step too, since its activations share the memory.
    """
    import gc

    from convert.gpu import find_batch_size
    from convert.model import build_ssd
    from convert.pipeline import InputPipeline

    model = build_ssd(config)
    optimizer = make_optimizer(1e-4, 100, warmup_steps=0, mixed_precision=mixed_precision)
    step = make_train_step(model, optimizer, loss or LossConfig(), teacher=teacher, distill=distill)
    pipeline = InputPipeline(dataset, config, augment=False, teacher_config=None if teacher is None else teacher.config)

    def try_batch(size: int) -> None:
        images, targets = next(iter(pipeline.training_dataset(size, repeat=True)))
        for _ in range(steps):
            [float(v) for v in step(images, targets)]

    try:
        return find_batch_size(try_batch, start=start, max_batch=max_batch)
    finally:
        del model, optimizer, step
        gc.collect()
        import_keras().backend.clear_session()
