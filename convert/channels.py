"""Channel pruning: find the channels a tf-keras SSD can lose, score them, rebuild it narrower.

A *group* is the output channels of one ``Conv2D`` (the producer) followed through layers that keep
channel ``c`` as channel ``c`` (BatchNormalization, activations, DepthwiseConv2D, padding, cropping,
upsampling, dropout) until every path ends in another ``Conv2D`` (a consumer, which reads them as
input channels). Only then is a channel free to go: removing it from the producer, every follower
and every consumer's input leaves a valid, narrower network of the same architecture. A path into
``Add`` (residual connections), ``Concatenate``, ``Reshape`` or a model output ties the channels to
something else and the group is left alone. On MobileNetV2-SSDLite this finds exactly the
expansion (hidden) channels of every inverted residual block (block 13's also feed the stride-16
predictors), the stem, the last 1x1 conv and the SSDLite extra layers and predictor inputs; the
projection outputs of residual stages and the FPN's added laterals stay as they are.

Importance (:func:`channel_importance`) is measured on images, not read off the weights: for
channel ``c`` of a group, the mean absolute deviation of its activation at each consumer's input
times the L2 norm of the consumer's weights for that channel, summed over consumers. That is the
expected change of the consumer's pre-activation when the channel goes, *after* its mean is folded
into the consumer's bias (:func:`narrow_model` does that fold). BatchNorm ``|gamma|`` misses the
constant ``relu6(beta)`` a small-gamma channel still emits and the consumer's weights; a filter's
L1 norm misses BatchNorm's rescaling. Both are blind to what the data does.

The narrower model is a ``clone_model`` of the original with the producers' ``filters`` changed:
layer names, order and the outputs' contract stay, so everything downstream (fine-tuning, TFMOT,
export) treats it as the same SSD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.errors import EdgeError

# Layers through which channel c stays channel c (one input, per-channel or spatial-only maths).
_FOLLOWER_TYPES = ("BatchNormalization", "ReLU", "Activation", "DepthwiseConv2D", "ZeroPadding2D",
                   "Cropping2D", "UpSampling2D", "Dropout", "LeakyReLU", "PReLU")


@dataclass
class ChannelGroup:
    """One prunable set of channels: a producer's outputs, their followers, the consumers reading them."""

    producer: str
    channels: int
    followers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    spatial: tuple[int, int] = (0, 0)  # the producer's output height, width

    @property
    def name(self) -> str:
        return self.producer


def _layer_type(layer) -> str:
    return type(layer).__name__


def _is_pointwise_consumer(layer) -> bool:
    return _layer_type(layer) == "Conv2D" and int(getattr(layer, "groups", 1) or 1) == 1


def _outbound(model, layer) -> list:
    """The layers of ``model`` fed by ``layer`` (nodes of other models sharing the layer are ignored)."""
    members = {id(x) for x in model.layers}
    found = []
    for node in layer._outbound_nodes:  # noqa: SLF001 - tf-keras exposes the graph only this way
        target = node.outbound_layer
        if id(target) in members and target not in found:
            found.append(target)
    return found


def find_groups(model) -> list[ChannelGroup]:
    """Every prunable channel group of a tf-keras Functional ``model``, in layer order."""
    output_layers = {id(t._keras_history.layer) for t in model.outputs}  # noqa: SLF001
    groups = []
    for layer in model.layers:
        if not _is_pointwise_consumer(layer) or id(layer) in output_layers:
            continue
        followers, consumers, ok = [], [], True
        frontier = _outbound(model, layer)
        seen = set()
        while frontier and ok:
            nxt = frontier.pop(0)
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if _is_pointwise_consumer(nxt):
                consumers.append(nxt.name)
            elif _layer_type(nxt) in _FOLLOWER_TYPES and id(nxt) not in output_layers and \
                    (_layer_type(nxt) != "DepthwiseConv2D" or int(nxt.depth_multiplier) == 1):
                followers.append(nxt.name)
                frontier.extend(_outbound(model, nxt))
            else:
                ok = False
        if ok and consumers:
            shape = layer.output.shape
            groups.append(ChannelGroup(layer.name, int(shape[-1]), followers, consumers,
                                       (int(shape[1]), int(shape[2]))))
    return groups


# ---------------------------------------------------------------- importance

def channel_importance(model, groups: list[ChannelGroup], images, batch_size: int = 8) -> dict[str, dict]:
    """Per group: ``{"score": [C], "mean": {consumer: [C]}}`` measured on ``images`` (float32 NHWC, normalised).

    ``mean`` is each channel's mean activation at each consumer's input: what :func:`narrow_model`
    folds into the consumer's bias when the channel goes.
    """
    from convert.tf import import_keras

    keras = import_keras()
    taps = [(g.name, c) for g in groups for c in g.consumers]
    probe = keras.Model(model.inputs, [model.get_layer(c).input for _, c in taps])
    images = np.asarray(images, dtype=np.float32)
    if len(images) == 0:
        raise EdgeError("channel pruning needs images to measure channel importance")

    def batches():
        for start in range(0, len(images), batch_size):
            outs = probe(images[start:start + batch_size], training=False)
            yield [np.asarray(o, dtype=np.float64) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]

    # Two passes: means first, then the mean absolute deviation around them (E|x| alone would rank
    # a channel stuck at a large constant as important, and the bias fold removes such a channel).
    sums = [0.0] * len(taps)
    positions = [0] * len(taps)
    for outs in batches():
        for i, values in enumerate(outs):
            sums[i] = sums[i] + values.sum(axis=(0, 1, 2))
            positions[i] += values.shape[0] * values.shape[1] * values.shape[2]
    means = [s / n for s, n in zip(sums, positions)]
    deviations = [0.0] * len(taps)
    for outs in batches():
        for i, values in enumerate(outs):
            deviations[i] = deviations[i] + np.abs(values - means[i]).sum(axis=(0, 1, 2))
    result: dict[str, dict] = {g.name: {"score": np.zeros(g.channels), "mean": {}} for g in groups}
    for i, (group, consumer) in enumerate(taps):
        kernel = model.get_layer(consumer).get_weights()[0]  # [kh, kw, C_in, C_out]
        weight_norm = np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=(0, 1, 3)))
        result[group]["score"] += deviations[i] / positions[i] * weight_norm
        result[group]["mean"][consumer] = means[i]
    return result


# ---------------------------------------------------------------- the narrower model

def keep_indices(scores: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` highest-scoring channels, in their original order."""
    keep = int(max(1, min(keep, len(scores))))
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:keep])


def narrow_model(model, groups: list[ChannelGroup], kept: dict[str, np.ndarray],
                 means: dict[str, dict] | None = None):
    """A copy of ``model`` keeping, for each group in ``kept``, only those channel indices.

    ``means`` (from :func:`channel_importance`): the removed channels' mean activations are folded
    into each consumer's bias (or, for a bias-free consumer, its following BatchNormalization's moving
    mean), so a channel that only ever carried a constant is removed without changing the output.
    """
    from convert.tf import import_keras

    keras = import_keras()
    by_name = {g.name: g for g in groups}
    out_keep: dict[str, np.ndarray] = {}  # layer -> kept output channels
    in_keep: dict[str, np.ndarray] = {}  # layer -> kept input channels
    for name, idx in kept.items():
        group = by_name[name]
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == group.channels and np.array_equal(idx, np.arange(group.channels)):
            continue
        out_keep[group.producer] = idx
        for follower in group.followers:
            in_keep[follower] = out_keep[follower] = idx
        for consumer in group.consumers:
            in_keep[consumer] = idx

    def clone(layer):
        config = layer.get_config()
        if layer.name in out_keep and _layer_type(layer) == "Conv2D":
            config["filters"] = int(len(out_keep[layer.name]))
        return layer.__class__.from_config(config)

    narrow = keras.models.clone_model(model, clone_function=clone)
    corrections: dict[str, np.ndarray] = {}  # consumer -> bias correction from folded means
    if means:
        for name, idx in kept.items():
            group = by_name[name]
            removed = np.setdiff1d(np.arange(group.channels), idx)
            if not len(removed):
                continue
            for consumer in group.consumers:
                kernel = model.get_layer(consumer).get_weights()[0]
                mean = means[name]["mean"][consumer]
                delta = np.einsum("hwco,c->o", kernel[:, :, removed, :].astype(np.float64), mean[removed])
                corrections[consumer] = corrections.get(consumer, 0.0) + delta
    for layer in narrow.layers:
        weights = model.get_layer(layer.name).get_weights()
        if not weights:
            continue
        weights = _slice_weights(layer, weights, in_keep.get(layer.name), out_keep.get(layer.name))
        layer.set_weights(weights)
    for consumer, delta in corrections.items():
        if consumer in out_keep:  # the consumer is itself narrowed: only its kept outputs remain
            delta = delta[out_keep[consumer]]
        _fold_bias(narrow, consumer, delta)
    return narrow


def _slice_weights(layer, weights: list[np.ndarray], keep_in, keep_out) -> list[np.ndarray]:
    kind = _layer_type(layer)
    if kind == "Conv2D":
        kernel = weights[0]
        if keep_in is not None:
            kernel = kernel[:, :, keep_in, :]
        if keep_out is not None:
            kernel = kernel[..., keep_out]
        rest = [w[keep_out] if keep_out is not None else w for w in weights[1:]]
        return [kernel, *rest]
    if kind == "DepthwiseConv2D":
        kernel = weights[0][:, :, keep_in, :] if keep_in is not None else weights[0]
        rest = [w[keep_in] if keep_in is not None else w for w in weights[1:]]
        return [kernel, *rest]
    if keep_out is not None and kind in ("BatchNormalization", "PReLU"):
        return [w[..., keep_out] for w in weights]
    return weights


def _fold_bias(model, consumer: str, delta: np.ndarray) -> None:
    layer = model.get_layer(consumer)
    weights = layer.get_weights()
    if layer.use_bias:
        weights[1] = (weights[1] + delta).astype(weights[1].dtype)
        layer.set_weights(weights)
        return
    # No bias: BatchNormalization right after subtracts its moving mean from the conv output, so
    # adding delta to the output equals lowering the moving mean by delta.
    followers = [n.outbound_layer for n in layer._outbound_nodes  # noqa: SLF001
                 if _layer_type(n.outbound_layer) == "BatchNormalization"]
    if len(followers) != 1:
        return  # nowhere exact to put it; fine-tuning absorbs the shift
    bn = followers[0]
    values = bn.get_weights()
    names = [w.name.split("/")[-1].split(":")[0] for w in bn.weights]
    mean_index = names.index("moving_mean")
    values[mean_index] = (values[mean_index] - delta).astype(values[mean_index].dtype)
    bn.set_weights(values)


# ---------------------------------------------------------------- counting

def count_params(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def layer_macs(layer) -> int:
    """Multiply-accumulates of one conv layer per image (0 for everything else)."""
    kind = _layer_type(layer)
    if kind not in ("Conv2D", "DepthwiseConv2D"):
        return 0
    out = layer.output.shape
    kh, kw = layer.kernel_size
    positions = int(out[1]) * int(out[2])
    if kind == "DepthwiseConv2D":
        return positions * kh * kw * int(out[-1])
    return positions * kh * kw * int(layer.input.shape[-1]) * int(out[-1])


def count_macs(model) -> int:
    return int(sum(layer_macs(layer) for layer in model.layers))


def group_macs(model, group: ChannelGroup) -> int:
    """MACs that scale with this group's width: its producer, followers and consumers."""
    return int(sum(layer_macs(model.get_layer(n)) for n in [group.producer, *group.followers, *group.consumers]))
