"""Writing output files whole or not at all: a temporary file beside the target, renamed into place.

A reader (the board's service user, ``tail -f``, a later ``edge run``) never sees half a file, and a
failure or an interrupt leaves the previous file, if any, as it was. The temporary name keeps the
target's suffix, so writers that pick a format by extension (``cv2.imwrite``, ``savefig``) work on
it, and the finished file gets the permissions any new file would get under the umask (``mkstemp``
alone would leave it 0600, unreadable by other users).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edge.errors import EdgeError


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is a set-and-get)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it becomes ``path``, else it is removed.

    ``mode`` is reduced by the umask, as ``open()`` would do for a new file.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def atomic_write_json(path: str | Path, obj, *, indent: int | None = 2) -> Path:
    """``obj`` as JSON (with a final newline) into ``path``, atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")


# ---- checking output paths before any work -------------------------------------------------------

FILE, STREAM, FOLDER = "file", "stream", "folder"


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_location(option: str, path: Path, kind: str, made_folders: set[Path] = frozenset()) -> None:
    """One line naming ``option`` when ``path`` cannot be written as ``kind`` (``made_folders``:
    folders the command will create, in which files need no existing parent)."""
    where = f"{option} {path}"
    if kind == FOLDER:
        if path.exists() and not path.is_dir():
            raise EdgeError(f"{where}: is a file, not a folder")
        base = _nearest_existing(path)
        if not base.is_dir():
            raise EdgeError(f"{where}: {base} is not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise EdgeError(f"{where}: cannot write in {base} (permission denied or read-only)")
        return
    if path.is_dir():
        raise EdgeError(f"{where}: is a folder; give a file name")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) and kind == FILE:
            raise EdgeError(f"{where}: is not a regular file (a device or pipe cannot be replaced safely)")
        if not os.access(path, os.W_OK):
            raise EdgeError(f"{where}: is not writable")
        if not stat.S_ISREG(mode):
            return  # a pipe or a device (/dev/null, a terminal): written as a stream
    parent = path.parent
    if _resolved(parent) in made_folders:
        return
    if not parent.is_dir():
        raise EdgeError(f"{where}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeError(f"{where}: cannot write in {parent} (permission denied or read-only)")


def check_paths(inputs: list[tuple[str, str | Path | None]], outputs: list[tuple[str, str | Path | None, str]]) -> None:
    """Refuse, with one line, outputs that would overwrite an input or each other, or cannot be written.

    ``inputs``: ``(option, path)`` of every file or folder the command reads (model, sidecar, labels,
    source, dataset, calibration folder; entries that are not existing paths, like a camera index,
    are ignored). ``outputs``: ``(option, path, kind)`` with kind :data:`FILE` (written whole and
    renamed into place), :data:`STREAM` (appended as it goes; ``-``, pipes and devices allowed) or
    :data:`FOLDER`. Links are resolved, and hard links caught by inode, before comparing.
    Call it before any work, so a mistake costs nothing.
    """
    seen_inputs = []
    for option, path in inputs:
        if path is None or str(path) in ("", "-") or not Path(path).exists():
            continue
        seen_inputs.append((option, Path(path), _resolved(path), _identity(Path(path))))
    seen_outputs = []
    made_folders = {_resolved(path) for _, path, kind in outputs if kind == FOLDER and path is not None}
    for option, path, kind in outputs:
        if path is None or (kind == STREAM and str(path) == "-"):
            continue
        resolved = _resolved(path)
        _check_location(option, Path(path), kind, made_folders)
        identity = _identity(Path(path))
        for in_option, in_path, in_resolved, in_identity in seen_inputs:
            if resolved == in_resolved or (identity is not None and identity == in_identity):
                raise EdgeError(f"{option} {path}: is the input {in_option} {in_path}; writing it would destroy it")
        for out_option, out_path, out_resolved in seen_outputs:
            if resolved == out_resolved:
                raise EdgeError(f"{option} {path} and {out_option} {out_path} are the same file; give two paths")
        seen_outputs.append((option, Path(path), resolved))
