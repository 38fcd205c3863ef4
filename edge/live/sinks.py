"""Where the live loop's results go: JSON lines, an annotated video file, the preview page.

A sink gets, per processed frame, the :class:`~edge.detector.step.Frame` (image, source frame
number, capture time in Unix seconds, file name for image sources), the detections (views, valid
during the call) and the annotated copy (or ``None`` when no sink asked for one); per input the
source skipped, the frame with its ``error``. Sinks must not keep references to any of them past
the call. A new sink subclasses :class:`Sink` here and is built in ``edge.commands.run``'s
``build_sinks``.

Output can fail mid-run (a full disk, the reader of a pipe gone): a sink then raises
:class:`SinkError` with one line and leaves what it wrote whole, and the loop stops cleanly.
"""

from __future__ import annotations

import errno
import json
from contextlib import contextmanager
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge.contract.detections import Detections
from edge.detector.step import Frame
from edge.errors import EdgeError

# Container -> FourCC that OpenCV's FFmpeg backend writes without extra codecs (pip wheels included).
# Container -> FourCCs to try, first the one browsers play. pip's OpenCV wheels have no H.264 encoder
# (avc1 fails to open there; a distribution's or JetPack's OpenCV often has one), so .mp4 falls back to
# MPEG-4 Part 2, which browsers do not play; .webm (VP8) plays in every browser with any OpenCV build.
_FOURCC = {".mp4": ("avc1", "mp4v"), ".m4v": ("avc1", "mp4v"), ".mov": ("avc1", "mp4v"), ".webm": ("VP80",),
           ".avi": ("MJPG",), ".mkv": ("XVID",)}
BROWSER_PLAYABLE = {"avc1", "VP80", "VP90"}


@contextmanager
def _stderr_silenced(silence: bool):
    """File descriptor 2 to /dev/null for the duration (native libraries write there directly)."""
    if not silence:
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


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
    """

    def __init__(self, target: str | Path, *, stream=None) -> None:
        self.target = str(target)
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


DISK_RESERVE = 32 * 2**20  # free bytes a video keeps for closing the file (index, buffered frames)
INDEX_BYTES_PER_FRAME = 64  # an MP4's index per frame (the muxer holds ~57 B in memory, writes it on close)
CHECK_SECONDS, CHECK_FRAMES = 0.5, 15  # the disk is checked before a frame this often, whichever comes first
STALL_MIN_BYTES = 4 * 2**20  # estimated video that must go unwritten before a stalled file is suspected
STALL_VIDEO_SECONDS = 1800  # video with no byte written after which a file is stalled whatever the disk says
_INDEXED = (".mp4", ".m4v", ".mov")  # containers that play only once closed (index at the end)


def _has_mp4_index(path: Path) -> bool:
    """Whether an MP4/MOV file has its whole ``moov`` box (no ``moov``: no player can read it)."""
    try:
        with open(path, "rb") as handle:
            end = os.fstat(handle.fileno()).st_size
            pos = 0
            while pos + 8 <= end:
                handle.seek(pos)
                head = handle.read(16)
                size, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if size == 1 and len(head) == 16:
                    size = int.from_bytes(head[8:16], "big")
                elif size == 0:
                    size = end - pos
                if size < 8:
                    return False
                if kind == b"moov":
                    return pos + size <= end
                pos += size
    except OSError:
        return False
    return False


class VideoSink(Sink):
    """Annotated frames into a video file, written under a temporary name and renamed on close.

    The writer opens on the first frame, with that frame's size; later frames of another size are
    resized into one preallocated buffer of the first size. ``fps`` is the file's frame rate.

    ``segment_minutes`` starts a new file every that many minutes of video (counted in frames at
    ``fps``): ``STEM-0001.EXT``, ``STEM-0002.EXT``, ... beside ``path``, each closed and renamed into
    place when it ends. An MP4 has its index at the end, so one cut by SIGKILL or power loss does
    not play: segments bound that loss to one segment, and the muxer's in-memory index to one
    segment's frames.

    A full disk stops the recording with the file closed (what was recorded plays) and
    :class:`SinkError`. Before a frame, every ``CHECK_FRAMES`` frames or ``CHECK_SECONDS``, the sink
    checks the disk: the free space must stay above ``reserve`` bytes (plus the index the open file
    will need; 0: no check), enough for the muxer to finish the file. The writer failing anyway (the
    disk filled at once, a quota) is caught by its status (OpenCV 5's ``write`` returns False;
    OpenCV 4's returns None) and, where the backend gives none, by the file no longer growing while
    the disk refuses a test write.
    """

    needs_annotation = True
    check_write_status = True  # False: rely on the disk checks alone, as with OpenCV 4 (tests use it)

    def __init__(self, path: str | Path, fps: float | None = None, *, segment_minutes: float | None = None,
                 reserve: int = DISK_RESERVE) -> None:
        self.path = Path(path)
        fourccs = _FOURCC.get(self.path.suffix.lower())
        if fourccs is None:
            raise EdgeError(f"--video {self.path}: use one of {', '.join(_FOURCC)}")
        self._fourccs, fourcc = fourccs, fourccs[0]
        if not self.path.parent.is_dir():
            raise EdgeError(f"--video {self.path}: folder {self.path.parent} does not exist")
        if segment_minutes is not None and not segment_minutes > 0:
            raise EdgeError(f"--video-segment {segment_minutes:g}: must be more than 0 minutes")
        self.fourcc = fourcc
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.segment_frames = max(1, round(segment_minutes * 60 * self.fps)) if segment_minutes else 0
        self.reserve = max(0, int(reserve))
        self.frames = 0  # frames given to the writer
        self.kept_frames = 0  # frames in closed files renamed into place
        self.files: list[Path] = []  # those files
        self.error: SinkError | None = None
        self._problems: list[str] = []  # what went wrong closing a file at the end
        self._approximate = False  # kept_frames counts frames FFmpeg may not have written (a stalled file)
        self._index = 0
        self._final, self.tmp_path = self._names(1)
        self._writer = None
        self._size: tuple[int, int] | None = None  # width, height
        self._resized: np.ndarray | None = None
        self._file_frames = 0
        self._since_check, self._checked_at = 0, 0.0
        self._grown_size = self._grown_frames = self._step = 0
        self._stall_bytes = STALL_MIN_BYTES

    def _names(self, index: int) -> tuple[Path, Path]:
        """The final and the temporary name of file ``index`` (1, 2, ... with segments)."""
        stem = f"{self.path.stem}-{index:04d}" if self.segment_frames else self.path.stem
        return self.path.with_name(f"{stem}{self.path.suffix}"), self.path.with_name(f".{stem}.part{self.path.suffix}")

    def _open(self) -> None:
        self._index += 1
        self._final, self.tmp_path = self._names(self._index)
        self._check_space(0)
        width, height = self._size
        writer = None
        choices = self._fourccs if self._index == 1 else (self.fourcc,)
        for n, fourcc in enumerate(choices):
            # A codec this build lacks makes FFmpeg print a page of errors: hush all but the last try.
            with _stderr_silenced(n < len(choices) - 1):
                writer = cv2.VideoWriter(str(self.tmp_path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc),
                                         self.fps, (width, height))
            if writer.isOpened():
                self.fourcc = fourcc
                break
            writer.release()
            self.tmp_path.unlink(missing_ok=True)
        if not writer.isOpened():
            message = f"--video {self.path}: OpenCV cannot write {self.fourcc} video to {self.tmp_path.name}"
            if self._index == 1:
                raise EdgeError(message)
            self.error = SinkError(f"{message}; {self._kept()}")
            raise self.error
        self._writer = writer
        self._file_frames = self._since_check = 0
        self._checked_at = time.monotonic()
        self._grown_size, self._grown_frames, self._step = self._file_size(), 0, 0
        self._stall_bytes = STALL_MIN_BYTES

    def write(self, frame, detections, annotated) -> None:
        if self.error is not None:
            raise self.error
        image = annotated if annotated is not None else frame.image
        h, w = image.shape[:2]
        if self._size is None:
            self._size = (w, h)
        if self._writer is None:
            self._open()
        elif self._since_check >= CHECK_FRAMES or time.monotonic() - self._checked_at >= CHECK_SECONDS:
            self._check()
        if (w, h) != self._size:
            if self._resized is None:
                self._resized = np.empty((self._size[1], self._size[0], 3), np.uint8)
            cv2.resize(image, self._size, dst=self._resized, interpolation=cv2.INTER_AREA)
            image = self._resized
        status = self._writer.write(image)
        self.frames += 1
        self._file_frames += 1
        self._since_check += 1
        if status is False and self.check_write_status:
            # FFmpeg failed to write out its buffer: the frames since the file last grew were in it.
            problem = self._probe() or "the writer failed"
            self._fail(f"{problem}: FFmpeg could not write frame {self._file_frames} of {self.tmp_path.name}",
                       lost=self._file_frames - self._grown_frames)
        if self.segment_frames and self._file_frames >= self.segment_frames:
            problem = self._finish_file()
            if problem:
                self.error = SinkError(f"--video {self.path}: {problem}; {self._kept()}")
                raise self.error

    # ---- the disk checks ----------------------------------------------------------------------

    def _check(self) -> None:
        self._since_check, self._checked_at = 0, time.monotonic()
        self._check_space(self._file_frames)
        size = self._file_size()
        if size > self._grown_size:
            self._step = max(self._step, size - self._grown_size)
            self._grown_size, self._grown_frames = size, self._file_frames
            return
        # Not grown since the last check: FFmpeg writes in blocks (256 KB here), so that is normal
        # for a while; it is a stall once far more video than a block should have been written.
        since = self._file_frames - self._grown_frames
        if since >= self.fps * STALL_VIDEO_SECONDS:
            self._fail(f"the file stopped growing at {_mb(size)}", lost=since)
        if self._grown_frames and since >= self.fps:
            expected = since * size // self._grown_frames
            if expected >= max(self._stall_bytes, 16 * self._step):
                problem = self._probe()
                if problem is None:  # the disk takes writes: the writer holds a large buffer
                    self._stall_bytes = 2 * expected
                    return
                self._fail(f"{problem}: the file stopped growing at {_mb(size)}", lost=since)

    def _check_space(self, frames: int) -> None:
        if not self.reserve:
            return
        try:
            vfs = os.statvfs(self.path.parent)
        except OSError as exc:
            self._fail(f"cannot check the free space ({exc.strerror})")
        free = vfs.f_bavail * vfs.f_frsize
        need = self.reserve + INDEX_BYTES_PER_FRAME * frames
        if free < need:
            self._fail(f"disk full ({_mb(free)} free, below the {_mb(need)} kept to close the file)")

    def _file_size(self) -> int:
        try:
            return os.stat(self.tmp_path).st_size
        except OSError as exc:
            self._fail(f"cannot read {self.tmp_path.name} ({exc.strerror})")

    def _probe(self) -> str | None:
        """Write and sync 64 KB beside the video: None when the disk takes it, else why not."""
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".space", dir=self.path.parent)
        except OSError as exc:
            return _why(exc)
        try:
            block, done = bytes(65536), 0
            while done < len(block):
                done += os.write(fd, block[done:])
            os.fsync(fd)
            return None
        except OSError as exc:
            return _why(exc)
        finally:
            os.close(fd)
            try:
                os.unlink(name)
            except OSError:
                pass

    def _fail(self, reason: str, lost: int = 0) -> None:
        """Close the open file (what was recorded plays) and stop with ``reason``; ``lost``: frames
        at the end of the file that never reached the disk."""
        problem = self._finish_file(lost)
        self.error = SinkError(f"--video {self.path}: {reason}; {problem + '; ' if problem else ''}{self._kept()}")
        raise self.error

    # ---- closing files ------------------------------------------------------------------------

    def _finish_file(self, lost: int = 0) -> str | None:
        """Release the open file and rename it into place; None, or what went wrong. ``lost``: the
        last frames, given to a writer that could no longer write them."""
        writer, self._writer = self._writer, None
        if writer is None:
            return None
        writer.release()
        frames, self._file_frames = self._file_frames, 0
        if not frames:
            self.tmp_path.unlink(missing_ok=True)
            return None
        if self.path.suffix.lower() in _INDEXED and not _has_mp4_index(self.tmp_path):
            return (f"{frames} frames lost: {self.tmp_path.name} has no index (it could not be written) "
                    "and does not play")
        try:
            os.replace(self.tmp_path, self._final)
        except OSError as exc:
            return f"{frames} frames left in {self.tmp_path.name}: cannot rename it ({exc.strerror})"
        self.files.append(self._final)
        self.kept_frames += frames - lost
        if lost:  # FFmpeg writes in blocks: the count of frames that did is known to a block
            self._approximate = True
            return f"the last ~{lost} frames never reached the disk"
        return None

    def _written(self) -> str:
        """The files kept and their frames: ``v.mp4 (N frames)``, ``v-0001.mp4 .. v-0003.mp4 (3 files, N frames)``."""
        about = "up to " if self._approximate else ""
        if len(self.files) == 1:
            return f"{self.files[0]} ({about}{self.kept_frames} frames)"
        return f"{self.files[0]} .. {self.files[-1].name} ({len(self.files)} files, {about}{self.kept_frames} frames)"

    def _kept(self) -> str:
        return f"kept {self._written()}" if self.files else "no frame kept"

    def close(self) -> None:
        problem = self._finish_file()
        if problem:
            self._problems.append(f"--video {self.path}: {problem}")

    def report(self) -> str | None:
        playable = "" if self.fourcc in BROWSER_PLAYABLE else ", which browsers do not play: use .webm for VP8"
        lines = [f"wrote {self._written()}, codec {self.fourcc}{playable}"] if self.files else []
        return "; ".join(lines + self._problems) or None
