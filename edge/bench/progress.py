"""The progress bar ``edge bench`` shows on stderr while it runs (tqdm when importable, else a line
every few seconds). It is advanced between frames, never inside a measured window."""

from __future__ import annotations

import sys
import time

EVERY = 25  # frames between progress updates
PLAIN_INTERVAL = 5.0  # seconds between lines without tqdm


class Progress:
    """``total`` frames to go; ``enabled=False`` shows nothing."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = None
        self._plain_next = 0.0
        self.total, self.done = total, 0
        self.enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm  # ai-edge-litert installs it

            self._bar = tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False,
                             mininterval=0.5)
        except ImportError:
            self._bar = None

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=False)
        elif self.enabled:
            print(f"edge bench: {text}", file=sys.stderr)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() >= self._plain_next:
            self._plain_next = time.monotonic() + PLAIN_INTERVAL
            print(f"edge bench: {self.done}/{self.total} frames", file=sys.stderr)

    def tick(self, i: int, end: int) -> None:
        """Called with frame ``i`` of a phase that ends before frame ``end``: advances every :data:`EVERY`."""
        if i % EVERY == 0:
            self.advance(min(EVERY, end - i))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
