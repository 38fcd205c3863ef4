"""Hands the newest annotated frame from the detector thread to the preview's viewer threads.

The detector never waits for a viewer: :meth:`FrameExchange.offer` copies the annotated frame into
one preallocated buffer only when a viewer has asked for a new frame (or the kept snapshot frame is
older than ``snapshot_interval``) and the buffer is not being encoded, and returns at once otherwise.
JPEG encoding happens on the viewer's own thread, at the viewer's pace, and only on request.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

SNAPSHOT_INTERVAL = 0.2  # seconds: how old the frame kept for /snapshot.jpg may get while frames arrive


class FrameExchange:
    """Hands the newest annotated frame from the detector thread to viewer threads, lossy by design.

    For ``/snapshot.jpg`` the exchange also keeps a copy of the newest frame at least every
    ``snapshot_interval`` seconds while frames arrive, even when nobody streams, and encodes it only
    when a snapshot is requested. Keeping the raw frame is cheaper than encoding every frame ahead of
    time: a copy into the one preallocated buffer (a memcpy, a few times a second) instead of a JPEG
    encode (tens of ms on a small board, and a new bytes object each time) for frames nobody may ask for.
    Memory stays fixed: one frame buffer, reallocated only when the frame size changes, and the last
    JPEG.
    """

    def __init__(self, quality: int = 80, snapshot_interval: float = SNAPSHOT_INTERVAL) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._kept_at = float("-inf")  # time.monotonic() of the last copy
        self._jpeg: np.ndarray | None = None  # cv2.imencode's buffer, served without another copy
        self._jpeg_seq = 0
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
        self._wanted = False
        self.snapshot_interval = float(snapshot_interval)
        self.viewers = 0
        self.offered = 0  # frames copied because a viewer asked for one
        self.kept = 0  # frames copied only to keep /snapshot.jpg recent
        self.dropped = 0  # frames skipped while someone was watching
        self.encoded = 0

    def presize(self, frame_shape: tuple[int, ...]) -> None:
        """Allocate the frame buffer now, for annotated (colour) frames of ``frame_shape``, before the
        first frame: a camera's buffer is then part of its fixed, known memory."""
        shape = tuple(int(n) for n in frame_shape[:2]) + (3,)
        with self._cond:
            if self._frame is None or self._frame.shape != shape:
                self._frame = np.empty(shape, np.uint8)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the frame buffer as allocated now (the last JPEG is not counted)."""
        frame = self._frame
        return frame.nbytes if frame is not None else 0

    def wants_frame(self) -> bool:
        return self._wanted or time.monotonic() - self._kept_at >= self.snapshot_interval

    def offer(self, frame: np.ndarray) -> bool:
        """Called by the detector: never blocks. Returns whether the frame was taken."""
        wanted = self._wanted
        now = time.monotonic()
        if not wanted and now - self._kept_at < self.snapshot_interval:
            if self.viewers:
                self.dropped += 1
            return False
        if not self._cond.acquire(blocking=False):  # a viewer is encoding: skip this frame
            if wanted or self.viewers:
                self.dropped += 1
            return False
        try:
            if self._frame is None or self._frame.shape != frame.shape or self._frame.dtype != frame.dtype:
                self._frame = np.empty_like(frame)  # first frame or a size change only
            np.copyto(self._frame, frame)
            self._frame_seq += 1
            self._kept_at = now
            if self._wanted:
                self._wanted = False
                self.offered += 1
            else:
                self.kept += 1
            self._cond.notify_all()
        finally:
            self._cond.release()
        return True

    def _encode_newest(self) -> bool:
        """With the lock held: make ``_jpeg`` the JPEG of the newest kept frame."""
        if self._jpeg_seq == self._frame_seq:
            return True
        ok, encoded = cv2.imencode(".jpg", self._frame, self._params)
        if not ok:
            return False
        self._jpeg, self._jpeg_seq = encoded, self._frame_seq
        self.encoded += 1
        return True

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, np.ndarray] | None:
        """The JPEG (a uint8 buffer) of a frame newer than ``after`` (a sequence number), waiting up to
        ``timeout`` seconds for one."""
        with self._cond:
            if self._frame_seq <= after:
                self._wanted = True
                if not self._cond.wait_for(lambda: self._frame_seq > after, timeout):
                    return None
            if not self._encode_newest():
                return None
            return self._jpeg_seq, self._jpeg

    def snapshot(self, timeout: float) -> np.ndarray | None:
        """The JPEG of the newest kept frame (at most ``snapshot_interval`` plus one frame old while
        frames arrive), waiting up to ``timeout`` seconds for the first frame."""
        with self._cond:
            if self._frame_seq == 0:
                self._wanted = True
                if not self._cond.wait_for(lambda: self._frame_seq > 0, timeout):
                    return None
            return self._jpeg if self._encode_newest() else None

    def latest_jpeg(self) -> bytes:
        """The last JPEG encoded (for a viewer or a snapshot), without encoding; ``b""`` if none."""
        with self._cond:
            return b"" if self._jpeg is None else self._jpeg.tobytes()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
