"""The channel-pruning stage of ``edge convert``: importance images, the narrowing chosen by measured
int8 latency (:mod:`convert.channel_plan`), then fine-tuning with the unpruned model as teacher at a
learning rate that lets the narrower network relearn.
"""

from __future__ import annotations


def importance_images(plan, limit: int = 64):
    """Normalised float inputs for channel importance: the calibration frames, or the training images."""
    import numpy as np

    from convert import quantize

    frames = plan.frames
    if frames is None:
        height, width = plan.source.head.input_size
        frames = quantize.load_calibration_frames([s.image_path for s in plan.train_set.samples], height, width,
                                                  limit)
    norm = plan.source.config.normalization
    return np.concatenate([(f - norm.mean) / norm.std for f in frames[:limit]]).astype(np.float32)


def channel_prune(plan):
    """Narrow the model by measured int8 latency, then fine-tune it (the unpruned model teaching)."""
    from convert import channel_plan
    from convert.finetune import make_fine_tuner

    opts, steps = plan.opts, plan.steps
    images = steps.run("channel importance images", lambda: importance_images(plan),
                       lambda x: f"{len(x)} images")
    result = steps.run("channel prune", lambda: channel_plan.prune_channels(
        plan.source.model, images, opts.prune_channels, opts.latency_target, runs=opts.latency_runs,
        num_threads=opts.num_threads, log=steps.log), lambda r: channel_plan.describe(r.record))
    record = result.record
    if record.get("latency_target_missed"):
        plan.notes.append(f"--latency-target {opts.latency_target}: not reached within "
                          f"{channel_plan.MAX_LATENCY_ROUNDS} rounds (see channel_pruning.rounds)")
    teacher, distill = None, None
    if opts.distill_weight > 0:
        from convert.distill import DistillConfig, Teacher

        config = plan.source.config
        teacher = Teacher(plan.source.model, config, config)
        distill = DistillConfig(weight=opts.distill_weight)
    record["distillation"] = {"teacher": "the unpruned model" if teacher else None,
                              "weight": opts.distill_weight if teacher else 0.0}
    if opts.channel_steps:
        learning_rate = channel_learning_rate(opts, plan.source.config)
        tuner = make_fine_tuner(plan.source.config, plan.train_set, opts.batch_size, learning_rate=learning_rate,
                                warmup_steps=None, seed=opts.seed + 2, log=steps.log, teacher=teacher,
                                distill=distill)
        record["fine_tune"] = steps.run("channel fine-tune", lambda: tuner(result.model, opts.channel_steps, []),
                                        lambda r: f"{r['steps']} steps, loss {r['final_loss']}"
                                                  + (" (distilled from the unpruned model)" if teacher else ""))
        record["fine_tune"]["learning_rate"] = learning_rate
    return result.model, record


def channel_learning_rate(opts, config) -> float:
    """Peak learning rate after channel pruning: ``--channel-lr``, else the rate the run was trained at.

    Not the small sparsity/QAT fine-tuning rate: with half the channels gone the network must
    relearn, not be nudged (measured on the tests' tiny SSD at R 0.5, 40 steps: mAP@0.5 1.2 at 2e-4
    against 15.1 at 2e-3).
    """
    from convert.finetune import DEFAULT_FINE_TUNE_LR

    if opts.channel_lr is not None:
        return float(opts.channel_lr)
    trained_at = (getattr(config, "training", None) or {}).get("learning_rate")
    return float(trained_at) if trained_at else 10 * DEFAULT_FINE_TUNE_LR


def channel_provenance(record: dict) -> dict:
    """What the model's own metadata keeps of the channel pruning (the report has the rest)."""
    keys = ("remove_fraction", "latency_target", "channels", "groups", "params", "macs", "int8_network",
            "distillation", "importance", "chooser")
    return {k: record[k] for k in keys if k in record}
