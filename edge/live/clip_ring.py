"""The pre-roll ring of :class:`~edge.live.clips.ClipSink`: the last ``capacity`` raw frames, each with
its source frame number and capture time, so a clip can start seconds before its event.

The frames are one preallocated array of the first frame's size, made resident at once: a fixed,
known number of bytes (``capacity * H * W * 3``) whatever the scene. A frame of another size (or
grey) is converted and resized into its slot; per frame nothing is allocated.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np


class PreRollRing:
    """``capacity`` frame slots; :attr:`head` is the newest frame's slot, :attr:`count` how many are filled."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.frames: np.ndarray | None = None  # (capacity, H, W, 3) uint8 once the frame size is known
        self.seqs = np.zeros(capacity, np.int64)
        self.stamps = np.zeros(capacity, np.float64)
        self.head = -1  # slot of the newest frame
        self.count = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated frames (0 until their size is known)."""
        return self.frames.nbytes if self.frames is not None else 0

    def nbytes_for(self, shape: tuple[int, ...]) -> int:
        """What the frames take at ``shape``: ``capacity * H * W * 3``."""
        return self.capacity * int(shape[0]) * int(shape[1]) * 3

    def presize(self, shape: tuple[int, ...]) -> None:
        """Allocate the frames at ``shape`` now (made resident, so RSS shows them at once)."""
        if self.frames is None:
            frames = np.empty((self.capacity, int(shape[0]), int(shape[1]), 3), np.uint8)
            frames.fill(0)
            self.frames = frames

    def push(self, image: np.ndarray, seq: int, stamp: float) -> int:
        """Copy ``image`` into the slot after the newest; returns that slot."""
        if self.frames is None:
            self.presize(image.shape)
        slot = (self.head + 1) % self.capacity
        target = self.frames[slot]
        if image.shape[:2] == target.shape[:2] and image.ndim == 3 and image.shape[2] == 3:
            np.copyto(target, image)
        else:  # another size (or grey): into the slot at the ring's size
            if image.ndim == 2 or image.shape[2] != 3:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_BGRA2BGR)
            cv2.resize(image, (target.shape[1], target.shape[0]), dst=target, interpolation=cv2.INTER_AREA)
        self.seqs[slot], self.stamps[slot] = seq, stamp
        self.head = slot
        self.count = min(self.count + 1, self.capacity)
        return slot

    def earlier(self, oldest: float) -> Iterator[int]:
        """Slots of the frames before the newest captured at ``oldest`` or later, oldest first."""
        for back in range(self.count - 1, 0, -1):
            slot = (self.head - back) % self.capacity
            if self.stamps[slot] >= oldest:
                yield slot
