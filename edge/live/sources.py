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
"""

from __future__ import annotations

import glob
import math
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge.errors import BadFrameError, EdgeError
from edge.images import IMAGE_EXTENSIONS, list_images, read_image

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


class VideoCaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: camera index, file, URL or GStreamer pipeline.

    Frames are decoded into one reused array (``VideoCapture.read(image)`` writes in place while
    the size stays the same).
    """

    def __init__(self, spec: str, target, api: int, *, kind: str, live: bool, loop: bool = False,
                 realtime: bool = False, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        super().__init__(spec)
        self._target = target
        self._api = api
        self.kind = kind
        self.live = live or realtime
        self.reconnectable = live
        self.loop = loop
        self.stall_timeout = stall_timeout
        self._cap = None
        self._lock = threading.Lock()
        self._reading = None  # the capture a read is blocked in, if any
        self._frame: np.ndarray | None = None
        self._pacer: _Pacer | None = None
        self._realtime = realtime
        self._open()

    def _open(self) -> None:
        params = []
        if self._api == cv2.CAP_FFMPEG and self.kind == "stream":
            # FFmpeg's interrupt callback turns a hung network read into a failed read we can handle.
            timeout_ms = int(max(1.0, self.stall_timeout) * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(self._target, self._api, params) if params else cv2.VideoCapture(self._target, self._api)
        if not cap.isOpened():
            cap.release()
            error = SourceUnavailable if self.kind != "file" else SourceError
            raise error(f"--source {self.spec}: cannot open {self.kind} ({self._open_hint()})")
        self._cap = cap
        self._frame = None  # a reader stuck in the old capture keeps its own buffer
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else None
        width, height = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
        known = all(math.isfinite(v) and 0 < v <= 16384 for v in (width, height))
        self.frame_shape = (int(height), int(width), 3) if known else None
        if self._realtime:
            self._pacer = _Pacer(self.fps or SYNTHETIC_FPS)

    def describe(self) -> str:
        fps = f", {self.fps:g} fps" if self.fps else ""
        return f"{self.kind} {self.spec}{fps}"

    def _open_hint(self) -> str:
        if self.kind == "camera":
            return "is it connected, and is this user in the 'video' group?"
        if self.kind == "file":
            return "not a video OpenCV's FFmpeg backend can decode"
        if self.kind == "stream":
            return "is the URL reachable?"
        return "check the pipeline with gst-launch-1.0"

    def _read(self) -> np.ndarray | None:
        cap, buffer = self._cap, self._frame
        if cap is None:
            raise SourceError(f"--source {self.spec}: not open")
        if self._pacer is not None:
            self._pacer.wait()
        with self._lock:
            self._reading = cap
        try:
            ok, frame = cap.read(buffer) if buffer is not None else cap.read()
        finally:
            with self._lock:
                self._reading = None
                abandoned = cap is not self._cap
        if abandoned:  # reopened by another thread while this read hung: this reader owns the old one
            cap.release()
            return None
        if not ok and self.loop and self.kind == "file":
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = cap.read(buffer) if buffer is not None else cap.read()
            if not ok:  # some containers cannot seek: reopen from the start
                self.reopen()
                cap = self._cap
                ok, frame = cap.read(buffer) if buffer is not None else cap.read()
        if not ok or frame is None or frame.size == 0:
            return None
        self._frame = frame
        return frame

    def _release(self) -> None:
        with self._lock:
            cap, self._cap = self._cap, None
            if cap is self._reading:
                return  # a read hangs in it: releasing under it could crash; the reader releases it
        if cap is not None:
            cap.release()


class ImageFolderSource(Source):
    """Images from a folder or a glob, in sorted order.

    An unreadable file (not an image, truncated, absurdly large, not a regular file) raises
    :class:`SkippedInput` naming it, and the next read goes on with the next file; a folder none of
    whose files can be read ends with :class:`SourceError`. :attr:`frame_name` is the file of the
    last frame.
    """

    def __init__(self, spec: str, paths: list[Path], *, loop: bool = False, realtime: bool = False,
                 fps: float = 1.0) -> None:
        super().__init__(spec)
        self.paths = paths
        self.loop = loop
        self.live = realtime
        self.fps = fps if realtime else None
        self._pacer = _Pacer(fps) if realtime else None
        self._index = 0
        self._skipped_in_a_row = 0

    def _open(self) -> None:
        self._index = 0

    def _read(self) -> np.ndarray | None:
        if self._index >= len(self.paths):
            if not self.loop:
                return None
            self._index = 0
        path = self.paths[self._index]
        self._index += 1
        if self._pacer is not None:
            self._pacer.wait()
        try:
            # read_image allocates per image: fine for a folder of stills, which is not a video hot loop.
            frame = read_image(path)
        except EdgeError as exc:  # ImageError: undecodable, truncated, too large, not a file
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= len(self.paths):
                raise SourceError(f"--source {self.spec}: none of the images could be read") from None
            raise SkippedInput(str(path), getattr(exc, "reason", None) or str(exc)) from None
        self._skipped_in_a_row = 0
        self.frame_name = str(path)
        return frame


class Picamera2Source(Source):
    """Raspberry Pi camera through Picamera2 (``apt install python3-picamera2``), BGR frames."""

    live = True
    reconnectable = True

    def __init__(self, spec: str, camera: int = 0, size: tuple[int, int] = SYNTHETIC_SIZE) -> None:
        super().__init__(spec)
        try:
            from picamera2 import Picamera2  # noqa: PLC0415 -- optional, Raspberry Pi only
        except ImportError:
            raise SourceError(f"--source {spec}: Picamera2 is not installed (on Raspberry Pi OS: "
                              "sudo apt install python3-picamera2, and create the venv with "
                              "--system-site-packages)") from None
        self._factory = Picamera2
        self.camera, self.size = camera, size
        self._cam = None
        self._frame = np.empty((size[1], size[0], 3), np.uint8)
        self.fps = None
        self._open()

    def _open(self) -> None:
        try:
            cam = self._factory(self.camera)
            # RGB888 in libcamera's naming is BGR byte order in memory, which is what OpenCV wants.
            cam.configure(cam.create_video_configuration(main={"size": self.size, "format": "RGB888"}))
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError/IndexError for a missing camera
            raise SourceUnavailable(f"--source {self.spec}: cannot start Pi camera {self.camera} ({exc})") from None
        self._cam = cam

    def _read(self) -> np.ndarray | None:
        array = self._cam.capture_array("main")
        if array.shape[:2] != self._frame.shape[:2]:
            self._frame = np.empty((*array.shape[:2], 3), np.uint8)
        np.copyto(self._frame, array[:, :, :3])
        return self._frame

    def _release(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
                cam.close()
            except Exception:
                pass


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
