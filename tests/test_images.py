"""edge.images: the one image reader. Every bad file is made here, in tmp_path. No TensorFlow."""

from __future__ import annotations

import os
import resource
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge.images as images
from edge.errors import EdgeError
from edge.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, image_size, list_images,
                         read_image)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR declares ``width`` x ``height`` RGB pixels."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00")) + _chunk(b"IEND", b""))


def _photo(width=64, height=48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _no_decode(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imread must not be reached for this file")

    monkeypatch.setattr(images.cv2, "imread", refuse)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tif", ".ppm", ".pgm"])
def test_reads_every_listed_format_as_bgr_uint8_and_knows_its_size(tmp_path, ext):
    path = tmp_path / f"a{ext}"
    source = _photo(40, 30)
    assert cv2.imwrite(str(path), source[:, :, 0] if ext == ".pgm" else source)
    assert image_size(path) == (40, 30)  # from the header, nothing decoded
    image = read_image(path)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    if ext in (".png", ".bmp", ".tif", ".ppm"):  # lossless
        np.testing.assert_array_equal(image, source)


def test_grey_alpha_and_16_bit_images_come_back_as_bgr_uint8(tmp_path):
    base = _photo(20, 10)
    cv2.imwrite(str(tmp_path / "grey.png"), base[:, :, 0])
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([base, base[:, :, :1]]))
    cv2.imwrite(str(tmp_path / "deep.png"), base.astype(np.uint16) * 16)  # 12-bit data in 16 bits
    for name in ("grey.png", "alpha.png", "deep.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (10, 20, 3) and image.dtype == np.uint8, name
    np.testing.assert_array_equal(read_image(tmp_path / "alpha.png"), base)
    assert read_image(tmp_path / "deep.png").max() < 16  # OpenCV's standard conversion: >> 8
    assert read_image(tmp_path / "deep.png", stretch_16bit=True).max() == 255


def test_png_declaring_100000_squared_pixels_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    assert bomb.stat().st_size < 80
    _no_decode(monkeypatch)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        read_image(bomb)
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: no 30 GB buffer
    message = str(caught.value)
    assert message.startswith(str(bomb)) and "\n" not in message
    assert "100000x100000" in message and "limit" in message
    assert isinstance(caught.value, EdgeError) and caught.value.path == str(bomb)


def test_max_pixels_is_the_limit(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _photo(40, 30))
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageError, match="40x30 pixels"):
        read_image(path, max_pixels=1199)
    assert DEFAULT_MAX_PIXELS >= 50_000_000


def test_opencv_raising_instead_of_returning_none_is_one_line(tmp_path, monkeypatch):
    # Real OpenCV 5: with our limit lifted, its own CV_IO_MAX_IMAGE_PIXELS check raises cv2.error.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(ImageError, match="unreadable image") as caught:
        read_image(bomb, max_pixels=None)
    assert "\n" not in str(caught.value)

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _photo())

    def raising(*args, **kwargs):
        raise cv2.error("OpenCV(5.0.0) loadsave.cpp:79: error: (-215:Assertion failed)\nsecond line")

    monkeypatch.setattr(images.cv2, "imread", raising)
    with pytest.raises(ImageError, match=r"good\.png: unreadable image \(decoder error: .*Assertion failed\)\)$"):
        read_image(good)


def test_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)
    outcome = {}

    def attempt():
        try:
            read_image(fifo)
        except ImageError as exc:
            outcome["error"] = str(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # it blocked in open(): unblock it before failing
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("read_image opened the FIFO for reading and blocked")
    assert "FIFO" in outcome["error"] and outcome["error"].startswith(str(fifo))
    assert list_images(tmp_path) == []  # never listed either


@pytest.mark.parametrize("case, expected", [
    ("missing", "not found"),
    ("directory", "is a directory"),
    ("empty", "empty"),
    ("text", "unreadable image"),
    ("png_cut_in_header", "truncated PNG header"),
    ("png_cut_in_data", "unreadable image"),
    ("jpeg_cut_in_header", "truncated JPEG"),
    ("jpeg_cut_in_data", "truncated JPEG (no end-of-image marker)"),
    ("jpeg_without_frame", "no frame header"),
    ("bmp_cut", "truncated BMP header"),
    ("tiff_bad_directory", "truncated TIFF"),
    ("webp_cut", "truncated WebP header"),
    ("pnm_cut", "truncated P6"),
    ("zero_size", "declares 0x48 pixels"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, case, expected):
    path = tmp_path / f"{case}.img"
    photo = _photo()
    ok, png = cv2.imencode(".png", photo)
    ok, jpeg = cv2.imencode(".jpg", photo)
    ok, bmp = cv2.imencode(".bmp", photo)
    ok, webp = cv2.imencode(".webp", photo)
    ok, ppm = cv2.imencode(".ppm", photo)
    png, jpeg, bmp, webp, ppm = (a.tobytes() for a in (png, jpeg, bmp, webp, ppm))
    contents = {
        "empty": b"",
        "text": b"this is a text file, not an image\n",
        "png_cut_in_header": png[:20],
        "png_cut_in_data": png[: len(png) // 2],
        "jpeg_cut_in_header": jpeg[:30],
        "jpeg_cut_in_data": jpeg[: len(jpeg) // 2],
        "jpeg_without_frame": b"\xff\xd8\xff\xda\x00\x02" + b"\x00" * 64 + b"\xff\xd9",
        "bmp_cut": bmp[:20],
        "tiff_bad_directory": b"II*\x00" + struct.pack("<I", 1 << 30) + b"\x00" * 32,
        "webp_cut": webp[:24],
        "pnm_cut": ppm[:4],
        "zero_size": png[:16] + struct.pack(">II", 0, 48) + png[24:],
    }
    if case == "directory":
        path.mkdir()
    elif case != "missing":
        path.write_bytes(contents[case])
    with pytest.raises(ImageError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert expected in message, message


def test_absurd_declared_sizes_are_refused_for_every_header_format(tmp_path, monkeypatch):
    _no_decode(monkeypatch)
    ok, jpeg = cv2.imencode(".jpg", _photo())
    jpeg = bytearray(jpeg.tobytes())
    sof = next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    bmp = bytearray(cv2.imencode(".bmp", _photo())[1].tobytes())
    bmp[18:26] = struct.pack("<ii", 100_000, -100_000)  # top-down rows: negative height
    gif = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 32
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (99_999).to_bytes(3, "little") * 2
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
            + struct.pack("<HHII", 256, 4, 1, 200_000) + struct.pack("<HHII", 257, 4, 1, 200_000) + b"\x00" * 4)
    pnm = b"P6\n# a comment\n90000 90000\n255\n" + b"\x00" * 16
    for name, data in {"a.jpg": bytes(jpeg), "a.bmp": bytes(bmp), "a.gif": gif, "a.webp": webp,
                       "a.tif": tiff, "a.ppm": pnm, "a.png": _png_claiming(1 << 16, 1 << 16)}.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageError, match="over the 64-megapixel limit"):
            read_image(path)


def test_file_bigger_than_any_image_within_the_limit_is_refused_from_its_size(tmp_path, monkeypatch):
    _no_decode(monkeypatch)
    path = tmp_path / "huge.png"
    with open(path, "wb") as handle:
        handle.write(_png_claiming(10, 10))
        handle.truncate(40_000_000)  # sparse: no disk used
    with pytest.raises(ImageError, match="too big"):
        read_image(path, max_pixels=100_000)


def test_unknown_format_is_refused_unless_opencv_can_read_it(tmp_path):
    hdr = tmp_path / "a.hdr"  # Radiance HDR: no header reader here, OpenCV decodes it
    assert cv2.imwrite(str(hdr), _photo(14, 8).astype(np.float32))
    assert image_size(hdr) is None
    assert read_image(hdr).shape == (8, 14, 3)
    with pytest.raises(ImageError, match="14x8 pixels, over"):  # then the limit is checked after decoding
        read_image(hdr, max_pixels=100)
    junk = tmp_path / "a.xyz"
    junk.write_bytes(b"\x00\x01 some binary blob" * 10)
    with pytest.raises(ImageError, match="not a format OpenCV can decode"):
        read_image(junk)


def test_list_images_regular_files_only_sorted_folder_glob_or_file(tmp_path):
    cv2.imwrite(str(tmp_path / "b.png"), _photo())
    cv2.imwrite(str(tmp_path / "a.JPG"), _photo())
    cv2.imwrite(str(tmp_path / "c.pgm"), _photo()[:, :, 0])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "dir.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.bmp").symlink_to(tmp_path / "b.png")
    (tmp_path / "dangling.bmp").symlink_to(tmp_path / "gone.png")
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "c.pgm", "link.bmp"]
    assert [p.name for p in list_images(str(tmp_path / "*.p*"))] == ["b.png", "c.pgm"]
    assert list_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    assert list_images(tmp_path / "notes.txt") == []
    assert list_images(tmp_path / "missing") == []
    assert list_images(str(tmp_path / "*.none")) == []
    assert {".ppm", ".pgm", ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} <= set(IMAGE_EXTENSIONS)


def test_board_side_module_needs_no_tensorflow():
    import subprocess
    import sys

    code = "import sys, edge.images; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
