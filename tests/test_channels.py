"""Channel pruning: which channels can go, that removing them is exact where it should be, and the
whole ``edge convert --prune-channels`` path to a smaller int8 model that still detects.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _keras():
    from convert.tf import import_keras

    return import_keras()


def _toy_model():
    """conv(8) -> BN -> ReLU6 -> depthwise -> conv(4): one group; plus a residual branch that ties."""
    keras = _keras()
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="expand")(inputs)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(6.0, name="expand_relu")(x)
    # "valid" padding: a constant channel stays exactly constant (zero padding would vary its border).
    x = keras.layers.DepthwiseConv2D(3, padding="valid", name="dw")(x)
    y = keras.layers.Conv2D(4, 1, name="project")(x)
    z = keras.layers.Cropping2D(1, name="crop")(keras.layers.Conv2D(4, 1, name="side")(inputs))
    out = keras.layers.Add(name="add")([y, z])
    model = keras.Model(inputs, keras.layers.Reshape((-1, 4), name="flat")(out))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and layer.name != "expand_bn":
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in weights])
    bn = model.get_layer("expand_bn")
    bn.set_weights([np.ones(8, np.float32), rng.uniform(0.5, 2.0, 8).astype(np.float32),
                    np.zeros(8, np.float32), np.ones(8, np.float32)])
    return model


def test_groups_stop_at_residual_adds_and_outputs():
    from convert import channels

    model = _toy_model()
    groups = channels.find_groups(model)
    assert [(g.producer, g.channels, g.consumers) for g in groups] == [("expand", 8, ["project"])]
    assert groups[0].followers == ["expand_bn", "expand_relu", "dw"]  # project and side feed the Add: tied


def test_removing_constant_channels_is_exact_with_the_mean_fold():
    from convert import channels

    model = _toy_model()
    expand = model.get_layer("expand")
    kernel = expand.get_weights()[0]
    kernel[..., [1, 5]] = 0.0  # channels 1 and 5 now carry relu6(beta), a constant, through the depthwise
    expand.set_weights([kernel])
    x = np.random.default_rng(1).uniform(-1, 1, (6, 12, 12, 3)).astype(np.float32)
    groups = channels.find_groups(model)
    importance = channels.channel_importance(model, groups, x)
    score = importance["expand"]["score"]
    assert score[1] < 1e-6 and score[5] < 1e-6 and np.delete(score, [1, 5]).min() > 1e-3, score
    kept = channels.keep_indices(score, 6)
    assert list(kept) == [0, 2, 3, 4, 6, 7]
    reference = np.asarray(model(x))
    folded = np.asarray(channels.narrow_model(model, groups, {"expand": kept}, importance)(x))
    unfolded = np.asarray(channels.narrow_model(model, groups, {"expand": kept})(x))
    assert np.abs(folded - reference).max() < 1e-5
    assert np.abs(unfolded - reference).max() > 0.1  # without the fold the constant is lost
    narrow = channels.narrow_model(model, groups, {"expand": kept}, importance)
    assert narrow.get_layer("expand").filters == 6
    assert narrow.get_layer("dw").get_weights()[0].shape[2] == 6
    assert narrow.get_layer("project").get_weights()[0].shape[2] == 6
    assert channels.count_params(narrow) < channels.count_params(model)
    assert channels.count_macs(narrow) < channels.count_macs(model)


def _ssd():
    from convert.config import SSDConfig
    from convert.model import build_ssd

    return build_ssd(SSDConfig.create(["a", "b"], input_size=96, width=0.35))


def test_ssd_groups_are_the_expansion_and_head_channels():
    from convert import channels

    model = _ssd()
    groups = {g.producer: g for g in channels.find_groups(model)}
    for block in range(1, 17):
        assert f"block_{block}_expand" in groups, block
    # block 13's expansion is also the stride-16 feature map: the predictors read it too.
    assert set(groups["block_13_expand"].consumers) == {"block_13_project", "box_0_pw", "class_0_pw"}
    assert "Conv_1" in groups and "extra_0_reduce_conv" in groups
    # Residual stages' projections feed an Add: never a group.
    assert "block_2_project" not in groups and "block_15_project" not in groups
    assert all("add" not in f for g in groups.values() for f in g.followers)


def test_ratio_zero_reproduces_the_model_and_a_ratio_narrows_it():
    from convert import channel_plan, channels

    model = _ssd()
    # Random BN statistics so that activations differ per channel (an untrained net's are near zero).
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
    images = rng.uniform(-1, 1, (8, 96, 96, 3)).astype(np.float32)
    same = channel_plan.prune_channels(model, images, 0.0, None, runs=5)
    for a, b in zip(model(images[:4], training=False), same.model(images[:4], training=False)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-5
    assert same.record["channels"]["kept"] == same.record["channels"]["prunable"]

    assert same.record["int8_network"] is None  # nothing removed: nothing converted or timed

    # The chooser on a latency table (the CLI test below measures a real one): ms per channel from
    # each group's MACs, so it is deterministic here.
    groups = channels.find_groups(model)
    importance = channels.channel_importance(model, groups, images)
    table = channel_plan.LatencyTable(dense_ms=10.0, ms_per_channel={
        g.name: 1e-7 * channels.group_macs(model, g) / g.channels for g in groups})
    widths = channel_plan.choose_widths(groups, importance, table, remove_fraction=0.5)
    total = sum(g.channels for g in groups)
    removed = total - sum(widths.values())
    assert 0.5 * total <= removed < 0.5 * total + channel_plan.UNIT
    # No group much narrower than the network: at half the channels, none under 0.8 x 0.5 of its own.
    floor = channel_plan.keep_floor(sum(widths.values()) / total)
    assert floor == pytest.approx(0.4, abs=0.01)
    for g in groups:
        assert channel_plan._min_keep(g.channels, floor) <= widths[g.name] <= g.channels
    kept = {g.name: channels.keep_indices(importance[g.name]["score"], widths[g.name]) for g in groups}
    narrow = channels.narrow_model(model, groups, kept, importance)
    for g in groups:
        assert narrow.get_layer(g.name).filters == widths[g.name]
    assert channels.count_params(narrow) < 0.75 * channels.count_params(model)
    assert channels.count_macs(narrow) < 0.75 * channels.count_macs(model)
    # A latency target stops at the predicted time, removing where a channel buys the most.
    floor = table.predict({g.name: g.channels - channel_plan._min_keep(g.channels) for g in groups})
    target = (10.0 + floor) / 2
    by_latency = channel_plan.choose_widths(groups, importance, table, latency_ms=target)
    predicted = table.predict({g.name: g.channels - by_latency[g.name] for g in groups})
    assert floor < predicted <= target
    latency_floor = channel_plan.keep_floor(sum(by_latency.values()) / total)
    assert all(channel_plan._min_keep(g.channels, latency_floor) <= by_latency[g.name] for g in groups)


# ---------------------------------------------------------------- edge convert --prune-channels

def _convert(capsys, *argv):
    from edge.cli import main

    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


# Seven TensorFlow conversions (float, dense int8, dense and three probe networks, the narrowed
# network, the output): ~5 min on 2 quiet cores, far more under load.
@pytest.mark.timeout(2400)
def test_convert_prunes_channels_to_a_smaller_int8_model_that_detects(trained_run, tmp_path, capsys):
    """On the session's tiny trained SSD (tests/conftest.py)."""
    run_dir, train_dir, val_dir = trained_run
    out = tmp_path / "pruned.tflite"
    code, stdout, err = _convert(capsys, run_dir, "-o", out, "--data", train_dir,
                                 "--val", val_dir, "--sparsity", "0", "--prune-channels", "0.5",
                                 "--channel-steps", "40", "--calib-images", "16")
    assert code == 0, err
    report = json.loads(out.with_name("pruned.report.json").read_text())
    record = report["channel_pruning"]
    assert record["channels"]["removed_fraction"] >= 0.5
    assert record["distillation"]["teacher"] == "the unpruned model"
    assert record["fine_tune"]["steps"] == 40
    # At the rate the run was trained at (conftest.trained_run), not the small sparsity/QAT rate.
    assert record["fine_tune"]["learning_rate"] == json.loads((run_dir / "config.json").read_text())[
        "training"]["learning_rate"]
    dense, pruned = report["models"]["int8 dense"], report["models"][report["output_model"]]
    assert report["output_model"] == "int8-ptq channel-pruned"
    assert pruned["stats"]["size_bytes"] < 0.8 * dense["stats"]["size_bytes"]
    assert b"TFLite_Detection_PostProcess" in out.read_bytes()  # the custom op's name, in the operator codes

    from edge.cli import main

    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "channels  pruned:" in shown and "          widths " in shown

    image = sorted((val_dir / "JPEGImages").glob("*.jpg"))[0]
    assert main(["detect", str(out), str(image), "--score", "0.1", "--out", str(tmp_path / "detected")]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "detected" / "detections.json").read_text())
    assert results, "the pruned model must find the shapes it was fine-tuned on"


@pytest.mark.parametrize("argv, expected", [
    (("--prune-channels", "1.0"), "--prune-channels 1.0: must be in [0, 1)"),
    (("--prune-channels", "-0.2"), "--prune-channels -0.2: must be in [0, 1)"),
    (("--latency-target", "0"), "--latency-target 0.0: must be between 0 and 1"),
    (("--latency-target", "1.5"), "--latency-target 1.5: must be between 0 and 1"),
    (("--prune-channels", "0.3", "--distill-weight", "-1"), "--distill-weight -1.0: must be 0 or more"),
    (("--prune-channels", "0.3", "--channel-lr", "0"), "--channel-lr 0.0: must be between 0 and 1"),
])
def test_bad_channel_options_one_line_exit_2_nothing_written(argv, expected, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    source = tmp_path / "run"
    source.mkdir()
    code, _, err = _convert(capsys, source, "-o", out, *argv)
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not any(tmp_path.glob("m*")), list(tmp_path.iterdir())


def test_od_api_graph_cannot_be_channel_pruned(odapi_frozen_graph, images_dir, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    code, _, err = _convert(capsys, odapi_frozen_graph, "-o", out, "--calib", images_dir, "--prune-channels", "0.3")
    assert code == 2 and len(err) == 1, err
    assert "--prune-channels: a OD API frozen graph has no trainable weights" in err[0]
    assert not out.exists()
