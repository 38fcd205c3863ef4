"""One file over HTTP (or ``file://``) into its ``.part``: resumed, retried, bounded, verified.

A transfer that breaks off is resumed with an HTTP Range request (``If-Range`` with the file's
ETag or Last-Modified) when the server supports it, retried from the start with backoff when it
does not, a bounded number of times (tries that make no progress, and all tries); a server that
announces or sends far more than the file should be is refused. :func:`_verify` checks the
finished part against its pinned SHA-256 and removes it when it differs. Every failure is one
:class:`~edge.errors.EdgeError` line naming the model and the URL (:meth:`_Transfer.fail`).
:mod:`edge.download` runs it for a catalogue model.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import re
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import EdgeError, first_line

# Read at call time, so tests (and forks) can change them.
MAX_TRIES = 50  # all tries per file, resumed ones included
MAX_BACKOFF = 30.0  # seconds: the backoff between tries (doubled after each failed one) goes up to this
CHUNK = 64 * 1024
PLAIN_INTERVAL = 5.0  # seconds between progress lines without a terminal (or without tqdm)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_NO_NETWORK = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.I)

Log = Callable[[str], None]


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
