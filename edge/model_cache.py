"""The model cache: where pulled models are kept, and one pull per model at a time.

``~/.cache/edgekit/models/NAME/`` (``$EDGEKIT_CACHE/NAME/`` or ``--cache DIR/NAME/``) holds, once a
pull is complete and verified, ``NAME.tflite``, ``labels.txt`` beside it and ``source.json`` (where
it came from, its checksums).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edge.catalog import CatalogEntry
from edge.http_fetch import Log, _sha256_file

ENV_CACHE = "EDGEKIT_CACHE"  # the cache folder (holding one folder per model)
LABELS_FILE = "labels.txt"
SOURCE_FILE = "source.json"
LOCK_FILE = ".lock"


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
