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

The pieces: :mod:`edge.http_fetch` (one file over HTTP, resumed or retried, checked against its
pin), :mod:`edge.model_unpack` (what is taken out of a verified download) and
:mod:`edge.model_cache` (where models are kept, one pull per model at a time); this module puts
them together (:func:`pull`) and says where a download comes from (:func:`download_url`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

from edge.catalog import CATALOG, TFLITE, ZIP, CatalogEntry, catalog_names, get_entry
from edge.errors import EdgeError
from edge.files import atomic_path, atomic_write, atomic_write_json
from edge.http_fetch import Log, _fetch, _mb, _Transfer, _verify
from edge.model_cache import (ENV_CACHE, LABELS_FILE, SOURCE_FILE, _cached_and_intact, _locked, _tidy, cache_root,
                              cached_model, model_dir)
from edge.model_unpack import MAX_LABELS_BYTES, _check_model, _check_tflite, _labels_text, _unpack_zip

ENV_MIRROR = "EDGEKIT_MODEL_MIRROR"  # a URL (or folder) holding the catalogue's files under their own names

# Read at call time, so tests (and forks) can change them.
TIMEOUT = 30.0  # seconds to connect, and to wait for each read
ATTEMPTS = 5  # tries per file that make no progress (the first one and 4 retries)
BACKOFF = 1.0  # seconds before the first retry, doubled after each failed try up to http_fetch.MAX_BACKOFF
UNKNOWN_SIZE_CAP = 2 << 30  # a download of unknown size is cut off beyond this

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
