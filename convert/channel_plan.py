"""How many channels each group keeps: chosen by measured int8 latency, then verified by measurement.

NetAdapt's idea with a small measuring budget. A latency table per layer, timed on the board's own
interpreter, would take one int8 conversion per group and width; instead the groups are split into
*stages* by the resolution their producer works at (one stride of the network, plus the small
grids of the SSD extra layers), and one probe model per stage, with that stage's groups at half
width, is converted to int8 and timed against the dense model, all interpreters interleaved round
by round so that a noisy machine shifts them alike. A stage's measured saving is shared among its
groups by their width-dependent MACs, giving every group a measured cost in ms per channel.

Then a greedy pass removes channels 8 at a time (the vector width the int8 kernels favour) from
the group where the next 8 cost the least importance per ms saved (importance as a fraction of the
group's total, from :func:`convert.channels.channel_importance`; no group below
:func:`keep_floor` of the network's fraction at that point), until the asked fraction of
channels is gone or the predicted latency reaches the target. A latency target is then checked on
the real narrowed model; when the prediction was optimistic the target is tightened by the
measured error and the choice redone (at most :data:`MAX_LATENCY_ROUNDS` times).
"""

from __future__ import annotations

import heapq
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from convert import channels as ch
from edge.errors import EdgeError

UNIT = 8
# A quarter of a group, and never under 8 channels: at 1/8 the chooser, drawn to the costly
# high-resolution layers, cut the stem to 4 channels and the first bottleneck to 2 (measured: a
# 0.35-width run kept 0.29 -> 0.03 mAP@0.5 after 40 fine-tuning steps at R = 0.5).
MIN_KEEP_FRACTION = 0.25
# And no group much narrower than the network as a whole at that point of the pass: keeping 62% of
# the channels under the quarter floor alone, the chooser cut the stem and blocks 1-3 and 11-13 to a
# quarter (where a channel buys the most time), and that bottleneck cost the fine-tuned int8 model
# 6.6 mAP@0.5 points on the hard synthetic task; with every group kept at >= 0.8 of the network's
# fraction it lost 4.3, at 0.54x the dense invoke time instead of 0.48x (README, "Channel pruning";
# benchmarks/compression_frontier.py, 1,800 fine-tuning steps).
FLOOR_SPREAD = 0.8
MAX_LATENCY_ROUNDS = 3
PROBE_KEEP = 0.5


@dataclass
class LatencyTable:
    dense_ms: float
    ms_per_channel: dict[str, float]  # group -> measured ms saved per channel removed
    probes: list[dict] = field(default_factory=list)  # stage, groups, ms, saving
    dense_bytes: bytes = b""  # the dense network as int8, reused for the final comparison

    def predict(self, removed: dict[str, int]) -> float:
        return self.dense_ms - sum(self.ms_per_channel[g] * n for g, n in removed.items())


# ---------------------------------------------------------------- measuring

def int8_bytes(model, samples: np.ndarray) -> bytes:
    """The raw network (no post-process op: its cost does not depend on width) as full-integer int8."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from convert.tf import import_tensorflow

    tf = import_tensorflow()
    # Frozen to constants and converted from the graph: the TF2 converters save and reload a
    # SavedModel first, tracing every layer's call, which is two thirds of the time on a 150-layer
    # SSD (5 s against 15 s on two cores, the same int8 network). Only a network without the
    # post-process op can be frozen: freezing inlines the function the converter fuses into the op.
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))
    converter = tf.compat.v1.lite.TFLiteConverter(frozen.graph.as_graph_def(), frozen.inputs, frozen.outputs)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    return bytes(converter.convert())


# Timing budget per model: the probes differ by a few tenths of a millisecond, so the noise of a
# shared machine must average out. With 30 invokes in rounds of 5 the fixed-order rounds showed the
# model timed first as slower, and two stages at half width as slower than the dense network (one
# conversion on 2 cores: 2.57 ms dense, 2.70 and 2.67 ms for the narrower probes, 2.09 ms dense
# minutes later). Now each round lasts long enough to be warm, its first invokes after the switch
# from another model are dropped, the order rotates, and every model gets at least this much time.
TIMING_ROUNDS = 8
ROUND_SECONDS = 0.05
SWITCH_INVOKES = 2  # invokes dropped after switching models: caches hold the previous one's weights
WARMUP_INVOKES = 10  # the first invokes pay for XNNPACK's weight packing and cold pages


def time_interleaved(models: list[bytes], runs: int, num_threads: int | None) -> list[float]:
    """Median ``invoke()`` ms of each model, timed round-robin so load changes hit all of them.

    ``runs`` is the least number of kept invokes per model; rounds are also made at least
    :data:`ROUND_SECONDS` long, and the order of the models rotates from round to round.
    """
    from edge.backends.tflite import load_interpreter

    with tempfile.TemporaryDirectory(prefix="edge-latency-") as folder:
        interpreters, per_round = [], []
        for i, data in enumerate(models):
            path = Path(folder) / f"probe_{i}.tflite"
            path.write_bytes(data)
            interpreter, _ = load_interpreter(path, None, num_threads, allocate=True)
            detail = interpreter.get_input_details()[0]
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
            start = time.perf_counter()
            for _ in range(WARMUP_INVOKES):
                interpreter.invoke()
            warm_s = (time.perf_counter() - start) / WARMUP_INVOKES
            interpreters.append(interpreter)
            per_round.append(max(math.ceil(runs / TIMING_ROUNDS), math.ceil(ROUND_SECONDS / max(warm_s, 1e-6))))
        times = [[] for _ in models]
        for r in range(TIMING_ROUNDS):
            for k in range(len(interpreters)):
                i = (k + r) % len(interpreters)
                interpreter = interpreters[i]
                for n in range(SWITCH_INVOKES + per_round[i]):
                    start = time.perf_counter()
                    interpreter.invoke()
                    if n >= SWITCH_INVOKES:
                        times[i].append((time.perf_counter() - start) * 1000.0)
    return [float(np.median(t)) for t in times]


def _stages(groups: list[ch.ChannelGroup], input_size: int) -> dict[str, list[ch.ChannelGroup]]:
    """Three stages by stride: each probe is one int8 conversion (~5 s on 2 cores), so few."""
    stages: dict[str, list[ch.ChannelGroup]] = {}
    for group in groups:
        stride = input_size / max(1, max(group.spatial))
        key = "stride 2-8" if stride < 12 else "stride 16" if stride < 24 else "stride 32 and extra layers"
        stages.setdefault(key, []).append(group)
    return stages


def measure_latency_table(model, groups, importance, samples: np.ndarray, runs: int = 30,
                          num_threads: int | None = None, log: Callable[[str], None] | None = None) -> LatencyTable:
    """Dense int8 latency and each group's measured ms per channel (see the module docstring)."""
    stages = _stages(groups, int(model.input_shape[1]))
    blobs = [int8_bytes(model, samples)]
    removed_by_stage = []
    for name, members in stages.items():
        kept = {g.name: ch.keep_indices(importance[g.name]["score"], max(1, round(g.channels * PROBE_KEEP)))
                for g in members}
        probe = ch.narrow_model(model, groups, kept)
        blobs.append(int8_bytes(probe, samples))
        removed_by_stage.append({g.name: g.channels - len(kept[g.name]) for g in members})
    times = time_interleaved(blobs, runs, num_threads)
    dense = times[0]
    table = LatencyTable(dense_ms=dense, ms_per_channel={}, dense_bytes=blobs[0])
    for (name, members), removed, ms in zip(stages.items(), removed_by_stage, times[1:]):
        # Noise can make a small stage look free or even slower; a floor keeps the ranking by
        # importance there instead of by noise.
        saving = max(dense - ms, 1e-4 * dense)
        macs = {g.name: max(1, ch.group_macs(model, g)) for g in members}
        total = sum(macs.values())
        for g in members:
            share = saving * macs[g.name] / total
            table.ms_per_channel[g.name] = share / max(1, removed[g.name])
        table.probes.append({"stage": name, "groups": len(members), "ms": round(ms, 3),
                             "saving_ms": round(dense - ms, 3)})
        if log:
            log(f"  latency probe {name}: {len(members)} groups at {PROBE_KEEP:g} width, "
                f"{ms:.2f} ms vs dense {dense:.2f} ms")
    return table


# ---------------------------------------------------------------- choosing

def _unit(channels: int) -> int:
    return UNIT if channels >= 4 * UNIT else max(1, channels // 4)


def _min_keep(channels: int, floor: float = MIN_KEEP_FRACTION) -> int:
    return min(channels, max(UNIT, math.ceil(channels * floor)))


def keep_floor(network_fraction: float) -> float:
    """The least fraction of its channels a group keeps while the network keeps ``network_fraction``."""
    return max(MIN_KEEP_FRACTION, FLOOR_SPREAD * network_fraction)


def choose_widths(groups, importance, table: LatencyTable, remove_fraction: float | None = None,
                  latency_ms: float | None = None) -> dict[str, int]:
    """Channels each group keeps: greedy, cheapest importance per predicted ms first."""
    total = sum(g.channels for g in groups)
    keep = {g.name: g.channels for g in groups}
    order = {g.name: np.sort(np.asarray(importance[g.name]["score"], dtype=np.float64))  # ascending
             for g in groups}
    share = {name: s / max(s.sum(), 1e-12) for name, s in order.items()}
    removed = {g.name: 0 for g in groups}
    heap = []
    waiting = set()  # groups at the floor; it falls as the network narrows, and they may go on

    def push(group):
        name, unit = group.name, _unit(group.channels)
        network_after = (total - sum(removed.values()) - unit) / total
        if keep[name] - unit < _min_keep(group.channels, keep_floor(network_after)):
            waiting.add(name)
            return
        lost = float(share[name][removed[name]:removed[name] + unit].sum())
        gained = table.ms_per_channel[name] * unit
        heapq.heappush(heap, (lost / max(gained, 1e-12), name, unit))

    by_name = {g.name: g for g in groups}
    for group in groups:
        push(group)

    def done() -> bool:
        ok = True
        if remove_fraction is not None:
            ok &= sum(removed.values()) >= remove_fraction * total
        if latency_ms is not None:
            ok &= table.predict(removed) <= latency_ms
        return ok

    while heap and not done():
        _, name, unit = heapq.heappop(heap)
        keep[name] -= unit
        removed[name] += unit
        push(by_name[name])
        for other in list(waiting - {name}):
            waiting.discard(other)
            push(by_name[other])
    return keep


# ---------------------------------------------------------------- the whole step

@dataclass
class ChannelPruning:
    model: object  # the narrowed tf-keras model (before fine-tuning, until the caller tunes it)
    record: dict  # per-group widths, params, MACs, latency: the report's and provenance's section


def prune_channels(model, images: np.ndarray, remove_fraction: float | None, latency_fraction: float | None,
                   runs: int = 30, num_threads: int | None = None,
                   log: Callable[[str], None] | None = None) -> ChannelPruning:
    """Score, choose widths by measured latency, narrow; returns the model and what was done."""
    if remove_fraction is None and latency_fraction is None:
        raise EdgeError("channel pruning needs --prune-channels R or --latency-target F")
    groups = ch.find_groups(model)
    if not groups:
        raise EdgeError("--prune-channels: this model has no channels that can be removed on their own")
    importance = ch.channel_importance(model, groups, images)
    samples = images[: min(len(images), 8)]
    rounds: list[dict] = []
    table = None
    if latency_fraction is None and not remove_fraction:
        # Nothing to remove: no conversions, the copy is the model (the identity tests rely on it).
        widths = {g.name: g.channels for g in groups}
        narrow = ch.narrow_model(model, groups, {g.name: np.arange(g.channels) for g in groups}, importance)
    else:
        table = measure_latency_table(model, groups, importance, samples, runs, num_threads, log)
        target_ms = latency_fraction * table.dense_ms if latency_fraction is not None else None
        planned_ms = target_ms
        for _ in range(MAX_LATENCY_ROUNDS if target_ms is not None else 1):
            widths = choose_widths(groups, importance, table, remove_fraction, planned_ms)
            kept = {g.name: ch.keep_indices(importance[g.name]["score"], widths[g.name]) for g in groups}
            narrow = ch.narrow_model(model, groups, kept, importance)
            narrow_bytes = int8_bytes(narrow, samples)
            dense_ms, pruned_ms = time_interleaved([table.dense_bytes, narrow_bytes], runs, num_threads)
            predicted = table.predict({g.name: g.channels - widths[g.name] for g in groups})
            rounds.append({"planned_ms": None if planned_ms is None else round(planned_ms, 3),
                           "predicted_ms": round(predicted, 3), "dense_ms": round(dense_ms, 3),
                           "pruned_ms": round(pruned_ms, 3), "pruned_bytes": len(narrow_bytes)})
            if log:
                log(f"  widths chosen: int8 {pruned_ms:.2f} ms vs dense {dense_ms:.2f} ms "
                    f"({pruned_ms / dense_ms:.2f}x)")
            if target_ms is None or pruned_ms <= latency_fraction * dense_ms:
                break
            # The prediction was optimistic by this factor: aim lower by as much and choose again.
            planned_ms = planned_ms * (latency_fraction * dense_ms) / pruned_ms
    total = sum(g.channels for g in groups)
    kept_total = sum(widths.values())
    record = {
        "importance": "mean |activation - mean| at each consumer x consumer weight L2 norm, on "
                      f"{len(images)} images; removed channels' means folded into the consumer's bias",
        "chooser": "greedy by importance lost per measured int8 ms saved (latency probes per stage); "
                   f"no group under {FLOOR_SPREAD:g} of the network's kept fraction, nor {MIN_KEEP_FRACTION:g}",
        "remove_fraction": remove_fraction, "latency_target": latency_fraction,
        "channels": {"prunable": total, "kept": kept_total, "removed_fraction": round(1 - kept_total / total, 4)},
        "groups": [{"name": g.name, "dense": g.channels, "kept": int(widths[g.name])} for g in groups],
        "params": {"dense": ch.count_params(model), "pruned": ch.count_params(narrow)},
        "macs": {"dense": ch.count_macs(model), "pruned": ch.count_macs(narrow)},
        "int8_network": None if not rounds else {
            "note": "the network without the post-process op, timed side by side",
            "dense_ms": rounds[-1]["dense_ms"], "pruned_ms": rounds[-1]["pruned_ms"],
            "dense_bytes": len(table.dense_bytes), "pruned_bytes": rounds[-1]["pruned_bytes"],
            "threads": num_threads},
        "latency_probes": table.probes if table else [], "rounds": rounds,
    }
    if latency_fraction is not None and rounds[-1]["pruned_ms"] > latency_fraction * rounds[-1]["dense_ms"]:
        record["latency_target_missed"] = True
    return ChannelPruning(model=narrow, record=record)


def describe(record: dict) -> str:
    net = record["int8_network"]
    text = (f"{record['channels']['kept']}/{record['channels']['prunable']} channels kept, "
            f"params {record['params']['pruned'] / record['params']['dense']:.2f}x, "
            f"MACs {record['macs']['pruned'] / record['macs']['dense']:.2f}x")
    if net:
        text += (f", int8 network {net['pruned_ms']:.2f} vs {net['dense_ms']:.2f} ms "
                 f"({net['pruned_ms'] / net['dense_ms']:.2f}x)")
    return text
