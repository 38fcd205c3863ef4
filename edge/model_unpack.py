"""What is taken out of a verified download: the model (and labels) member of a zip archive, checked.

Member names that are absolute or climb out (``..``) are refused, and so is an archive whose
members declare more than :data:`MAX_UNPACKED_BYTES` together (a zip bomb); the model must be a
TFLite flatbuffer (``TFL3``) matching the catalogue's pin for it, and labels become the text edge
reads (line i is class i, the catalogue's unused ids as ``n/a``, a background class dropped).
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
import zlib
from pathlib import Path

from edge.catalog import CatalogEntry
from edge.contract.labels import UNUSED, parse_labels
from edge.errors import EdgeError, first_line
from edge.http_fetch import CHUNK, _mb, _write

MAX_UNPACKED_BYTES = 512 << 20  # all members of an archive together, as declared: more is a zip bomb
MAX_LABELS_BYTES = 1 << 20  # a labels download: one short line per class


def _unsafe_member(name: str) -> bool:
    parts = re.split(r"[\\/]+", name)
    return (name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts
            or "\x00" in name)


def _member(zf: zipfile.ZipFile, wanted: str | None, suffix: str, what: str, fail) -> zipfile.ZipInfo:
    infos = [info for info in zf.infolist() if not info.is_dir()]
    if wanted:
        found = [info for info in infos if info.filename == wanted]
        found = found or [info for info in infos if info.filename.rsplit("/", 1)[-1] == wanted]
    else:
        found = [info for info in infos if info.filename.lower().endswith(suffix)]
    if len(found) != 1:
        names = ", ".join(info.filename for info in infos[:8]) or "nothing"
        looked = wanted or f"one *{suffix}"
        raise fail(f"the archive has {'no' if not found else 'more than one'} {what} ({looked}); it holds {names}")
    return found[0]


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with zf.open(info) as source, open(dest, "wb") as out:
        for block in iter(lambda: source.read(CHUNK), b""):
            size += len(block)
            digest.update(block)
            _write(out, block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _labels_text(entry: CatalogEntry, raw: bytes, source: str, fail) -> str:
    """The labels as edge reads them: line i is class i, ``n/a`` for unused ids."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise fail(f"{source} is not UTF-8 text") from None
    if entry.labels_background is not None or entry.labels_unused:
        lines = [line.strip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if entry.labels_background is not None and lines and lines[0] == entry.labels_background:
            lines = lines[1:]  # the background class: the post-process op's class 0 is the first real one
        text = "".join(f"{UNUSED if line in entry.labels_unused else line}\n" for line in lines)
    try:
        parse_labels(text, source)
    except EdgeError as exc:
        raise fail(first_line(exc)) from None
    return text


def _check_tflite(path: Path, what: str, fail) -> None:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise fail(f"{what} is not a TFLite model (no TFL3 identifier)")


def _check_model(entry: CatalogEntry, sha: str, size: int, fail) -> None:
    if entry.model_sha256 and sha != entry.model_sha256:
        raise fail(f"the model inside has sha256 {sha}, pinned {entry.model_sha256}; nothing kept")
    if entry.model_bytes and size != entry.model_bytes and not entry.model_sha256:
        raise fail(f"the model inside is {size} bytes, {entry.model_bytes} expected; nothing kept")


def _unpack_zip(entry: CatalogEntry, archive: Path, model_tmp: Path, fail) -> tuple[str, int, str | None]:
    """The model member into ``model_tmp``; returns its sha256, size and the labels text (or None)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise fail(f"not a readable zip archive ({first_line(exc)})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            if _unsafe_member(info.filename):
                raise fail(f"the archive holds an unsafe member name {info.filename!r} (absolute or ..); refusing it")
        declared = sum(info.file_size for info in infos)
        if declared > MAX_UNPACKED_BYTES:
            raise fail(f"the archive declares {_mb(declared)} MB unpacked, more than {_mb(MAX_UNPACKED_BYTES)} MB "
                       "(a zip bomb?); refusing it")
        model = _member(zf, entry.model_member, ".tflite", "model", fail)
        labels = _member(zf, entry.labels_member, ".txt", "labels", fail) if entry.labels_member else None
        if labels is not None and labels.file_size > MAX_LABELS_BYTES:
            raise fail(f"labels member {labels.filename} declares {labels.file_size} bytes; refusing it")
        try:
            sha, size = _copy_member(zf, model, model_tmp)
            raw_labels = zf.read(labels) if labels is not None else None
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise fail(f"the archive is damaged or unsupported ({first_line(exc)})") from None
    _check_tflite(model_tmp, f"member {model.filename}", fail)
    _check_model(entry, sha, size, fail)
    text = _labels_text(entry, raw_labels, labels.filename, fail) if raw_labels is not None else None
    return sha, size, text
