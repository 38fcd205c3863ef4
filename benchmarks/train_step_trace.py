"""What the first training step costs (tracing the tf.function) by optimizer, and that the steady
step and the losses stay the same.

Every ``edge train``, and every pruning, channel or QAT fine-tune inside ``edge convert``, traces its
step once before the first update; on a MobileNetV2 SSD that trace costs more CPU than a hundred
steps. Three set-ups of :func:`convert.steps.make_train_step`, each in a fresh process (nothing of
TensorFlow's caches shared), interleaved round by round (the order rotating):

- ``optimizer, slots on first call``: tf-keras's newer ``Optimizer`` Adam creating its moments
  inside the first call (what edgekit did before; the function is then traced twice);
- ``optimizer, slots first``: the same Adam with its variables built before the first call;
- ``legacy, slots first``: OptimizerV2 Adam (one fused op per variable), variables made by
  :func:`convert.steps.create_slots` (what ``make_train_step`` does now).

CPU seconds (this process's user + system) are the figure, because the machine is shared: wall time
under load mostly measures the other jobs. Run from the project root:

    .venv/bin/python benchmarks/train_step_trace.py                 # ~8 min on 2 cores
    .venv/bin/python benchmarks/train_step_trace.py --prune          # the TFMOT-wrapped model (--sparsity)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "train_step_trace.json"
SETUPS = ("optimizer, slots on first call", "optimizer, slots first", "legacy, slots first")


def measure(setup: str, data_dir: str, steps: int, prune: bool) -> dict:
    """One set-up in this process: first-step and steady-step CPU, traces, the losses."""
    import numpy as np

    import convert.steps as steps_module
    from convert.config import SSDConfig
    from convert.data import load_dataset
    from convert.losses import LossConfig
    from convert.model import build_ssd
    from convert.pipeline import InputPipeline
    from convert.tf import import_keras, import_tensorflow

    tf = import_tensorflow()
    keras = import_keras()
    tf.keras.utils.set_random_seed(0)
    dataset = load_dataset(data_dir)
    config = SSDConfig.create(list(dataset.labels), input_size=160, width=0.35)
    model = build_ssd(config)
    if prune:
        from convert.prune import wrap_for_pruning

        model, _ = wrap_for_pruning(model, 0.5, steps)
    optimizer = steps_module.make_optimizer(2e-3, steps, warmup_steps=0)
    if setup != "legacy, slots first":
        optimizer = keras.optimizers.Adam(learning_rate=optimizer.learning_rate, global_clipnorm=10.0)
        if setup == "optimizer, slots on first call":
            steps_module.create_slots = lambda *args, **kwargs: None
        else:
            def build(optimizer, variables, strategy=None):
                optimizer.build(list(variables))
            steps_module.create_slots = build
    step = steps_module.make_train_step(model, optimizer, LossConfig())
    callbacks = []
    if prune:
        from convert.tf import import_tfmot

        callbacks = [import_tfmot().sparsity.keras.UpdatePruningStep()]
        for callback in callbacks:
            callback.set_model(model)
            callback.on_train_begin()
    data = iter(InputPipeline(dataset, config, augment=True).training_dataset(8, seed=0))
    cpu, losses = [], []
    first_wall = None
    for i in range(steps):
        for callback in callbacks:
            callback.on_train_batch_begin(batch=-1)
        images, targets = next(data)
        wall, start = time.perf_counter(), time.process_time()
        losses.append(float(step(images, targets)[0]))
        cpu.append(time.process_time() - start)
        if i == 0:
            first_wall = time.perf_counter() - wall
    return {"setup": setup, "first_step_cpu_s": round(cpu[0], 2), "first_step_wall_s": round(first_wall, 2),
            "traces": int(step.experimental_get_tracing_count()),
            "steady_step_cpu_ms_p50": round(1000 * float(np.median(cpu[1:])), 1),
            "loss_first": round(losses[0], 4), "loss_last10_mean": round(float(np.mean(losses[-10:])), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prune", action="store_true", help="the TFMOT pruning-wrapped model (edge convert --sparsity)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=2, metavar=("SETUP", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps, args.prune)))
        return 0

    from convert.data.synth import write_synthetic_voc
    from edge.files import atomic_write_json
    from edge.provenance import machine_info

    out = Path(args.out) if args.out else RESULTS.with_name(
        RESULTS.stem + ("_pruned" if args.prune else "") + RESULTS.suffix)
    rows, load = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_voc(Path(tmp) / "shapes", 64, size=160, seed=1)
        for round_index in range(args.rounds):
            order = SETUPS[round_index % len(SETUPS):] + SETUPS[:round_index % len(SETUPS)]  # no set-up always last
            for setup in order:
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", setup, str(Path(tmp) / "shapes")]
                if args.prune:
                    cmd.append("--prune")
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["round"] = round_index
                rows.append(row)
                print(json.dumps(row), flush=True)
            load.append(os.getloadavg()[0])
    summary = {}
    for setup in SETUPS:
        mine = [r for r in rows if r["setup"] == setup]
        summary[setup] = {key: round(sum(r[key] for r in mine) / len(mine), 3)
                          for key in ("first_step_cpu_s", "steady_step_cpu_ms_p50", "loss_last10_mean")}
        summary[setup]["traces"] = mine[0]["traces"]
    base = summary[SETUPS[0]]["first_step_cpu_s"]
    for setup in SETUPS:
        summary[setup]["first_step_cpu_vs_before"] = round(summary[setup]["first_step_cpu_s"] / base, 3)
    result = {"benchmark": "train_step_trace", "model": "SSD MobileNetV2 0.35, 160 px, 3 classes, batch 8"
              + (", TFMOT pruning wrappers" if args.prune else ""), "steps": args.steps, "rounds": args.rounds,
              "load_average_1min": [round(x, 2) for x in load], "summary": summary, "rows": rows,
              "machine": machine_info()}
    atomic_write_json(out, result)
    for setup, figures in summary.items():
        print(f"{setup:34s} first step {figures['first_step_cpu_s']:6.1f} CPU s "
              f"({figures['first_step_cpu_vs_before']:.2f}x before), {figures['traces']} trace(s), "
              f"steady {figures['steady_step_cpu_ms_p50']:.0f} CPU ms, loss {figures['loss_last10_mean']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
