"""The one image-file reader of the project: ``read_image`` and ``list_images``.

Every still image (``edge detect``, folder sources, calibration, training) is read here, so the
guards are written once:

* only regular files are opened (a FIFO, device or directory is refused from ``stat`` alone: opening
  a FIFO for reading would block until someone writes to it);
* empty files, and files too big for any image within the pixel limit, are refused from their size;
* the width and height the header declares are read *before* decoding (PNG, JPEG, BMP, GIF, WebP,
  TIFF, PNM/PAM/PFM, Sun raster) and refused over ``max_pixels``: a 69-byte PNG claiming
  100000 x 100000 pixels costs a few bytes of reading, not a 30 GB allocation;
* a header that ends early (truncated file), a JPEG without its end-of-image marker, and whatever the
  decoder refuses (OpenCV returns ``None``, or in OpenCV 5 raises ``cv2.error`` for some files) become
  one :class:`ImageError` line naming the file.

Formats without a header reader here are decoded only when OpenCV has a reader for them
(``cv2.haveImageReader``); OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2^30 by default) and the
file-size bound cover them before decoding, the pixel limit after.

Board side: numpy and OpenCV only.
"""

from __future__ import annotations

import glob
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError, first_line

#: File name suffixes (lower case) treated as images by folder and glob listings.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: Default cap on width * height: 64 megapixels (a BGR copy is 192 MB).
DEFAULT_MAX_PIXELS = 64_000_000

_GLOB_CHARS = "*?["
_HEADER_BYTES = 4096  # enough for every fixed header read here (PNM comments included)
_MAX_JPEG_SEGMENTS = 10_000
_MAX_TIFF_ENTRIES = 4096
_JPEG_EOI_WINDOW = 1 << 16  # the end-of-image marker must be in the file's last 64 KiB
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


class ImageError(EdgeError):
    """An image file that cannot be used; ``str()`` is one line ``"<file>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class _Unreadable(Exception):
    """Internal: a header that is malformed or ends early (the reason is the message)."""


# ---- listing ------------------------------------------------------------------------------------


def is_glob(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` has glob wildcards (``*``, ``?``, ``[``)."""
    return any(ch in str(spec) for ch in _GLOB_CHARS)


def has_image_extension(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder_or_glob: str | os.PathLike) -> list[Path]:
    """Image files (by :data:`IMAGE_EXTENSIONS`) directly in a folder, or matching a glob, sorted.

    Only regular files (or symlinks to them) are listed: directories, FIFOs, sockets and devices
    named ``*.jpg`` are left out. A path to one image file gives ``[path]``; anything else (a missing
    path, a video file, a glob matching nothing) gives ``[]``. Not recursive.
    """
    spec = os.fspath(folder_or_glob)
    path = Path(spec)
    if _is_mode(path, stat.S_ISDIR):
        try:
            candidates = list(path.iterdir())
        except OSError:  # unreadable folder: nothing listed
            candidates = []
    elif is_glob(spec):
        candidates = [Path(p) for p in glob.glob(spec)]
    else:
        candidates = [path]
    return sorted(p for p in candidates if has_image_extension(p) and _is_mode(p, stat.S_ISREG))


def _is_mode(path: Path, test) -> bool:
    """``test(os.stat(path).st_mode)``; False for missing paths and names no file system takes."""
    try:
        return test(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


# ---- reading ------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               stretch_16bit: bool = False) -> np.ndarray:
    """The image at ``path`` as a BGR uint8 ``[H, W, 3]`` array; :class:`ImageError` if it cannot be.

    ``max_pixels``: refuse images whose declared (or, for formats without a header reader here,
    decoded) width * height exceeds it; ``None`` leaves only OpenCV's own limit. Grey and alpha
    images come back as 3-channel BGR. Deeper images (16-bit PNG/TIFF, float) are converted to 8
    bits the standard OpenCV way (``>> 8``); ``stretch_16bit`` scales them instead so that their
    brightest pixel becomes 255 (useful for 10/12-bit sensor dumps stored in 16 bits).
    """
    name = os.fspath(path)
    if max_pixels is not None and (isinstance(max_pixels, bool) or int(max_pixels) < 1):
        raise ValueError(f"max_pixels must be a positive int or None, not {max_pixels!r}")
    st = _stat_regular(name)
    if st.st_size == 0:
        raise ImageError(name, "image file is empty")
    max_bytes = _max_file_bytes(max_pixels)
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageError(name, f"image file is {st.st_size / 1e6:.0f} MB, too big for an image of at most "
                               f"{_megapixels(max_pixels)} megapixels")
    size = _declared_size_checked(name)
    if size is not None:
        width, height = size
        if width < 1 or height < 1:
            raise ImageError(name, f"unreadable image (its header declares {width}x{height} pixels)")
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(name, f"image header declares {width}x{height} pixels "
                                   f"({width * height / 1e6:.0f} megapixels), over the "
                                   f"{_megapixels(max_pixels)}-megapixel limit; not decoded")
    elif not _opencv_can_read(name):
        raise ImageError(name, "unreadable image (not a format OpenCV can decode)")
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_ANYDEPTH if stretch_16bit else 0)
    try:
        image = cv2.imread(name, flags)
    except cv2.error as exc:  # OpenCV 5 raises for some files (e.g. sizes over its own limit)
        raise ImageError(name, f"unreadable image (decoder error: {first_line(exc, 160)})") from None
    except MemoryError:
        raise ImageError(name, "unreadable image (out of memory decoding it)") from None
    if image is None or image.size == 0:
        raise ImageError(name, "unreadable image (corrupt, truncated or unsupported format)")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(name, f"image is {image.shape[1]}x{image.shape[0]} pixels, over the "
                               f"{_megapixels(max_pixels)}-megapixel limit")
    return _as_bgr8(image, stretch_16bit)


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` as the file's header declares it, without decoding; ``None`` when the
    format has no header reader here. :class:`ImageError` for a missing, non-regular or truncated file."""
    name = os.fspath(path)
    st = _stat_regular(name)
    if st.st_size == 0:
        raise ImageError(name, "image file is empty")
    return _declared_size_checked(name)


def _megapixels(max_pixels: int) -> str:
    return f"{max_pixels / 1e6:g}"


def _max_file_bytes(max_pixels: int | None) -> int | None:
    """No image within the pixel limit needs more than 8 bytes a pixel (16-bit RGBA) plus metadata."""
    return None if max_pixels is None else int(max_pixels) * 8 + (16 << 20)


def _stat_regular(name: str) -> os.stat_result:
    """``os.stat`` of a regular file (symlinks followed), or ImageError; never opens the file."""
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise ImageError(name, "image file not found") from None
    except PermissionError:
        raise ImageError(name, "permission denied reading the image") from None
    except (OSError, ValueError) as exc:
        raise ImageError(name, f"cannot read the image ({getattr(exc, 'strerror', None) or first_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(name, f"is {_kind(st.st_mode)}, not an image file")
    return st


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _opencv_can_read(name: str) -> bool:
    try:
        return bool(cv2.haveImageReader(name))
    except cv2.error:
        return False


def _declared_size_checked(name: str) -> tuple[int, int] | None:
    """Open (non-blocking, and only if still a regular file) and read the header's size."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except PermissionError:
        raise ImageError(name, "permission denied reading the image") from None
    except OSError as exc:
        raise ImageError(name, f"cannot read the image ({exc.strerror or first_line(exc)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise ImageError(name, f"is {_kind(st.st_mode)}, not an image file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return _declared_size(handle, st.st_size)
    except _Unreadable as exc:
        raise ImageError(name, f"unreadable image: {exc}") from None
    except OSError as exc:
        raise ImageError(name, f"cannot read the image ({exc.strerror or first_line(exc)})") from None
    finally:
        os.close(fd)


# ---- header readers -------------------------------------------------------------------------------
# Each returns (width, height) or raises _Unreadable; _declared_size returns None for other formats.


def _declared_size(handle, file_size: int) -> tuple[int, int] | None:
    head = handle.read(_HEADER_BYTES)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_size(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(handle, file_size)
    if head.startswith(b"BM"):
        return _bmp_size(head)
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _unpack("<HH", head, 6, "GIF")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return _tiff_size(handle, head, file_size)
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"1234567fF":
        return _pnm_size(head)
    if head.startswith(b"\x59\xa6\x6a\x95"):  # Sun raster
        return _unpack(">II", head, 4, "Sun raster")
    return None


def _unpack(fmt: str, data: bytes, offset: int, what: str) -> tuple:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise _Unreadable(f"truncated {what} header") from None


def _png_size(head: bytes) -> tuple[int, int]:
    length, kind = _unpack(">I4s", head, 8, "PNG")
    if kind != b"IHDR" or length != 13:
        raise _Unreadable("PNG without an IHDR header chunk")
    width, height = _unpack(">II", head, 16, "PNG")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise _Unreadable(f"PNG header declares an invalid size {width}x{height}")
    return width, height


def _jpeg_size(handle, file_size: int) -> tuple[int, int]:
    """Walk the marker segments to the first start-of-frame (SOFn) and read its size."""
    handle.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = handle.read(1)
        if byte != b"\xff":
            raise _Unreadable("truncated JPEG (no frame header)" if not byte else "corrupt JPEG marker")
        while byte == b"\xff":  # fill bytes
            byte = handle.read(1)
        if not byte:
            raise _Unreadable("truncated JPEG (no frame header)")
        marker = byte[0]
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise _Unreadable("corrupt JPEG (no frame header before the image data)")
        raw = handle.read(2)
        if len(raw) < 2:
            raise _Unreadable("truncated JPEG (no frame header)")
        (length,) = struct.unpack(">H", raw)
        if length < 2:
            raise _Unreadable("corrupt JPEG marker segment")
        if marker in _JPEG_SOF:
            frame = handle.read(5)
            if len(frame) < 5:
                raise _Unreadable("truncated JPEG frame header")
            _precision, height, width = struct.unpack(">BHH", frame)
            _check_jpeg_end(handle, file_size)
            return width, height
        position = handle.tell() + length - 2
        if position > file_size:
            raise _Unreadable("truncated JPEG (no frame header)")
        handle.seek(position)
    raise _Unreadable("corrupt JPEG (too many marker segments)")


def _check_jpeg_end(handle, file_size: int) -> None:
    """A JPEG cut short decodes to a grey bottom, silently: require the end-of-image marker.

    Entropy-coded data never contains FF D9 (FF bytes are stuffed), so finding it near the end means
    the image data is complete; some cameras append a little data after it, hence the window.
    """
    start = max(0, file_size - _JPEG_EOI_WINDOW)
    handle.seek(start)
    if b"\xff\xd9" not in handle.read(file_size - start):
        raise _Unreadable("truncated JPEG (no end-of-image marker)")


def _bmp_size(head: bytes) -> tuple[int, int]:
    (header_size,) = _unpack("<I", head, 14, "BMP")
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return _unpack("<HH", head, 18, "BMP")
    if header_size < 16:
        raise _Unreadable(f"BMP with an invalid info header ({header_size} bytes)")
    width, height = _unpack("<ii", head, 18, "BMP")
    return width, abs(height)  # negative height: rows stored top-down


def _webp_size(head: bytes) -> tuple[int, int]:
    (chunk,) = _unpack("4s", head, 12, "WebP")
    data = 20
    if chunk == b"VP8 ":
        if head[data + 3 : data + 6] != b"\x9d\x01\x2a":
            raise _Unreadable("WebP (lossy) without its frame start code" if len(head) >= data + 6
                              else "truncated WebP header")
        width, height = _unpack("<HH", head, data + 6, "WebP")
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        signature, bits = _unpack("<BI", head, data, "WebP")
        if signature != 0x2F:
            raise _Unreadable("WebP (lossless) without its signature")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        raw = _unpack("6s", head, data + 4, "WebP")[0]
        return int.from_bytes(raw[:3], "little") + 1, int.from_bytes(raw[3:], "little") + 1
    raise _Unreadable(f"WebP with an unknown first chunk {chunk!r}")


def _tiff_size(handle, head: bytes, file_size: int) -> tuple[int, int]:
    """ImageWidth/ImageLength (and TileWidth/TileLength) of the first IFD: the page imread decodes."""
    order = "<" if head.startswith(b"II") else ">"
    (ifd,) = _unpack(order + "I", head, 4, "TIFF")
    if ifd < 8 or ifd + 2 > file_size:
        raise _Unreadable("truncated TIFF (directory offset past the end of the file)")
    handle.seek(ifd)
    raw = handle.read(2)
    if len(raw) < 2:
        raise _Unreadable("truncated TIFF directory")
    (count,) = struct.unpack(order + "H", raw)
    if count > _MAX_TIFF_ENTRIES:
        raise _Unreadable(f"corrupt TIFF directory ({count} entries)")
    entries = handle.read(12 * count)
    if len(entries) < 12 * count:
        raise _Unreadable("truncated TIFF directory")
    values: dict[int, int] = {}
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", entries, 12 * i)
        if tag in (256, 257, 322, 323) and n == 1 and kind in (3, 4):
            fmt = order + ("H" if kind == 3 else "I")
            values[tag] = struct.unpack_from(fmt, entries, 12 * i + 8)[0]
    if 256 not in values or 257 not in values:
        raise _Unreadable("TIFF without an image width and length")
    tile = values.get(322, 0) * values.get(323, 0)
    width, height = values[256], values[257]
    if tile > max(width * height, 1 << 20) * 4:  # a tile far bigger than the image it tiles
        raise _Unreadable(f"corrupt TIFF (tiles of {values[322]}x{values[323]} pixels)")
    return width, height


def _pnm_size(head: bytes) -> tuple[int, int]:
    """P1-P6 (PBM/PGM/PPM), P7 (PAM) and PF/Pf (PFM): ASCII width and height after the magic."""
    magic = head[:2]
    if magic == b"P7":
        fields: dict[bytes, bytes] = {}
        for line in head[2:].splitlines():
            words = line.split()
            if words and words[0] == b"ENDHDR":
                break
            if len(words) >= 2:
                fields[words[0]] = words[1]
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            raise _Unreadable("PAM header without a numeric WIDTH and HEIGHT") from None
    tokens: list[bytes] = []
    body = head[2:]
    i = 0
    while len(tokens) < 2 and i < len(body):
        ch = body[i : i + 1]
        if ch == b"#":  # comment to the end of the line
            end = body.find(b"\n", i)
            if end < 0:
                break
            i = end + 1
        elif ch.isspace():
            i += 1
        else:
            j = i
            while j < len(body) and not body[j : j + 1].isspace() and body[j : j + 1] != b"#":
                j += 1
            if j == len(body):  # token runs into the end of what was read: truncated
                break
            tokens.append(body[i:j])
            i = j
    if len(tokens) < 2:
        raise _Unreadable(f"truncated {magic.decode('ascii')} (PNM/PFM) header")
    try:
        width, height = int(tokens[0]), int(tokens[1])
    except ValueError:
        raise _Unreadable(f"{magic.decode('ascii')} (PNM/PFM) header without a numeric width and height") from None
    return width, height


def _as_bgr8(image: np.ndarray, stretch: bool) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        if stretch:
            peak = float(np.max(image)) if image.size else 0.0
            scale = 255.0 / peak if np.isfinite(peak) and peak > 0 else 1.0
        else:
            scale = 1.0 / 256.0 if image.dtype == np.uint16 else 1.0
        image = cv2.convertScaleAbs(image, alpha=scale)
    channels = image.shape[2]
    if channels == 3:
        return np.ascontiguousarray(image)
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image[:, :, :3])


__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageError", "has_image_extension", "image_size",
           "is_glob", "list_images", "read_image"]
