"""Magnitude pruning with tensorflow-model-optimization, and what it achieved, per layer kind.

``prune_low_magnitude`` wraps every layer it accepts; the sparsity ramps from 0 to the target along
a ``PolynomialDecay`` schedule during fine-tuning on the training data, then ``strip_pruning``
leaves a plain Keras model whose pruned weights are exact zeros. Layers the wrapper refuses are
left dense and listed. TFMOT's registry prunes only Conv2D/Dense kernels: DepthwiseConv2D and
BatchNormalization are accepted but never pruned, so the overall sparsity stays a little under
the target (0.487 for 0.5 on our MobileNetV2 SSDLite).

Pruning pays only after compression (the .tflite stores zeros as zeros): compare gzip sizes.

Note: ``clone_model`` with the pruning wrapper shares layers with the source model, so pruning
also zeroes the original; whoever needs the unpruned float model must export it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edge.errors import EdgeError

# Weight kinds counted in the sparsity report: kernels only (biases and BN stay dense).
_KERNEL_NAMES = ("kernel", "depthwise_kernel")


@dataclass
class PruneResult:
    model: object  # stripped tf-keras model, pruned weights are zeros
    target_sparsity: float
    steps: int
    left_dense: list[str] = field(default_factory=list)  # "name (Kind)" of layers the wrapper refused
    sparsity: dict = field(default_factory=dict)  # see weight_sparsity()
    fine_tune: dict = field(default_factory=dict)  # steps, seconds, final loss


def weight_sparsity(model) -> dict:
    """Fraction of exact zeros in conv/dense kernels: ``{"overall": f, "by_kind": {kind: f}, ...}``."""
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}
    for layer in model.layers:
        for weight in layer.weights:
            name = weight.name.split("/")[-1].split(":")[0]
            if name not in _KERNEL_NAMES:
                continue
            kind = type(layer).__name__
            values = np.asarray(weight.numpy())
            zeros[kind] = zeros.get(kind, 0) + int(values.size - np.count_nonzero(values))
            totals[kind] = totals.get(kind, 0) + int(values.size)
    total = sum(totals.values())
    return {
        "overall": (sum(zeros.values()) / total) if total else 0.0,
        "by_kind": {kind: zeros[kind] / totals[kind] for kind in sorted(totals)},
        "weights_by_kind": dict(sorted(totals.items())),
    }


def wrap_for_pruning(model, sparsity: float, steps: int):
    """A pruning-wrapped clone of ``model``: sparsity ramps 0 -> ``sparsity`` over ``steps``.

    Returns ``(wrapped_model, left_dense)``.
    """
    from convert.tf import import_keras, import_tfmot

    if not 0.0 < sparsity < 1.0:
        raise EdgeError(f"--sparsity {sparsity}: must be between 0 and 1 (exclusive); 0 disables pruning")
    if steps < 1:
        raise EdgeError(f"--prune-steps {steps}: pruning needs at least 1 fine-tuning step")
    keras = import_keras()
    tfmot = import_tfmot()
    sparsity_api = tfmot.sparsity.keras
    # Reach the target after 3/4 of the steps, updating the masks often enough that each
    # step of the ramp is small; the last quarter recovers accuracy at the final sparsity.
    end_step = max(1, int(steps * 0.75))
    frequency = max(1, end_step // 10)
    schedule = sparsity_api.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(sparsity),
                                            begin_step=0, end_step=end_step, frequency=frequency)
    left_dense: list[str] = []

    def wrap(layer):
        # A fresh layer, not ``layer`` itself: wrapping the original would share its variables,
        # and pruning would then zero the caller's float model too.
        fresh = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.InputLayer):
            return fresh
        try:
            return sparsity_api.prune_low_magnitude(fresh, pruning_schedule=schedule)
        except ValueError:
            left_dense.append(f"{layer.name} ({type(layer).__name__})")
            return fresh

    wrapped = keras.models.clone_model(model, clone_function=wrap)
    for layer in wrapped.layers:
        inner = getattr(layer, "layer", layer)
        weights = model.get_layer(inner.name).get_weights()
        if weights:
            inner.set_weights(weights)
    return wrapped, left_dense


def prune_model(model, sparsity: float, steps: int, fine_tune: Callable[[object, int, list], dict]) -> PruneResult:
    """Prune ``model`` to ``sparsity`` while fine-tuning it for ``steps`` steps, then strip.

    ``fine_tune(wrapped_model, steps, callbacks)`` trains on the training data (the caller owns
    data and loss); it must pass ``callbacks`` (``UpdatePruningStep``) to the training loop.
    """
    from convert.tf import import_tfmot

    tfmot = import_tfmot()
    wrapped, left_dense = wrap_for_pruning(model, sparsity, steps)
    tuned = fine_tune(wrapped, steps, [tfmot.sparsity.keras.UpdatePruningStep()]) or {}
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    return PruneResult(model=stripped, target_sparsity=float(sparsity), steps=int(steps),
                       left_dense=left_dense, sparsity=weight_sparsity(stripped), fine_tune=tuned)
