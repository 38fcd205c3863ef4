"""The folder :class:`~edge.live.clips.ClipSink` writes into, as far as one prefix's clips go: their
file names, the free space left, retention (the oldest clips removed first) and the temporary
``.part`` files a killed run left behind. Only files named as this prefix names its clips
(``PREFIX-YYYYmmdd-HHMMSS-SEQ[-N]SUFFIX``, and their hidden ``.NAME.*.partSUFFIX`` temporaries) are
ever looked at or removed: a prefix is a camera's name, and camera ``door``'s retention must never
take camera ``door-2``'s clips.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable


class ClipFolder:
    """The clips of ``prefix`` with container ``suffix`` (``.mp4``) in ``folder``."""

    def __init__(self, folder: Path, prefix: str, suffix: str) -> None:
        self.folder, self.prefix, self.suffix = folder, prefix, suffix
        clip = rf"{re.escape(prefix)}-\d{{8}}-\d{{6}}-\d+(?:-\d+)?{re.escape(suffix)}"
        self._clip_name = re.compile(rf"^{clip}$")
        self._part_name = re.compile(rf"^\.{clip}\..+\.part{re.escape(suffix)}$")

    def free(self) -> int | None:
        """Bytes free for an unprivileged writer, or None when the file system does not say."""
        try:
            vfs = os.statvfs(self.folder)
        except OSError:
            return None
        return vfs.f_bavail * vfs.f_frsize

    def name(self, stamp: float, seq: int) -> Path:
        """``PREFIX-YYYYmmdd-HHMMSS-SEQ`` (local time of ``stamp``), with ``-2``, ``-3``... if taken."""
        base = f"{self.prefix}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}-{seq}"
        path, n = self.folder / f"{base}{self.suffix}", 1
        while path.exists():
            n += 1
            path = self.folder / f"{base}-{n}{self.suffix}"
        return path

    def existing(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of this prefix's finished clips in the folder, oldest first."""
        found = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return found
        for entry in entries:
            name = entry.name
            if self._clip_name.match(name):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_file(follow_symlinks=False):
                    found.append((st.st_mtime, st.st_size, Path(entry.path)))
        found.sort()
        return found

    def retain(self, max_clips: int | None, max_bytes: int | None, max_age: float | None, removed: list[Path],
               problem: Callable[[str], None]) -> None:
        """Remove the oldest clips while there are more than ``max_clips``, more than ``max_bytes``
        in all, or clips older than ``max_age`` seconds; each removed one is appended to ``removed``.
        A clip that cannot be removed is one ``problem`` and ends the round."""
        if max_clips is None and max_bytes is None and max_age is None:
            return
        clips = self.existing()
        total = sum(size for _, size, _ in clips)
        now = time.time()
        while clips:
            mtime, size, path = clips[0]
            over = ((max_clips is not None and len(clips) > max_clips)
                    or (max_bytes is not None and total > max_bytes)
                    or (max_age is not None and now - mtime > max_age))
            if not over:
                break
            clips.pop(0)
            total -= size
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                problem(f"cannot remove old clip {path.name} ({exc.strerror})")
                break
            removed.append(path)

    def remove_dead_parts(self, before: float, log: Callable[[str], None]) -> None:
        """Temporary files of clips whose writer died (SIGKILL, power loss), last written before
        ``before`` (Unix seconds): no index, never playable."""
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if self._part_name.match(name):
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < before:
                        os.unlink(entry.path)
                        log(f"--clips {self.folder}: removed {name}, left by a run that was killed")
                except OSError:
                    pass


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
