"""The one image-file reader of the project: ``read_image`` and ``list_images``.

Every still image (``edge detect``, folder sources, calibration, training) is read here, so the
guards are written once:

* only regular files are opened (a FIFO, device or directory is refused from ``stat`` alone: opening
  a FIFO for reading would block until someone writes to it);
* empty files, and files too big for any image within the pixel limit, are refused from their size;
* the width and height the header declares are read *before* decoding (PNG, JPEG, BMP, GIF, WebP,
  TIFF, PNM/PAM/PFM, Sun raster: :mod:`edge.image_headers`) and refused over ``max_pixels``: a
  69-byte PNG claiming 100000 x 100000 pixels costs a few bytes of reading, not a 30 GB allocation;
* a header that ends early (truncated file), a JPEG without its end-of-image marker, and whatever the
  decoder refuses (OpenCV returns ``None``, or in OpenCV 5 raises ``cv2.error`` for some files) become
  one :class:`ImageError` line naming the file.

Formats without a header reader are decoded only when OpenCV has a reader for them
(``cv2.haveImageReader``); OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2^30 by default) and the
file-size bound cover them before decoding, the pixel limit after.

Board side: numpy and OpenCV only.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError, first_line
from edge.image_headers import UnreadableHeader, declared_size

#: File name suffixes (lower case) treated as images by folder and glob listings.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: Default cap on width * height: 64 megapixels (a BGR copy is 192 MB).
DEFAULT_MAX_PIXELS = 64_000_000

_GLOB_CHARS = "*?["


class ImageError(EdgeError):
    """An image file that cannot be used; ``str()`` is one line ``"<file>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


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
            return declared_size(handle, st.st_size)
    except UnreadableHeader as exc:
        raise ImageError(name, f"unreadable image: {exc}") from None
    except OSError as exc:
        raise ImageError(name, f"cannot read the image ({exc.strerror or first_line(exc)})") from None
    finally:
        os.close(fd)


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
