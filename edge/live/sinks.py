"""Where the live loop's results go: JSON lines, an annotated video file, the preview page.

A sink gets, per processed frame, the :class:`~edge.detector.step.Frame` (image, source frame
number, capture time in Unix seconds, file name for image sources), the detections (views, valid
during the call) and the annotated copy (or ``None`` when no sink asked for one); per input the
source skipped, the frame with its ``error``. Sinks must not keep references to any of them past
the call. A new sink subclasses :class:`Sink` here and is built in ``edge.commands.run``'s
``build_sinks``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Callable

import cv2
import numpy as np

from edge.contract.detections import Detections
from edge.detector.step import Frame
from edge.errors import EdgeError

# Container -> FourCC that OpenCV's FFmpeg backend writes without extra codecs (pip wheels included).
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


class SinkError(EdgeError):
    """A sink that can no longer write (disk full, the reader of a pipe gone). The loop stops with
    this one line, closes every sink (each leaves what it wrote whole) and exits non-zero."""


class Sink:
    """Base: ``needs_annotation`` asks the loop to draw the annotated copy before :meth:`write`."""

    needs_annotation = False

    def start(self, stats: Callable[[], dict]) -> None:
        """Called once before the first frame; ``stats()`` gives the loop's live numbers."""

    def wants_frame(self) -> bool:
        """Whether this sink will use the next frame (lets the loop skip annotating for nobody)."""
        return True

    def write(self, frame: Frame, detections: Detections, annotated: np.ndarray | None) -> None:
        raise NotImplementedError

    def skipped(self, frame: Frame) -> None:
        """An input the source could not use: ``frame.name`` and ``frame.error`` say which and why."""

    def close(self) -> None:
        pass

    def report(self) -> str | None:
        """One line for the user after the run (what was written), or None."""
        return None


class JsonLinesSink(Sink):
    """One JSON object per processed frame: ``{"frame", "time", "width", "height", "detections"}``,
    plus ``"file"`` for frames from image files.

    ``detections`` is a list of ``{"label", "class_id", "score", "box": [x0, y0, x1, y1]}`` with boxes
    in frame pixels. An input the source skipped gets ``{"frame", "time", "file", "error"}``. ``"-"``
    writes to stdout. Each line is written whole and flushed, so the file is valid JSON lines after
    any interruption and can be followed with ``tail -f``.
    """

    def __init__(self, target: str | Path, *, stream: IO[str] | None = None) -> None:
        self.target = str(target)
        if stream is not None:
            self._file, self._owned = stream, False
        elif self.target == "-":
            self._file, self._owned = sys.stdout, False
        else:
            path = Path(self.target)
            if not path.parent.is_dir():
                raise EdgeError(f"--json {path}: folder {path.parent} does not exist")
            try:
                self._file, self._owned = open(path, "w", encoding="utf-8"), True
            except OSError as exc:
                raise EdgeError(f"--json {path}: cannot write ({exc.strerror})") from None
        self.lines = 0

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

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._owned and not self._file.closed:
            self._file.close()
        elif not self._owned:
            try:
                self._file.flush()
            except (OSError, ValueError):
                pass


class VideoSink(Sink):
    """Annotated frames into a video file, written under a temporary name and renamed on close.

    The writer opens on the first frame, with that frame's size; later frames of another size are
    resized into one preallocated buffer of the first size. ``fps`` is the file's frame rate.
    """

    needs_annotation = True

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        self.path = Path(path)
        fourcc = _FOURCC.get(self.path.suffix.lower())
        if fourcc is None:
            raise EdgeError(f"--video {self.path}: use one of {', '.join(_FOURCC)}")
        if not self.path.parent.is_dir():
            raise EdgeError(f"--video {self.path}: folder {self.path.parent} does not exist")
        self.fourcc = fourcc
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.tmp_path = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self._writer = None
        self._size: tuple[int, int] | None = None  # width, height
        self._resized: np.ndarray | None = None
        self.frames = 0

    def _open(self, width: int, height: int) -> None:
        writer = cv2.VideoWriter(str(self.tmp_path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*self.fourcc),
                                 self.fps, (width, height))
        if not writer.isOpened():
            raise EdgeError(f"--video {self.path}: OpenCV cannot write {self.fourcc} video here")
        self._writer, self._size = writer, (width, height)

    def write(self, frame, detections, annotated) -> None:
        image = annotated if annotated is not None else frame.image
        h, w = image.shape[:2]
        if self._writer is None:
            self._open(w, h)
        if (w, h) != self._size:
            if self._resized is None:
                self._resized = np.empty((self._size[1], self._size[0], 3), np.uint8)
            cv2.resize(image, self._size, dst=self._resized, interpolation=cv2.INTER_AREA)
            image = self._resized
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.release()
        if self.frames:
            os.replace(self.tmp_path, self.path)
        else:
            self.tmp_path.unlink(missing_ok=True)

    def report(self) -> str | None:
        return f"wrote {self.path} ({self.frames} frames)" if self.frames else None
