"""The header readers: an image file's declared width and height, read before decoding.

:func:`declared_size` recognises PNG, JPEG (its frame header, and the end-of-image marker that tells
a complete file), BMP, GIF, WebP (lossy, lossless, extended), TIFF (the first directory: the page
``imread`` decodes), PNM/PAM/PFM and Sun raster from their first bytes and returns ``(width,
height)``; ``None`` for other formats. A header that is malformed or ends early raises
:class:`UnreadableHeader` (the reason is the message). :func:`edge.images.read_image` turns that into
its :class:`~edge.images.ImageError` and refuses sizes over its pixel limit before any decoding.

Board side: the standard library only.
"""

from __future__ import annotations

import struct

_HEADER_BYTES = 4096  # enough for every fixed header read here (PNM comments included)
_MAX_JPEG_SEGMENTS = 10_000
_MAX_TIFF_ENTRIES = 4096
_JPEG_EOI_WINDOW = 1 << 16  # the end-of-image marker must be in the file's last 64 KiB
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


class UnreadableHeader(Exception):
    """A header that is malformed or ends early (the reason is the message)."""


# Each reader returns (width, height) or raises UnreadableHeader; declared_size returns None for other formats.


def declared_size(handle, file_size: int) -> tuple[int, int] | None:
    """``(width, height)`` from the header of the binary file ``handle`` (``file_size`` bytes long,
    just opened: read from its start); ``None`` for a format without a reader here."""
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
        raise UnreadableHeader(f"truncated {what} header") from None


def _png_size(head: bytes) -> tuple[int, int]:
    length, kind = _unpack(">I4s", head, 8, "PNG")
    if kind != b"IHDR" or length != 13:
        raise UnreadableHeader("PNG without an IHDR header chunk")
    width, height = _unpack(">II", head, 16, "PNG")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise UnreadableHeader(f"PNG header declares an invalid size {width}x{height}")
    return width, height


def _jpeg_size(handle, file_size: int) -> tuple[int, int]:
    """Walk the marker segments to the first start-of-frame (SOFn) and read its size."""
    handle.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = handle.read(1)
        if byte != b"\xff":
            raise UnreadableHeader("truncated JPEG (no frame header)" if not byte else "corrupt JPEG marker")
        while byte == b"\xff":  # fill bytes
            byte = handle.read(1)
        if not byte:
            raise UnreadableHeader("truncated JPEG (no frame header)")
        marker = byte[0]
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise UnreadableHeader("corrupt JPEG (no frame header before the image data)")
        raw = handle.read(2)
        if len(raw) < 2:
            raise UnreadableHeader("truncated JPEG (no frame header)")
        (length,) = struct.unpack(">H", raw)
        if length < 2:
            raise UnreadableHeader("corrupt JPEG marker segment")
        if marker in _JPEG_SOF:
            frame = handle.read(5)
            if len(frame) < 5:
                raise UnreadableHeader("truncated JPEG frame header")
            _precision, height, width = struct.unpack(">BHH", frame)
            _check_jpeg_end(handle, file_size)
            return width, height
        position = handle.tell() + length - 2
        if position > file_size:
            raise UnreadableHeader("truncated JPEG (no frame header)")
        handle.seek(position)
    raise UnreadableHeader("corrupt JPEG (too many marker segments)")


def _check_jpeg_end(handle, file_size: int) -> None:
    """A JPEG cut short decodes to a grey bottom, silently: require the end-of-image marker.

    Entropy-coded data never contains FF D9 (FF bytes are stuffed), so finding it near the end means
    the image data is complete; some cameras append a little data after it, hence the window.
    """
    start = max(0, file_size - _JPEG_EOI_WINDOW)
    handle.seek(start)
    if b"\xff\xd9" not in handle.read(file_size - start):
        raise UnreadableHeader("truncated JPEG (no end-of-image marker)")


def _bmp_size(head: bytes) -> tuple[int, int]:
    (header_size,) = _unpack("<I", head, 14, "BMP")
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return _unpack("<HH", head, 18, "BMP")
    if header_size < 16:
        raise UnreadableHeader(f"BMP with an invalid info header ({header_size} bytes)")
    width, height = _unpack("<ii", head, 18, "BMP")
    return width, abs(height)  # negative height: rows stored top-down


def _webp_size(head: bytes) -> tuple[int, int]:
    (chunk,) = _unpack("4s", head, 12, "WebP")
    data = 20
    if chunk == b"VP8 ":
        if head[data + 3 : data + 6] != b"\x9d\x01\x2a":
            raise UnreadableHeader("WebP (lossy) without its frame start code" if len(head) >= data + 6
                              else "truncated WebP header")
        width, height = _unpack("<HH", head, data + 6, "WebP")
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        signature, bits = _unpack("<BI", head, data, "WebP")
        if signature != 0x2F:
            raise UnreadableHeader("WebP (lossless) without its signature")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        raw = _unpack("6s", head, data + 4, "WebP")[0]
        return int.from_bytes(raw[:3], "little") + 1, int.from_bytes(raw[3:], "little") + 1
    raise UnreadableHeader(f"WebP with an unknown first chunk {chunk!r}")


def _tiff_size(handle, head: bytes, file_size: int) -> tuple[int, int]:
    """ImageWidth/ImageLength (and TileWidth/TileLength) of the first IFD: the page imread decodes."""
    order = "<" if head.startswith(b"II") else ">"
    (ifd,) = _unpack(order + "I", head, 4, "TIFF")
    if ifd < 8 or ifd + 2 > file_size:
        raise UnreadableHeader("truncated TIFF (directory offset past the end of the file)")
    handle.seek(ifd)
    raw = handle.read(2)
    if len(raw) < 2:
        raise UnreadableHeader("truncated TIFF directory")
    (count,) = struct.unpack(order + "H", raw)
    if count > _MAX_TIFF_ENTRIES:
        raise UnreadableHeader(f"corrupt TIFF directory ({count} entries)")
    entries = handle.read(12 * count)
    if len(entries) < 12 * count:
        raise UnreadableHeader("truncated TIFF directory")
    values: dict[int, int] = {}
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", entries, 12 * i)
        if tag in (256, 257, 322, 323) and n == 1 and kind in (3, 4):
            fmt = order + ("H" if kind == 3 else "I")
            values[tag] = struct.unpack_from(fmt, entries, 12 * i + 8)[0]
    if 256 not in values or 257 not in values:
        raise UnreadableHeader("TIFF without an image width and length")
    tile = values.get(322, 0) * values.get(323, 0)
    width, height = values[256], values[257]
    if tile > max(width * height, 1 << 20) * 4:  # a tile far bigger than the image it tiles
        raise UnreadableHeader(f"corrupt TIFF (tiles of {values[322]}x{values[323]} pixels)")
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
            raise UnreadableHeader("PAM header without a numeric WIDTH and HEIGHT") from None
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
        raise UnreadableHeader(f"truncated {magic.decode('ascii')} (PNM/PFM) header")
    try:
        width, height = int(tokens[0]), int(tokens[1])
    except ValueError:
        raise UnreadableHeader(f"{magic.decode('ascii')} (PNM/PFM) header without a numeric width and height") from None
    return width, height


__all__ = ["UnreadableHeader", "declared_size"]
