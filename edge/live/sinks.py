"""Where the live loop's results go: the :class:`Sink` contract, :class:`SinkError`, and JSON lines.

A sink gets, per processed frame, the :class:`~edge.detector.step.Frame` (image, source frame
number, capture time in Unix seconds, file name for image sources), the detections (views, valid
during the call) and the annotated copy (or ``None`` when no sink asked for one); per input the
source skipped, the frame with its ``error``. Sinks must not keep references to any of them past
the call. A new sink subclasses :class:`Sink` (here, or in a module of its own as the others:
:mod:`edge.live.video`, :mod:`edge.live.preview`, :mod:`edge.live.clips`) and is built in
``edge.commands.run``'s ``build_sinks``.

Output can fail mid-run (a full disk, the reader of a pipe gone): a sink then raises
:class:`SinkError` with one line and leaves what it wrote whole, and the loop stops cleanly.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from edge.contract.detections import Detections
from edge.detector.step import Frame
from edge.errors import EdgeError


class SinkError(EdgeError):
    """A sink that can no longer write (disk full, the reader of a pipe gone). The loop stops with
    this one line, closes every sink (each leaves what it wrote whole) and exits non-zero."""


class Sink:
    """Base: ``needs_annotation`` asks the loop to draw the annotated copy before :meth:`write`."""

    needs_annotation = False

    def start(self, stats: Callable[[], dict]) -> None:
        """Called once before the first frame; ``stats()`` gives the loop's live numbers."""

    def presize(self, frame_shape: tuple[int, ...]) -> None:
        """Allocate frame-sized buffers now, for frames of ``frame_shape`` (when the source knows it)."""

    def wants_frame(self) -> bool:
        """Whether this sink will use the next frame (lets the loop skip annotating for nobody)."""
        return True

    def write(self, frame: Frame, detections: Detections, annotated: np.ndarray | None) -> None:
        raise NotImplementedError

    def skipped(self, frame: Frame) -> None:
        """An input the source could not use: ``frame.name`` and ``frame.error`` say which and why."""

    def events(self, frame: Frame, events) -> None:
        """Zone and line events of this frame (:class:`~edge.events.zones.Event`), after :meth:`write`."""

    def close(self) -> None:
        pass

    def report(self) -> str | None:
        """One line for the user after the run (what was written), or None."""
        return None


def _why(exc: OSError) -> str:
    """What an OSError from writing output means to the user, with the system's own words."""
    words = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({words})"
    if exc.errno == errno.EPIPE:
        return f"the reader went away ({words})"
    if exc.errno == errno.EBADF:
        return f"the output is closed ({words})"
    return f"cannot write ({words})"


def _above_stdio(fd: int) -> int:
    """``fd`` moved above 0-2: started with stdout or stderr closed (``>&-``), a new file gets their
    number, and then C libraries' prints (FFmpeg's, the interpreters') would land in it."""
    if fd > 2:
        return fd
    try:
        import fcntl
    except ImportError:  # not POSIX
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


class JsonLinesSink(Sink):
    """One JSON object per processed frame: ``{"frame", "time", "width", "height", "detections"}``,
    plus ``"file"`` for frames from image files; one per zone or line event (``{"event": "enter" |
    "leave" | "cross", "zone" | "line", "direction", "track", "label", "frame", "time", "point"}``).

    ``detections`` is a list of ``{"label", "class_id", "score", "box": [x0, y0, x1, y1]}`` with boxes
    in frame pixels. An input the source skipped gets ``{"frame", "time", "file", "error"}``. ``"-"``
    writes to stdout (``stream``: another open file). Each line goes out whole in unbuffered writes
    (a pipe reader or ``tail -f`` sees whole lines as they come), and every write is checked: when
    one fails (disk full, the reader of the pipe gone) a regular file is cut back to its last whole
    line and :class:`SinkError` says so, so the file is valid JSON lines after any failure.

    ``camera`` (when not ``None``) leads every line as ``"camera": NAME`` (frames, skipped inputs
    and events alike). It may be changed between calls (:class:`~edge.live.cameras.CameraSink`
    sets it to its camera's name), so one file or stdout serves every camera of a run.
    """

    def __init__(self, target: str | Path, *, stream=None, camera: str | None = None) -> None:
        self.target = str(target)
        self.camera = camera
        self.lines = 0
        self.error: SinkError | None = None
        self._fd, self._owned = -1, False
        if stream is not None or self.target == "-":
            stream = sys.stdout if stream is None else stream
            try:
                if stream is None:  # Python found fd 1 closed at start-up
                    raise OSError(errno.EBADF, "closed")
                stream.flush()  # anything printed before goes first
                fd = stream.fileno()
                os.fstat(fd)
            except (OSError, ValueError, AttributeError):
                raise EdgeError(f"--json {self.target}: stdout is closed (started with >&-?); "
                                "give a file or redirect it") from None
        else:
            path = Path(self.target)
            if not path.parent.is_dir():
                raise EdgeError(f"--json {path}: folder {path.parent} does not exist")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = _above_stdio(os.open(path, flags, 0o666))
            except OSError as exc:
                raise EdgeError(f"--json {path}: cannot write ({exc.strerror})") from None
            self._owned = True
        self._fd = fd
        # A regular file is cut back to the last whole line on a failed write: where it ends.
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self._good = os.lseek(fd, 0, os.SEEK_CUR) if self._regular else 0

    def write(self, frame, detections, annotated) -> None:
        image = frame.image
        record = {"frame": frame.seq, "time": round(frame.stamp, 4), "width": int(image.shape[1]),
                  "height": int(image.shape[0])}
        if frame.name is not None:
            record["file"] = frame.name
        record["detections"] = detections.to_list()
        self._write(record)

    def skipped(self, frame) -> None:
        self._write({"frame": frame.seq, "time": round(frame.stamp, 4), "file": frame.name, "error": frame.error})

    def events(self, frame, events) -> None:
        for event in events:  # one line per event, after its frame's line: {"event", "zone"|"line", "track", ...}
            self._write(event.to_dict())

    def _write(self, record: dict) -> None:
        if self.error is not None:
            raise self.error
        if self.camera is not None:
            record = {"camera": self.camera, **record}
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        done = 0
        try:
            done = os.write(self._fd, data)
            if done < len(data):  # a short write (a pipe, a signal, the disk filling): the rest
                with memoryview(data) as rest:
                    while done < len(data):
                        done += os.write(self._fd, rest[done:])
        except OSError as exc:
            self._fail(exc, done)
        self.lines += 1
        self._good += len(data)

    def _fail(self, exc: OSError, partial: int) -> None:
        """Cut a regular file back to its last whole line (when nobody else wrote to it since) and raise."""
        if partial and self._regular:
            try:
                if os.lseek(self._fd, 0, os.SEEK_CUR) == self._good + partial:
                    os.ftruncate(self._fd, self._good)
                    os.lseek(self._fd, self._good, os.SEEK_SET)
                    partial = 0
            except OSError:
                pass
        whole = f"{self.lines} whole line{'s' if self.lines != 1 else ''}"
        kept = f"kept {whole}" if not partial else f"wrote {whole} and part of one more"
        self.error = SinkError(f"--json {self.target}: {_why(exc)}; {kept}")
        raise self.error

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._owned:
            try:
                os.close(fd)
            except OSError:
                pass
