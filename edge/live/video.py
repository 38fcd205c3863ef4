"""An annotated video file: :class:`VideoSink`, with segments and the disk checks that keep it playable.

Also the container table (:data:`_FOURCC`, which FourCCs to try per container, browsers' first) and
the MP4 index check that :mod:`edge.live.clips` shares.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.live.sinks import Sink, SinkError, _why

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


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


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
