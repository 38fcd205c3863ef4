"""FrameBuffer: what lands in the input tensor, for every input kind, size and channel count."""

import cv2
import numpy as np
import pytest

from edge.detector.buffer import BadFrameError, FrameBuffer, InputEncoding
from edge.contract.modelinfo import Normalization


def _reference_rgb(frame, size):
    return cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)


@pytest.fixture
def frame():
    return np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)


def test_uint8_model_with_inverse_quantization_takes_raw_pixels(frame):
    tensor = np.zeros((1, 64, 48, 3), np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (1 / 128, 128))  # TF OD API exports
    assert buffer.encoding.kind == "raw"
    buffer.write(frame)
    np.testing.assert_array_equal(tensor[0], _reference_rgb(frame, (48, 64)))


def test_int8_input_is_pixels_minus_128(frame):
    tensor = np.zeros((1, 64, 48, 3), np.int8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.int8, (1 / 128, 0))
    assert buffer.encoding.kind == "xor"
    buffer.write(frame)
    expected = _reference_rgb(frame, (48, 64)).astype(np.int16) - 128
    np.testing.assert_array_equal(tensor[0].astype(np.int16), expected)


@pytest.mark.parametrize("mean,std", [(127.5, 127.5), (0.0, 255.0), (0.0, 1.0)])
def test_float_input_uses_the_declared_normalisation(frame, mean, std):
    tensor = np.zeros((1, 64, 48, 3), np.float32)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.float32, (0.0, 0), Normalization(mean, std))
    buffer.write(frame)
    expected = (_reference_rgb(frame, (48, 64)).astype(np.float32) - mean) / std
    np.testing.assert_allclose(tensor[0], expected, rtol=1e-6, atol=1e-5)


def test_uint8_with_other_quantization_is_requantized(frame):
    tensor = np.zeros((1, 64, 48, 3), np.uint8)
    scale, zero_point = 0.01, 100  # real = (q - 100) * 0.01, input wants [-1, 1]
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (scale, zero_point))
    assert buffer.encoding.kind == "affine"
    buffer.write(frame)
    real = _reference_rgb(frame, (48, 64)).astype(np.float64) / 127.5 - 1.0
    expected = np.clip(np.round(real / scale + zero_point), 0, 255)
    assert np.abs(tensor[0].astype(np.float64) - expected).max() <= 1.0


def test_gray_and_bgra_frames_are_converted(frame):
    tensor = np.zeros((1, 64, 48, 3), np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0))
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    buffer.write(bgra)
    np.testing.assert_array_equal(tensor[0], _reference_rgb(frame, (48, 64)))
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    for variant in (gray, gray[:, :, None]):
        buffer.write(variant)
        resized = cv2.resize(gray, (48, 64), interpolation=cv2.INTER_LINEAR)
        for channel in range(3):
            np.testing.assert_array_equal(tensor[0, :, :, channel], resized)


def test_letterbox_keeps_aspect_pads_and_maps_boxes_back():
    tensor = np.full((1, 100, 100, 3), 7, np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0), mode="letterbox", pad_pixel=0)
    frame = np.zeros((200, 400, 3), np.uint8)
    frame[50:150, 100:300] = 255  # a white block, x 100..300, y 50..150
    buffer.write(frame)
    assert buffer._fit == (25, 0, 75, 100)  # 400x200 -> 100x50, centred vertically
    assert (tensor[0, :25] == 0).all() and (tensor[0, 75:] == 0).all()
    ys, xs = np.nonzero(tensor[0, :, :, 0] > 127)
    box_norm = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 100.0  # xyxy normalised
    mul_x, add_x, mul_y, add_y = buffer.box_transform
    mapped = [box_norm[0] * mul_x + add_x, box_norm[1] * mul_y + add_y,
              box_norm[2] * mul_x + add_x, box_norm[3] * mul_y + add_y]
    np.testing.assert_allclose(mapped, [100, 50, 300, 150], atol=4)


def test_frame_size_change_reallocates_only_the_resize_buffer(frame):
    import tracemalloc

    tensor = np.zeros((1, 64, 64, 3), np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0), mode="letterbox")
    buffer.write(frame)
    taller = np.zeros((300, 100, 3), np.uint8)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buffer.write(taller)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    fit_bytes = buffer._resized.nbytes
    assert buffer._resized.shape == (64, 21, 3)
    assert grown <= fit_bytes + 2048, f"grew {grown} B for a {fit_bytes} B resize buffer"
    # stretch: every frame size resizes to the model size, nothing to reallocate
    stretch = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0))
    stretch.write(frame)
    resized_before = stretch._resized
    stretch.write(taller)
    assert stretch._resized is resized_before


def test_bad_frames_are_refused_with_a_clear_error():
    tensor = np.zeros((1, 8, 8, 3), np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0))
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), None):
        with pytest.raises(BadFrameError):
            buffer.write(bad)


def test_encoding_of_google_ssd_quantization_is_within_one_lsb():
    enc = InputEncoding.for_tensor(np.uint8, (0.0078125, 128), Normalization())
    assert enc.kind == "raw"
    enc = InputEncoding.for_tensor(np.uint8, (0.0078125, 100), Normalization())
    assert enc.kind == "affine"


_INPUTS = {  # tensor dtype, quantization, colour order: one of each encoding kind
    "raw-rgb": (np.uint8, (1 / 128, 128), "RGB"),
    "raw-bgr": (np.uint8, (0.0, 0), "BGR"),
    "xor": (np.int8, (1 / 128, 0), "RGB"),
    "affine-uint8": (np.uint8, (0.01, 100), "RGB"),
    "affine-float-bgr": (np.float32, (0.0, 0), "BGR"),
}


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("kind", list(_INPUTS))
def test_resize_elsewhere_then_write_resized_equals_write(kind, mode):
    """The capture thread's half (resize) + the detector's half (write_resized) == write(), bit for bit."""
    dtype, quantization, color = _INPUTS[kind]
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
              [(120, 200, 3), (90, 60), (120, 200, 4), (33, 47, 1), (120, 200, 3)]]
    whole = np.zeros((1, 64, 48, 3), dtype)
    split = np.zeros_like(whole)
    by_write = FrameBuffer(lambda: whole, whole.shape, dtype, quantization, color=color, mode=mode)
    by_halves = FrameBuffer(lambda: split, split.shape, dtype, quantization, color=color, mode=mode)
    resized = None
    for frame in frames:
        by_write.write(frame)
        resized = by_halves.resize(frame, resized)
        by_halves.write_resized(resized, frame.shape)
        np.testing.assert_array_equal(split, whole)
        assert by_halves.box_transform == by_write.box_transform
        assert by_halves.frame_size == by_write.frame_size == frame.shape[:2]


def test_resize_reuses_its_destination_and_refuses_bad_frames():
    tensor = np.zeros((1, 64, 48, 3), np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0), mode="letterbox")
    frame = np.full((120, 200, 3), 9, np.uint8)
    first = buffer.resize(frame)
    assert first.shape == (29, 48, 3)  # the letterboxed part only: 200x120 scaled to 48 wide
    assert buffer.resize(frame, first) is first
    assert buffer.resize(frame[:, :100], first).shape == (58, 48, 3)  # a new size: a new array
    with pytest.raises(BadFrameError):
        buffer.resize(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(BadFrameError, match="does not fit"):
        buffer.write_resized(first, (60, 200, 3))


def test_letterbox_frames_of_two_aspect_ratios_taking_turns_allocate_nothing():
    """Two cameras of different aspect ratios through one detector (edge run --config): each fitted
    shape gets its resize buffer once, and switching between them allocates nothing model-sized."""
    import tracemalloc

    tensor = np.zeros((1, 300, 300, 3), np.uint8)
    buffer = FrameBuffer(lambda: tensor, tensor.shape, np.uint8, (0.0, 0), mode="letterbox")
    wide = np.full((360, 640, 3), 90, np.uint8)
    tall = np.full((480, 360, 3), 160, np.uint8)
    for frame in (wide, tall):
        buffer.write(frame)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            buffer.write(wide)
            buffer.write(tall)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < 16 * 1024, f"{peak - start} B at peak: a buffer per switch (a 300x300 fit is 270 KB)"
    assert current - start < 1024
    buffer.write(tall)
    assert tensor[0, 150, 150, 0] == 160  # still the frame's pixels, in the middle of the letterbox
