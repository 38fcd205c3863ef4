import numpy as np
import pytest

from edge.contract.anchors import AnchorConfig, generate_anchors, ssd_feature_map_sizes
from edge.contract.boxcoding import BoxCoderScales, BoxDecoder, decode_boxes, encode_boxes
from edge.errors import EdgeError


def test_od_api_300px_config_gives_1917_anchors():
    config = AnchorConfig.for_input(300)
    assert config.feature_map_sizes == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert config.anchors_per_location() == [3, 6, 6, 6, 6, 6]
    anchors = generate_anchors(config)
    assert anchors.shape == (1917, 4) == (config.num_anchors, 4)


def test_lowest_layer_boxes_and_scales_follow_create_ssd_anchors():
    anchors = generate_anchors(AnchorConfig.for_input(300))
    # first cell of the 19x19 layer: (0.1, 1.0), (0.2, 2.0), (0.2, 0.5)
    np.testing.assert_allclose(anchors[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(anchors[1, 2:], [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(anchors[2, 2:], [0.2 * np.sqrt(2), 0.2 / np.sqrt(2)], rtol=1e-6)
    # the last anchor: the 1x1 layer's interpolated box sqrt(0.95 * 1.0)
    np.testing.assert_allclose(anchors[-1], [0.5, 0.5, np.sqrt(0.95), np.sqrt(0.95)], rtol=1e-6)
    # cells are ordered row-major, boxes within a cell last
    np.testing.assert_allclose(anchors[3, :2], [0.5 / 19, 1.5 / 19], rtol=1e-6)


def test_feature_map_sizes_for_other_inputs():
    assert ssd_feature_map_sizes(320) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert ssd_feature_map_sizes(160) == [(10, 10), (5, 5), (3, 3), (2, 2), (1, 1), (1, 1)]


def test_non_square_input_keeps_anchors_square_in_pixels():
    config = AnchorConfig(feature_map_sizes=[(4, 8)], input_size=(200, 400), reduce_boxes_in_lowest_layer=False,
                          aspect_ratios=(1.0,), interpolated_scale_aspect_ratio=0.0, scales=[0.5])
    anchors = generate_anchors(config)
    h_pixels, w_pixels = anchors[0, 2] * 200, anchors[0, 3] * 400
    assert h_pixels == pytest.approx(w_pixels)


def test_config_round_trips_and_rejects_nonsense():
    config = AnchorConfig.for_input(320)
    again = AnchorConfig.from_dict(config.to_dict())
    np.testing.assert_array_equal(generate_anchors(again), generate_anchors(config))
    with pytest.raises(EdgeError, match="anchor config"):
        AnchorConfig.from_dict({"feature_map_sizes": [(2, 2)], "bogus": 1})


def test_encode_decode_round_trip_and_allocation_free_decoder():
    rng = np.random.default_rng(0)
    anchors = generate_anchors(AnchorConfig.for_input(300))
    y0, x0 = rng.uniform(0, 0.6, (2, len(anchors)))
    boxes = np.stack([y0, x0, y0 + rng.uniform(0.05, 0.4, len(anchors)), x0 + rng.uniform(0.05, 0.4, len(anchors))], 1)
    encodings = encode_boxes(boxes, anchors)
    np.testing.assert_allclose(decode_boxes(encodings, anchors), boxes, atol=1e-5)
    out = np.empty_like(boxes, dtype=np.float32)
    decoder = BoxDecoder(anchors)
    assert decoder.decode(encodings.astype(np.float32), out) is out
    np.testing.assert_allclose(out, boxes, atol=1e-5)


def test_box_coder_scales_are_the_faster_rcnn_ones():
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    box = np.array([[0.45, 0.3, 0.65, 0.9]], np.float32)  # centre (0.55, 0.6), h 0.2, w 0.6
    ty, tx, th, tw = encode_boxes(box, anchors)[0]
    assert ty == pytest.approx((0.55 - 0.5) / 0.2 * 10)
    assert tx == pytest.approx((0.6 - 0.5) / 0.4 * 10)
    assert th == pytest.approx(np.log(0.2 / 0.2) * 5, abs=1e-6)
    assert tw == pytest.approx(np.log(0.6 / 0.4) * 5)
    unit = BoxCoderScales(1, 1, 1, 1)
    assert encode_boxes(box, anchors, unit)[0][0] == pytest.approx(0.25)
