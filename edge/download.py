"""Fetching catalogue models into the cache: verified, resumed, atomic (urllib only).

``~/.cache/edgekit/models/NAME/`` (``$EDGEKIT_CACHE/NAME/`` or ``--cache DIR/NAME/``) holds, once a
pull is complete and verified, ``NAME.tflite``, ``labels.txt`` beside it and ``source.json`` (where
it came from, its checksums). The download goes to ``NAME.zip.part`` (or ``NAME.tflite.part``),
resumed with an HTTP Range request when a transfer breaks off and the server supports it, retried
from the start with backoff when it does not, a bounded number of times. Its SHA-256 is checked
against the catalogue's pin before anything is unpacked; the model appears last, by a rename, so a
reader sees the whole verified model or none. A failure leaves nothing behind, not even the
``.part`` (a ``.part`` left by a killed process is resumed by the next pull, and still verified).

Every failure is one :class:`~edge.errors.EdgeError` line naming the model and the URL.
:func:`resolve_model` is what the other commands call with ``--model NAME_OR_PATH``.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from edge.catalog import CATALOG, TFLITE, ZIP, CatalogEntry, catalog_names, get_entry
from edge.contract.labels import UNUSED, parse_labels
from edge.errors import EdgeError, first_line
from edge.files import atomic_path, atomic_write, atomic_write_json

ENV_CACHE = "EDGEKIT_CACHE"  # the cache folder (holding one folder per model)
ENV_MIRROR = "EDGEKIT_MODEL_MIRROR"  # a URL (or folder) holding the catalogue's files under their own names
LABELS_FILE = "labels.txt"
SOURCE_FILE = "source.json"
LOCK_FILE = ".lock"

# Read at call time, so tests (and forks) can change them.
TIMEOUT = 30.0  # seconds to connect, and to wait for each read
ATTEMPTS = 5  # tries per file that make no progress (the first one and 4 retries)
MAX_TRIES = 50  # all tries per file, resumed ones included
BACKOFF = 1.0  # seconds before the first retry, doubled after each failed try ...
MAX_BACKOFF = 30.0  # ... up to this
CHUNK = 64 * 1024
MAX_UNPACKED_BYTES = 512 << 20  # all members of an archive together, as declared: more is a zip bomb
MAX_LABELS_BYTES = 1 << 20  # a labels download: one short line per class
UNKNOWN_SIZE_CAP = 2 << 30  # a download of unknown size is cut off beyond this
PLAIN_INTERVAL = 5.0  # seconds between progress lines without a terminal (or without tqdm)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_NO_NETWORK = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.I)

Log = Callable[[str], None]


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- where things are --------------------------------------------------------------------------

def cache_root(cache: str | Path | None = None) -> Path:
    """``cache``, else ``$EDGEKIT_CACHE``, else ``$XDG_CACHE_HOME/edgekit/models`` (``~/.cache/...``)."""
    if cache:
        return Path(cache).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "edgekit" / "models"


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    return cache_root(cache) / name


def cached_model_path(name: str, cache: str | Path | None = None) -> Path:
    """Where the model ``name`` is, or will be once pulled."""
    return model_dir(name, cache) / f"{name}.tflite"


def cached_model(name: str, cache: str | Path | None = None) -> Path | None:
    """The pulled model ``name``, or None when it is not in the cache."""
    path = cached_model_path(name, cache)
    return path if path.is_file() else None


def _read_source(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def labels_beside(model_path: str | Path) -> Path | None:
    """The ``labels.txt`` stored beside a model that :func:`pull` put there, else None.

    Only pulled models count (their ``source.json`` names the model file): a ``labels.txt`` that
    happens to lie beside some other model may belong to another one.
    """
    model_path = Path(model_path)
    labels = model_path.parent / LABELS_FILE
    if not labels.is_file():
        return None
    record = _read_source(model_path.parent / SOURCE_FILE)
    if record.get("model_file") != model_path.name or record.get("labels_file") != LABELS_FILE:
        return None
    return labels


def download_url(entry: CatalogEntry, url: str | None = None, *, labels: bool = False) -> str:
    """``url`` if given, else the entry's URL, moved to ``$EDGEKIT_MODEL_MIRROR`` when that is set.

    The mirror replaces everything up to the file name: ``EDGEKIT_MODEL_MIRROR=http://lan-box/models``
    fetches ``http://lan-box/models/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.zip``. A folder works too
    (``/media/usb/models``). The pins still apply, so a mirror cannot change what is installed.
    """
    if url:
        return url
    original = entry.labels_url if labels else entry.url
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if not mirror or not original:
        return original
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    file_name = urllib.parse.urlsplit(original).path.rsplit("/", 1)[-1]
    return f"{mirror.rstrip('/')}/{file_name}"


# ---- progress ------------------------------------------------------------------------------------

class _Progress:
    """A tqdm bar on a terminal, else a plain line every :data:`PLAIN_INTERVAL` s; nothing if disabled."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool) -> None:
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self._bar = None
        self._next_line = time.monotonic() + PLAIN_INTERVAL
        self._started, self._start_done = time.monotonic(), done
        if not enabled:
            return
        if getattr(sys.stderr, "isatty", lambda: False)():
            try:
                from tqdm import tqdm  # ai-edge-litert installs it
            except ImportError:
                return
            self._bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1000,
                             desc=label, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + PLAIN_INTERVAL
            rate = (self.done - self._start_done) / max(1e-6, time.monotonic() - self._started)
            of = f" of {self.total / 1e6:.1f} MB ({100 * self.done / self.total:.0f}%)" if self.total else " MB"
            print(f"{self.label}: {self.done / 1e6:.1f}{of}, {rate / 1e3:.0f} kB/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---- one file over HTTP, resumed or retried ------------------------------------------------------

class _Retry(Exception):
    """A try that failed in a way another try may not: ``reason`` is shown if it is the last."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


@dataclass
class _Transfer:
    """One file being fetched: what every try shares."""

    name: str  # the model, for messages
    url: str
    part: Path
    cap: int  # bytes beyond which the server is refused
    size_hint: int | None  # for the progress bar when the server sends no length
    spare_bytes: int  # room needed on the disk besides the download itself (the unpacked model)
    timeout: float
    progress: bool
    validator: str | None = None  # the file's ETag or Last-Modified, sent as If-Range on a resume
    resumable: bool | None = None  # None until the server answers a Range request
    connected: bool = False  # a try reached the server
    total: int | None = None  # the file's length as the server announced it

    def fail(self, reason: str) -> EdgeError:
        return EdgeError(f"{self.name}: cannot download {self.url}: {reason}")

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc or self.url


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}"


def _reason(exc: BaseException, transfer: _Transfer) -> tuple[str, bool]:
    """What went wrong with the network, in words, and whether another try may help."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host = transfer.host
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {urllib.parse.urlsplit(transfer.url).hostname} (no network, or no DNS)", False
    if isinstance(reason, ConnectionRefusedError):
        if transfer.connected:
            return f"the server went away mid-download: {host} now refuses connections", True
        return f"connection refused by {host} (no network, or no server there)", False
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"certificate check failed ({first_line(reason)})", False
    if isinstance(reason, TimeoutError):  # socket.timeout too
        return f"no answer from {host} within {transfer.timeout:g} s", True
    if isinstance(reason, (ConnectionError, http.client.HTTPException, ssl.SSLError)):
        return f"the connection broke ({first_line(reason, with_type=True)})", True
    if isinstance(reason, FileNotFoundError):
        return "no such file", False
    if isinstance(reason, OSError) and reason.errno in _NO_NETWORK:
        return f"no route to {host} ({reason.strerror or 'network unreachable'}; no network?)", False
    if isinstance(reason, OSError):
        return first_line(reason, with_type=True), True
    return first_line(reason) if isinstance(reason, BaseException) else str(reason), False


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return min(MAX_BACKOFF, max(0.0, float(value))) if value else None
    except ValueError:
        return None  # an HTTP date: use the usual backoff


def _open(transfer: _Transfer, offset: int):
    headers = {"User-Agent": "edgekit-models/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if transfer.validator:
            headers["If-Range"] = transfer.validator
    request = urllib.request.Request(transfer.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=transfer.timeout)
    except urllib.error.HTTPError as exc:
        transfer.connected = True
        with exc:
            if exc.code == 416 and offset:  # nothing after offset: the part may be whole already
                match = _CONTENT_RANGE.match(exc.headers.get("Content-Range", "") if exc.headers else "")
                if match and match.group(3) != "*" and int(match.group(3)) == offset:
                    transfer.total = offset
                    return None
                transfer.part.unlink(missing_ok=True)
                raise _Retry(f"the server refused to resume at {_mb(offset)} MB; starting over") from None
            if exc.code in _RETRY_STATUS:
                raise _Retry(f"HTTP {exc.code} {exc.reason}", _retry_after(exc.headers)) from None
            hint = " (wrong URL, or the file was moved: see --url)" if exc.code in (403, 404, 410) else ""
            raise transfer.fail(f"HTTP {exc.code} {exc.reason}{hint}") from None
    except ValueError as exc:  # not a URL urllib can open
        raise transfer.fail(first_line(exc)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        text, retry = _reason(exc, transfer)
        if retry:
            raise _Retry(text) from None
        raise transfer.fail(text) from None
    transfer.connected = True
    return response


def _check_room(transfer: _Transfer, remaining: int | None) -> None:
    need = (remaining or 0) + transfer.spare_bytes
    try:
        free = shutil.disk_usage(transfer.part.parent).free
    except OSError:
        return
    if need and free < need:
        raise transfer.fail(f"disk full: {_mb(free)} MB free in {transfer.part.parent}, about {_mb(need)} MB needed "
                            "(free some space, or use --cache DIR elsewhere)")


def _write(out, data: bytes) -> None:
    out.write(data)


def _try_once(transfer: _Transfer) -> None:
    """One try: the rest of the file appended to the part (or all of it, from the start)."""
    offset = transfer.part.stat().st_size if transfer.part.exists() else 0
    response = _open(transfer, offset)
    if response is None:
        return  # the part was whole already
    with response:
        status = getattr(response, "status", None) or 200  # file:// answers have none
        headers = response.headers
        length = headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not match or match.group(1) is None or int(match.group(1)) != offset:
                transfer.part.unlink(missing_ok=True)
                raise _Retry(f"the server resumed at the wrong place ({headers.get('Content-Range')}); starting over")
            transfer.resumable = True
            if match.group(3) != "*":
                transfer.total = int(match.group(3))
            mode = "ab"
        else:
            if offset:
                transfer.resumable = False  # it answered a Range request with the whole file
            offset, mode = 0, "wb"
            transfer.total = length
        if transfer.total is None and length is not None:
            transfer.total = offset + length
        if status == 200 and headers.get("Accept-Ranges", "").strip().lower() == "none":
            transfer.resumable = False
        etag = headers.get("ETag")
        transfer.validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
        if transfer.total is not None and transfer.total > transfer.cap:
            raise transfer.fail(f"the server announces {_mb(transfer.total)} MB, far more than this model "
                                f"(at most {_mb(transfer.cap)} MB expected); refusing")
        _check_room(transfer, None if transfer.total is None else transfer.total - offset)
        received = 0
        bar = _Progress(transfer.name, transfer.total or transfer.size_hint, offset, transfer.progress)
        read = getattr(response, "read1", response.read)  # what has arrived: a timeout loses nothing
        try:
            with open(transfer.part, mode) as out:
                while True:
                    try:
                        data = read(CHUNK)
                    except (http.client.HTTPException, OSError) as exc:
                        text, _ = _reason(exc, transfer)
                        raise _Retry(f"{text} at {_mb(offset + received)} of {_mb(transfer.total)} MB") from None
                    if not data:
                        break
                    _write(out, data)
                    received += len(data)
                    bar.update(len(data))
                    if offset + received > transfer.cap:
                        raise transfer.fail(f"the server sent more than {_mb(transfer.cap)} MB, far more than "
                                            "this model; refusing")
        finally:
            bar.close()
    if transfer.total is not None and offset + received < transfer.total:
        raise _Retry(f"the server closed the connection at {_mb(offset + received)} of {_mb(transfer.total)} MB")
    if transfer.total is not None and offset + received > transfer.total:
        transfer.part.unlink(missing_ok=True)
        raise _Retry(f"the server sent {offset + received} bytes for a file of {transfer.total}; starting over")
    transfer.total = offset + received


def _fetch(transfer: _Transfer, attempts: int, backoff: float, log: Log) -> None:
    """The whole file into ``transfer.part``, resuming or retrying as the server allows."""
    failures = tries = 0
    while True:
        tries += 1
        before = transfer.part.stat().st_size if transfer.part.exists() else 0
        try:
            _try_once(transfer)
            return
        except _Retry as exc:
            reason, wait = exc.reason, exc.wait
        after = transfer.part.stat().st_size if transfer.part.exists() else 0
        kept = transfer.resumable is not False and after > before  # a resumed try that got somewhere
        if not kept:
            failures += 1
        if failures >= attempts or tries >= MAX_TRIES:
            how = "" if transfer.resumable is not False else "; the server cannot resume, each try started over"
            raise transfer.fail(f"{reason} (gave up after {tries} {'try' if tries == 1 else 'tries'}{how})")
        if wait is None:
            wait = min(MAX_BACKOFF, backoff * 2 ** max(0, failures - 1))
        if after == 0:
            then = "retrying"
        elif transfer.resumable is False:
            then = "starting over"
        else:
            then = f"resuming at {_mb(after)} MB"
        log(f"{transfer.name}: {reason}; {then} in {wait:.1f} s (try {tries + 1})")
        time.sleep(wait)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(transfer: _Transfer, pin: str, what: str = "") -> None:
    got = _sha256_file(transfer.part)
    if got != pin:
        transfer.part.unlink(missing_ok=True)
        raise transfer.fail(f"checksum mismatch{what}: sha256 {got}, pinned {pin}; nothing kept "
                            "(a different or damaged file)")


# ---- unpacking -----------------------------------------------------------------------------------

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


# ---- the cache -----------------------------------------------------------------------------------

@contextmanager
def _locked(directory: Path, name: str, log: Log) -> Iterator[None]:
    """One pull per model at a time (two services starting together on first use), across processes."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = directory / LOCK_FILE
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{name}: another pull of it is running; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the folder as it gave up: take a fresh lock
    try:
        yield
    finally:
        os.close(fd)


def _tidy(directory: Path) -> None:
    """Remove the model's folder when a failed pull left nothing in it but the lock."""
    try:
        if set(os.listdir(directory)) <= {LOCK_FILE}:
            (directory / LOCK_FILE).unlink(missing_ok=True)
            directory.rmdir()
    except OSError:
        pass


def _cached_and_intact(entry: CatalogEntry, model: Path, pin: str, log: Log) -> bool:
    if not model.is_file():
        return False
    record = _read_source(model.parent / SOURCE_FILE)
    if record.get("sha256") != pin:
        log(f"{entry.name}: the cached copy at {model} is not from the pinned download; downloading again")
        return False
    if _sha256_file(model) != record.get("model_sha256"):
        log(f"{entry.name}: the cached copy at {model} is damaged (checksum changed); downloading again")
        return False
    if entry.has_labels and not (model.parent / LABELS_FILE).is_file():
        log(f"{entry.name}: the cached copy at {model} has lost its labels; downloading again")
        return False
    return True


def _version() -> str | None:
    from edge.provenance import package_version

    return package_version("edgekit")


def _pull(entry: CatalogEntry, pin: str, url: str, *, cache, force: bool, log: Log, announced: bool,
          progress: bool, timeout: float, attempts: int, backoff: float) -> Path:
    directory = model_dir(entry.name, cache)
    model = directory / f"{entry.name}.tflite"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeError(f"{entry.name}: cannot create the model cache {directory} ({exc.strerror or exc}); "
                        f"set {ENV_CACHE} or pass --cache DIR") from None
    with _locked(directory, entry.name, log):
        if not force and _cached_and_intact(entry, model, pin, log):
            log(f"{entry.name}: already in the cache: {model}")
            return model
        part = directory / f"{entry.name}.{entry.archive}.part"
        labels_part = directory / f"{LABELS_FILE}.part"
        stale = part.exists() and part.stat().st_size > 0
        if not announced:
            log(f"{entry.name}: downloading {entry.size_text()} from {url}"
                + (f" (resuming the {_mb(part.stat().st_size)} MB left by an earlier pull)" if stale else ""))
        cap = (2 * entry.size_bytes + (16 << 20)) if entry.size_bytes and pin == entry.sha256 else UNKNOWN_SIZE_CAP
        unpacked = entry.model_bytes or (entry.size_bytes or 0) * (2 if entry.archive == ZIP else 0)
        transfer = _Transfer(entry.name, url, part, cap, entry.size_bytes, unpacked, timeout, progress)
        try:
            try:
                _fetch(transfer, attempts, backoff, log)
                try:
                    _verify(transfer, pin)
                except EdgeError:
                    if not stale:
                        raise
                    log(f"{entry.name}: the part left by an earlier pull does not match; downloading it again")
                    transfer = _Transfer(entry.name, url, part, cap, entry.size_bytes, unpacked, timeout, progress)
                    _fetch(transfer, attempts, backoff, log)
                    _verify(transfer, pin)
                labels_text = None
                if entry.archive == TFLITE and entry.labels_url:
                    labels_url = download_url(entry, labels=True)
                    labels = _Transfer(entry.name, labels_url, labels_part, MAX_LABELS_BYTES, None, 0, timeout, False)
                    _fetch(labels, attempts, backoff, log)
                    _verify(labels, entry.labels_sha256, " of the labels")
                    labels_text = _labels_text(entry, labels_part.read_bytes(), labels_url, labels.fail)
                with atomic_path(model) as tmp:
                    if entry.archive == ZIP:
                        sha, size, labels_text = _unpack_zip(entry, part, tmp, transfer.fail)
                    else:
                        os.replace(part, tmp)
                        _check_tflite(tmp, "the download", transfer.fail)
                        sha, size = pin, tmp.stat().st_size
                        _check_model(entry, sha, size, transfer.fail)
                    if labels_text is not None:
                        atomic_write(directory / LABELS_FILE, labels_text)
                    else:
                        (directory / LABELS_FILE).unlink(missing_ok=True)
                    atomic_write_json(directory / SOURCE_FILE, {
                        "name": entry.name, "description": entry.description, "url": url, "sha256": pin,
                        "license": entry.license, "input_size": list(entry.input_size),
                        "model_file": model.name, "model_sha256": sha, "model_bytes": size,
                        "labels_file": LABELS_FILE if labels_text is not None else None,
                        "labels_sha256": hashlib.sha256(labels_text.encode()).hexdigest() if labels_text else None,
                        "pulled_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "edgekit": _version(),
                    })
            except OSError as exc:  # the disk (the network's OSErrors are handled in _fetch)
                if exc.errno in _DISK_FULL:
                    raise transfer.fail(f"disk full writing {directory} ({exc.strerror}); nothing kept (free some "
                                        "space, or use --cache DIR elsewhere)") from None
                raise transfer.fail(f"cannot write {exc.filename or directory} ({exc.strerror or exc})") from None
        except BaseException:
            part.unlink(missing_ok=True)
            labels_part.unlink(missing_ok=True)
            _tidy(directory)
            raise
        part.unlink(missing_ok=True)
        labels_part.unlink(missing_ok=True)
    log(f"{entry.name}: verified (sha256 {pin[:12]}...) and stored: {model}")
    return model


def _pin_for(entry: CatalogEntry, sha256: str | None) -> str:
    """The SHA-256 the download must have: ``sha256`` (``--sha256``) or the entry's; refused without one."""
    if entry.archive == TFLITE and entry.labels_url and entry.labels_sha256 is None:
        raise EdgeError(f"no pinned checksum for {entry.name}'s labels ({entry.labels_url}): refusing to "
                        "download unverified")
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise EdgeError(f"--sha256 {sha256}: not a SHA-256 (64 hex digits)")
        return sha256
    if entry.sha256 is None:
        raise EdgeError(f"no pinned checksum for {entry.name}: refusing to download unverified "
                        "(pin one in edge/catalog.py, or pass --sha256 after checking a copy)")
    return entry.sha256


def pull(name: str | CatalogEntry, *, cache: str | Path | None = None, url: str | None = None,
         sha256: str | None = None, force: bool = False, log: Log = print_to_stderr, progress: bool = True,
         timeout: float | None = None, attempts: int | None = None, backoff: float | None = None,
         _announced: bool = False) -> Path:
    """Download catalogue model ``name`` into the cache, verified; returns its ``.tflite``.

    A model already cached (and intact) is not downloaded again unless ``force``. ``url``: another
    place for the same file (a mirror, ``file://`` a copy); ``sha256``: a pin for an entry without one.
    """
    entry = get_entry(name) if isinstance(name, str) else name
    pin = _pin_for(entry, sha256)
    return _pull(entry, pin, download_url(entry, url), cache=cache, force=force, log=log, announced=_announced,
                 progress=progress, timeout=TIMEOUT if timeout is None else timeout,
                 attempts=ATTEMPTS if attempts is None else max(1, attempts),
                 backoff=BACKOFF if backoff is None else backoff)


_pull_model = pull  # resolve_model's ``pull`` flag hides the function


def resolve_model(name_or_path: str | Path, *, cache: str | Path | None = None, log: Log = print_to_stderr,
                  pull: bool = True) -> Path:
    """A model file for ``--model``: an existing path as is, else a catalogue name's cached model,
    pulled on first use (saying so in one line) unless ``pull=False``; else one line naming the catalogue."""
    path = Path(name_or_path)
    if path.exists():
        return path
    text = str(name_or_path)
    entry = CATALOG.get(text)
    if entry is None:
        raise EdgeError(f"{text}: no such model file, and not a catalogue model (the catalogue has "
                        f"{', '.join(catalog_names())}; see edge models)")
    found = cached_model(entry.name, cache)
    if found is not None:
        return found
    if not pull:
        raise EdgeError(f"{entry.name}: not in the cache {cache_root(cache)}; run edge models pull {entry.name}")
    _pin_for(entry, None)  # an entry without a pin is refused before anything is said about downloading
    log(f"{entry.name}: not in the cache, downloading from {download_url(entry)} ({entry.size_text()})")
    return _pull_model(entry, cache=cache, log=log, _announced=True)
