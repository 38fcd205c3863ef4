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
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
