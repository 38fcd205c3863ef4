"""Short fine-tuning on the training data, shared by pruning and quantization-aware training.

Uses the training stage's own pieces (:class:`convert.pipeline.InputPipeline`, the detection loss,
:func:`convert.steps.make_train_step`), so a pruned or QAT model is tuned on exactly the objective
it was trained with (plus distillation from a teacher, e.g. the unpruned model, when one is given:
:mod:`convert.distill`). Keras callbacks (TFMOT's ``UpdatePruningStep``) are driven by hand, the way
TFMOT documents for custom training loops.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from convert.config import SSDConfig
from edge.errors import EdgeError

DEFAULT_FINE_TUNE_LR = 2e-4  # a tenth of the training default: nudge, do not retrain
# Pruning changes conv outputs step by step; BatchNormalization's moving statistics (momentum 0.99)
# would still describe the dense model after a few hundred steps (measured: mAP@0.5 0.47 -> 0.13
# after 60 pruning steps while the training loss looked fine). 0.9 lets them follow the weights.
FINE_TUNE_BN_MOMENTUM = 0.9


def _batch_norms(model):
    from convert.tf import import_keras

    keras = import_keras()
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # pruning / quantize wrappers
        if isinstance(inner, keras.layers.BatchNormalization):
            yield inner


def make_fine_tuner(config: SSDConfig, dataset, batch_size: int = 8, learning_rate: float = DEFAULT_FINE_TUNE_LR,
                    seed: int = 0, log: Callable[[str], None] | None = None, teacher=None, distill=None,
                    warmup_steps: int | None = 0):
    """``fine_tune(model, steps, callbacks)`` over ``dataset`` (a :class:`convert.data.Dataset`).

    ``teacher`` (a :class:`convert.distill.Teacher`, e.g. ``Teacher(unpruned, config, config)`` with a
    copy of the model taken before pruning) adds its distillation terms to every step, weighted by
    ``distill`` (a :class:`convert.distill.DistillConfig`, defaults when None). ``warmup_steps`` None:
    the training schedule's warm-up (a tenth of the steps), for rates high enough to need one.
    """
    from convert.losses import LossConfig
    from convert.pipeline import InputPipeline
    from convert.steps import make_optimizer, make_train_step

    if not dataset.samples:
        raise EdgeError("fine-tuning data has no images")
    if list(dataset.labels) != list(config.labels):
        raise EdgeError(f"fine-tuning data labels {dataset.labels} differ from the model's {config.labels}")
    loss = LossConfig(classification=config.training.get("loss", LossConfig.classification))

    def fine_tune(model, steps: int, callbacks: list) -> dict:
        saved_momentum = [(bn, bn.momentum) for bn in _batch_norms(model)]
        for bn, _ in saved_momentum:
            bn.momentum = FINE_TUNE_BN_MOMENTUM  # read when the step is traced, below
        pipeline = InputPipeline(dataset, config, augment=True,
                                 teacher_config=None if teacher is None else teacher.config)
        data = iter(pipeline.training_dataset(min(batch_size, len(dataset.samples)), seed=seed))
        optimizer = make_optimizer(learning_rate, steps, warmup_steps=warmup_steps)
        train_step = make_train_step(model, optimizer, loss, teacher=teacher, distill=distill)
        for callback in callbacks:
            callback.set_model(model)
            callback.on_train_begin()
        start, losses = time.perf_counter(), []
        for step in range(int(steps)):
            for callback in callbacks:
                callback.on_train_batch_begin(batch=-1)
            images, targets = next(data)
            total = float(train_step(images, targets)[0])
            if not math.isfinite(total):
                raise EdgeError(f"fine-tuning loss became {total} at step {step}")
            losses.append(total)
            if log and (step + 1) % max(1, steps // 5) == 0:
                log(f"  fine-tune step {step + 1}/{steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
        for callback in callbacks:
            callback.on_epoch_end(batch=-1)
        for bn, momentum in saved_momentum:
            bn.momentum = momentum
        return {"steps": int(steps), "seconds": round(time.perf_counter() - start, 1),
                "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}

    return fine_tune
