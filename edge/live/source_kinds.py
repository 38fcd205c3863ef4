"""The sources :func:`~edge.live.sources.open_source` opens (``synthetic`` is :mod:`edge.live.synthetic`).

:class:`VideoCaptureSource`: anything ``cv2.VideoCapture`` opens (camera index or device, video
file, network stream, GStreamer pipeline); :class:`ImageFolderSource`: a folder or glob of images;
:class:`Picamera2Source`: the Raspberry Pi camera through Picamera2 (an optional import).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.images import read_image
from edge.live.sources import (DEFAULT_STALL_TIMEOUT, SYNTHETIC_FPS, SYNTHETIC_SIZE, SkippedInput, Source, SourceError,
                               SourceUnavailable, _Pacer)


class VideoCaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: camera index, file, URL or GStreamer pipeline.

    Frames are decoded into one reused array (``VideoCapture.read(image)`` writes in place while
    the size stays the same).
    """

    def __init__(self, spec: str, target, api: int, *, kind: str, live: bool, loop: bool = False,
                 realtime: bool = False, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 decode_threads: int | None = None) -> None:
        super().__init__(spec)
        self.decode_threads = decode_threads  # None: see _decoder_threads
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
        threads = self._decoder_threads()
        cap = None
        if threads:
            cap = cv2.VideoCapture(self._target, self._api, params + [cv2.CAP_PROP_N_THREADS, threads])
            if not cap.isOpened():  # an OpenCV build whose FFmpeg backend refuses the parameter
                cap.release()
                cap = None
        if cap is None:
            cap = cv2.VideoCapture(self._target, self._api, params) if params else cv2.VideoCapture(self._target,
                                                                                                   self._api)
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

    def _decoder_threads(self) -> int:
        """FFmpeg decoder threads to ask for; 0 leaves FFmpeg's own choice (one per core).

        A file read for the detector (not live) is decoded on the capture thread alone: the reader
        waits for the detector anyway, so decoding only has to keep the detector's pace, and
        FFmpeg's extra threads would compete with the interpreter's for the cores (fixture video,
        2 cores, all of them the interpreter's: a median 1.8% faster end to end, 8 of 14 rounds,
        benchmarks/decode_threads.py; a small gain, kept because it also costs three threads less).
        Live sources keep FFmpeg's choice: they must decode every frame at the stream's own rate,
        whatever the detector does.
        """
        if self.decode_threads is not None:
            return self.decode_threads
        if self._api != cv2.CAP_FFMPEG or self.live or not hasattr(cv2, "CAP_PROP_N_THREADS"):
            return 0
        return 1

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
