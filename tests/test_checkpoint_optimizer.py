"""--resume and the optimizer's state: a checkpoint of our optimizer resumes with its step count and
Adam's moments; one written with the other tf-keras Adam (edgekit before OptimizerV2) is refused in
one line instead of silently restarting the learning-rate schedule from step 0."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import EdgeError

pytestmark = pytest.mark.slow


def _model_and_data():
    from convert.config import SSDConfig
    from convert.model import build_ssd

    config = SSDConfig.create(["a", "b"], input_size=96, width=0.35)
    return build_ssd(config, backbone_weights="none")


def _one_step(model, optimizer):
    import tensorflow as tf

    grads = [tf.ones_like(v) * 1e-3 for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))


def test_our_checkpoint_resumes_step_count_and_moments(tmp_path):
    from convert.checkpoints import TrainingCheckpoints
    from convert.steps import create_slots, make_optimizer

    model = _model_and_data()
    optimizer = make_optimizer(1e-3, 100)
    saved = TrainingCheckpoints(model, optimizer, tmp_path)
    for _ in range(3):
        _one_step(model, optimizer)
    saved.step.assign(3)
    saved.save()
    moment = optimizer.get_slot(model.trainable_variables[0], "m").numpy().copy()
    assert np.any(moment != 0)

    fresh_model = _model_and_data()
    fresh = make_optimizer(1e-3, 100)
    resumed = TrainingCheckpoints(fresh_model, fresh, tmp_path)
    resumed.restore_latest()
    create_slots(fresh, fresh_model.trainable_variables)  # as make_train_step does, after the restore
    assert resumed.steps_done == 3 and int(fresh.iterations.numpy()) == 3
    np.testing.assert_array_equal(fresh.get_slot(fresh_model.trainable_variables[0], "m").numpy(), moment)


def test_checkpoint_of_the_other_adam_is_refused_in_one_line(tmp_path):
    from convert.checkpoints import TrainingCheckpoints
    from convert.steps import make_optimizer
    from convert.tf import import_keras

    model = _model_and_data()
    other = import_keras().optimizers.Adam(1e-3)
    saved = TrainingCheckpoints(model, other, tmp_path)
    _one_step(model, other)
    saved.save()

    resumed = TrainingCheckpoints(_model_and_data(), make_optimizer(1e-3, 100), tmp_path)
    with pytest.raises(EdgeError) as caught:
        resumed.restore_latest()
    message = str(caught.value)
    assert "\n" not in message and "cannot be resumed" in message and "ckpt-" in message
