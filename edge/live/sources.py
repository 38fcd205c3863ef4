"""Frame sources for ``edge run``: one ``--source`` string, parsed by its form.

==========================================  =========================================================
``0``, ``/dev/video0``                      camera through OpenCV (V4L2 on Linux)
``clip.mp4``                                video file (``loop`` rewinds, ``realtime`` paces at its fps)
``rtsp://...``, ``http://...``, ...         network stream through OpenCV's FFmpeg backend
``nvarguscamerasrc ! ... ! appsink``        GStreamer pipeline (needs an OpenCV built with GStreamer)
``picamera2`` / ``picamera2:1``             Raspberry Pi camera through Picamera2 (optional import)
``photos/``, ``'photos/*.jpg'``             a folder or glob of images, in sorted order
``synthetic``, ``synthetic:320x240@15``     moving shapes drawn into a preallocated frame
==========================================  =========================================================

A :class:`Source` is synchronous and single-threaded: :meth:`Source.read` returns the next BGR
uint8 frame, often the same reused array each time (copy it to keep it), or ``None`` at the end of
a finite stream. Threading, the latest-frame ring, stall detection and reconnecting live in
:mod:`edge.live.capture`; a source only knows how to (re)open and read itself.

Here: the :class:`Source` contract, its errors and :class:`FrameCounters`, and :func:`open_source`,
which parses ``--source``. The sources it opens are in :mod:`edge.live.source_kinds` (cameras,
files, streams, pipelines, images, the Pi camera) and :mod:`edge.live.synthetic`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge.errors import BadFrameError, EdgeError
from edge.images import IMAGE_EXTENSIONS, list_images

DEFAULT_STALL_TIMEOUT = 5.0  # seconds without a frame before a source is reopened
SYNTHETIC_SIZE = (640, 480)  # width, height
SYNTHETIC_FPS = 30.0
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_SYNTHETIC = re.compile(r"^synthetic(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?$")


class SourceError(EdgeError):
    """A source that cannot be opened or read (bad spec, missing file, camera gone)."""


class SourceUnavailable(SourceError):
    """A camera, stream or pipeline that exists in the spec but cannot be opened now (not plugged in
    yet, still enumerating, a stream not started): worth waiting for (``--wait-for-source``)."""


class SkippedInput(BadFrameError):
    """One input of a source (an image file) that cannot be used; the source goes on with the next.

    ``name`` is the input (a file path); the message says why.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class FrameCounters:
    """What happened to a source's frames, counted in one place for the stats line, the preview
    page and the summary. Written by the capture thread and the loop; :meth:`add` takes a lock so
    that two threads counting the same event never lose one."""

    FIELDS = ("frames_read", "frames_dropped", "bad_frames", "read_errors", "reconnects", "stalls")

    def __init__(self) -> None:
        self.frames_read = 0  # frames delivered by the source
        self.frames_dropped = 0  # read but never given to the detector (a newer frame won)
        self.bad_frames = 0  # inputs or frames that could not be used: skipped and counted
        self.read_errors = 0  # reads that raised, or live streams that ended
        self.reconnects = 0  # successful reopenings
        self.stalls = 0  # reads or opens abandoned after the stall timeout
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}


class Source:
    """One frame producer. Subclasses implement :meth:`_open`, :meth:`_read` and :meth:`_release`.

    ``live`` sources (cameras, streams, realtime-paced files) produce frames on their own clock, so
    the capture thread drops stale ones; other sources wait for the detector, so every frame counts.
    ``fps`` is the nominal frame rate (float) or ``None`` when unknown; ``frame_shape`` the shape of
    the frames to come, where the source knows it before the first (so buffers can be sized up front);
    ``frame_name`` the file the last frame came from, for sources of files.
    """

    live: bool = False
    fps: float | None = None
    #: ``True`` when reading past a failure makes sense only after :meth:`reopen` (cameras, streams).
    reconnectable: bool = False

    frame_shape: tuple[int, ...] | None = None
    frame_name: str | None = None
    #: Seconds without a frame before the capture thread reopens the source.
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    #: Frames the capture thread should read ahead before measuring memory (a scene generator's
    #: cycle, say): bench uses it for its traced warm-up.
    warmup_hint: int = 0

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.counters = FrameCounters()

    @property
    def frames_read(self) -> int:
        return self.counters.frames_read

    def read(self) -> np.ndarray | None:
        """The next frame (BGR uint8, possibly a reused buffer), or ``None`` at the end of the stream.

        Raises :class:`SkippedInput` for one unusable input (counted as bad); the next read goes on.
        """
        try:
            frame = self._read()
        except SkippedInput:
            self.counters.add("bad_frames")
            raise
        if frame is not None:
            self.counters.add("frames_read")
        return frame

    def reopen(self) -> None:
        """Close and open again (reconnect); raises :class:`SourceError` while it is unavailable."""
        self._release()
        self._open()

    def close(self) -> None:
        self._release()

    def describe(self) -> str:
        fps = f", {self.fps:g} fps" if self.fps else ""
        return f"{type(self).__name__.removesuffix('Source').lower()} {self.spec}{fps}"

    # ---- subclass hooks -----------------------------------------------------------------------

    def _open(self) -> None:
        pass

    def _read(self) -> np.ndarray | None:
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Pacer:
    """Sleeps so that frames come out at ``fps`` (used for ``realtime`` files and synthetic)."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next = None

    def wait(self) -> None:
        now = time.monotonic()
        if self._next is None or now - self._next > 1.0:  # first frame, or fell far behind: resync
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period

    def reset(self) -> None:
        self._next = None


# ---- parsing --------------------------------------------------------------------------------------


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (pip's opencv-python wheels cannot)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def _is_gstreamer(spec: str) -> bool:
    return "!" in spec and ("appsink" in spec or "src" in spec.split("!", 1)[0])


def _image_paths(spec: str) -> list[Path] | None:
    """The images a folder or glob names (regular files only), or None when ``spec`` is neither."""
    if Path(spec).is_dir() or any(ch in spec for ch in "*?["):
        return list_images(spec)
    return None


def open_source_waiting(spec: str, wait: float, *, log=None, backoff: tuple[float, float] = (0.5, 8.0),
                        **options) -> Source:
    """:func:`open_source`, waiting up to ``wait`` seconds (with backoff, a line each try through
    ``log``) for a camera, stream or pipeline that is not up yet. Other errors are raised at once."""
    deadline = time.monotonic() + wait
    delay = backoff[0]
    while True:
        try:
            return open_source(spec, **options)
        except SourceUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                hint = "" if wait else "; --wait-for-source S waits for it"
                raise SourceUnavailable(f"{exc}{hint}") from None
            pause = min(delay, left)
            if log is not None:
                log(f"waiting for the source ({exc}); trying again in {pause:.1f} s, {left:.0f} s left")
            time.sleep(pause)
            delay = min(delay * 2, backoff[1])


def open_source(spec: str, *, loop: bool = False, realtime: bool = False,
                stall_timeout: float = DEFAULT_STALL_TIMEOUT, seed: int = 0) -> Source:
    """Open ``spec`` (see the module docstring for the forms) and return a ready :class:`Source`.

    ``loop`` rewinds files, folders and globs at their end; ``realtime`` paces files, folders and
    ``synthetic`` at their fps (so frames are dropped like a camera's when the detector is slower);
    ``stall_timeout`` (seconds) bounds network opens and reads. Raises :class:`SourceError`.
    """
    source = _open_source(spec, loop=loop, realtime=realtime, stall_timeout=stall_timeout, seed=seed)
    source.stall_timeout = float(stall_timeout)
    return source


def _open_source(spec: str, *, loop: bool, realtime: bool, stall_timeout: float, seed: int) -> Source:
    spec = str(spec).strip()
    if not spec:
        raise SourceError("--source is empty: give a camera index, file, folder, URL, pipeline or 'synthetic'")
    if stall_timeout <= 0:
        raise SourceError(f"--stall-timeout {stall_timeout}: must be more than 0 seconds")
    from edge.live.source_kinds import ImageFolderSource, Picamera2Source, VideoCaptureSource

    match = _SYNTHETIC.match(spec)
    if match:
        width = int(match.group(1)) if match.group(1) else SYNTHETIC_SIZE[0]
        height = int(match.group(2)) if match.group(2) else SYNTHETIC_SIZE[1]
        fps = float(match.group(3)) if match.group(3) else SYNTHETIC_FPS
        if fps <= 0:
            raise SourceError(f"--source {spec}: fps must be more than 0")
        from edge.live.synthetic import SyntheticSource

        return SyntheticSource(spec, width, height, fps=fps, realtime=realtime, seed=seed)
    if spec.startswith("synthetic"):
        raise SourceError(f"--source {spec}: write synthetic, synthetic:WIDTHxHEIGHT or synthetic:WxH@FPS")
    if spec == "picamera2" or spec.startswith("picamera2:"):
        index = spec.partition(":")[2] or "0"
        if not index.isdigit():
            raise SourceError(f"--source {spec}: write picamera2 or picamera2:N (camera number)")
        return Picamera2Source(spec, int(index))
    if spec.isdigit() or re.fullmatch(r"/dev/video\d+", spec):
        api = cv2.CAP_V4L2 if os.name == "posix" and hasattr(cv2, "CAP_V4L2") and Path("/dev").is_dir() else cv2.CAP_ANY
        target = int(spec) if spec.isdigit() else spec
        return VideoCaptureSource(spec, target, api, kind="camera", live=True, stall_timeout=stall_timeout)
    if spec.lower().startswith(STREAM_SCHEMES):
        return VideoCaptureSource(spec, spec, cv2.CAP_FFMPEG, kind="stream", live=True, stall_timeout=stall_timeout)
    if _is_gstreamer(spec):
        if not gstreamer_available():
            raise SourceError(
                "--source is a GStreamer pipeline but this OpenCV has no GStreamer (cv2.getBuildInformation() "
                "says 'GStreamer: NO'; pip's opencv-python wheels never have it): use the distribution's "
                "OpenCV (apt install python3-opencv, venv with --system-site-packages; JetPack ships one "
                "with GStreamer) or build OpenCV with -DWITH_GSTREAMER=ON")
        return VideoCaptureSource(spec, spec, cv2.CAP_GSTREAMER, kind="pipeline", live=True,
                                  stall_timeout=stall_timeout)
    images = _image_paths(spec)
    if images is not None:
        if not images:
            raise SourceError(f"--source {spec}: no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found there")
        return ImageFolderSource(spec, images, loop=loop, realtime=realtime)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"--source {spec}: no such file, and not a camera index, URL, GStreamer pipeline, "
                          "folder, glob, picamera2 or synthetic")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource(spec, [path], loop=loop, realtime=realtime)
    return VideoCaptureSource(spec, str(path), cv2.CAP_FFMPEG, kind="file", live=False, loop=loop,
                              realtime=realtime, stall_timeout=stall_timeout)
