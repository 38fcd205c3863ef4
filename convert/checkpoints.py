"""Checkpoints of a run directory: what training saves and resumes from, and what conversion restores.

``checkpoints/`` under a run directory holds ``tf.train.Checkpoint(model, optimizer, step, epoch)``
files written by ``tf.train.CheckpointManager``. Training saves the optimizer and the counters too,
so a resumed run carries on with the same learning-rate schedule and step count; conversion
restores the model alone.
"""

from __future__ import annotations

from pathlib import Path

from convert.config import CHECKPOINT_DIR, CONFIG_NAME, SSDConfig
from convert.model import build_ssd
from convert.tf import import_tensorflow
from edge.errors import EdgeError, first_line


def latest_checkpoint(run_dir: str | Path) -> str | None:
    """Path prefix of the newest checkpoint under ``run_dir/checkpoints`` (``.../ckpt-N``), or None."""
    tf = import_tensorflow()
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    return tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def _checkpoint_objects(model, optimizer=None):
    tf = import_tensorflow()
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    kwargs = {"model": model, "step": step, "epoch": epoch}
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    return tf.train.Checkpoint(**kwargs), step, epoch


class TrainingCheckpoints:
    """The model, optimizer and counters of a training run, and the manager that saves them.

    Create it inside the distribution strategy's scope (it makes the counter variables).
    """

    def __init__(self, model, optimizer, run_dir: str | Path, keep: int = 3) -> None:
        tf = import_tensorflow()
        self.checkpoint, self.step, self.epoch = _checkpoint_objects(model, optimizer)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(Path(run_dir) / CHECKPOINT_DIR),
                                                  max_to_keep=keep)

    @property
    def steps_done(self) -> int:
        return int(self.step.numpy())

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self) -> str:
        """A checkpoint numbered by the steps done; returns its path prefix."""
        return self.manager.save(checkpoint_number=self.steps_done)

    def restore_latest(self) -> None:
        """Restore the newest checkpoint, optimizer and counters included (``--resume``)."""
        tf = import_tensorflow()
        _check_optimizer_format(self.latest)
        try:
            self.checkpoint.restore(self.latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, IndexError, tf.errors.OpError) as exc:
            raise EdgeError(f"--resume {self.latest}: cannot restore ({first_line(exc)})") from None


# Where each tf-keras Adam keeps its step count in a checkpoint. The optimizer's moments are created
# after the restore, so a checkpoint of the other kind would match nothing of them: silently, with
# the step count and the learning-rate schedule starting again from zero.
_OPTIMIZER_STEP_KEYS = {"optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE": "OptimizerV2 Adam",
                        "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE": "tf-keras Optimizer Adam"}
_OUR_OPTIMIZER = "OptimizerV2 Adam"  # convert.steps.make_optimizer


def _check_optimizer_format(checkpoint: str | None) -> None:
    """EdgeError when ``checkpoint``'s optimizer state is not the kind this version trains with
    (runs started before edgekit moved to OptimizerV2 Adam): it cannot be resumed, only converted."""
    if checkpoint is None:
        return
    tf = import_tensorflow()
    try:
        names = {name for name, _ in tf.train.list_variables(checkpoint)}
    except (tf.errors.OpError, ValueError, IndexError):
        return  # unreadable: the restore says so in its own words
    kinds = {kind for key, kind in _OPTIMIZER_STEP_KEYS.items() if key in names}
    if kinds and _OUR_OPTIMIZER not in kinds:
        raise EdgeError(f"--resume {checkpoint}: its optimizer state was saved by an earlier edgekit "
                        f"({', '.join(sorted(kinds))}) and cannot be resumed; edge convert still reads the run, or "
                        "train it again without --resume")


def load_trained_model(run_dir):
    """Rebuild the model from ``run_dir/config.json`` and restore its latest checkpoint.

    Returns ``(keras_model, SSDConfig)``. EdgeError when there is no checkpoint, it is unreadable,
    or its variables do not fit the model the config describes.
    """
    tf = import_tensorflow()
    run_dir = Path(run_dir)
    config = SSDConfig.load(run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise EdgeError(f"{run_dir}: no checkpoint under {CHECKPOINT_DIR}/ (train first, or point at a run directory)")
    model = build_ssd(config, backbone_weights="none")
    ckpt = tf.train.Checkpoint(model=model)
    try:
        status = ckpt.restore(latest)
        status.expect_partial()  # the optimizer and counters are not needed for inference
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as exc:
        raise EdgeError(f"{latest}: checkpoint does not match {run_dir / CONFIG_NAME} ({first_line(exc)})") from None
    except (tf.errors.OpError, IndexError, OSError) as exc:  # truncated/garbled files: IndexError from the reader
        raise EdgeError(f"{latest}: unreadable checkpoint ({first_line(exc)})") from None
    return model, config


def write_model_only_run(run_dir, out_dir) -> Path:
    """A copy of ``run_dir`` that converts exactly as it does and cannot be resumed: its config.json and
    history.json, and the latest checkpoint's model variables without the optimizer's moments (a third of
    the size; the bundled demo's float source is one). ``out_dir`` appears whole or not at all."""
    import os
    import shutil
    import tempfile

    tf = import_tensorflow()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists():
        raise EdgeError(f"{out_dir}: already exists (choose a new folder)")
    model, _ = load_trained_model(run_dir)
    number = latest_checkpoint(run_dir).rsplit("-", 1)[1]
    steps = int(number) if number.isdigit() else 0
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the folder's
    try:
        for name in (CONFIG_NAME, "history.json"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, staging / name)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(staging / CHECKPOINT_DIR),
                                             max_to_keep=1)
        manager.save(checkpoint_number=steps)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
