"""systemd integration without libsystemd: ``sd_notify`` over ``$NOTIFY_SOCKET`` and a frame watchdog.

The protocol is a datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace, where the ``@`` stands for a
leading NUL byte). When the variable is unset (not started by systemd, or not ``Type=notify``)
everything here is a no-op. ``edge run --notify`` adds :class:`SystemdNotifySink` to the loop:

- ``READY=1`` after the first processed frame (the model is loaded and the camera delivers), so
  ``systemctl start`` returns when detection runs, and units ordered after this one start then;
- ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` (``WatchdogSec=``), but only when a frame was
  processed since the previous ping: a wedged loop or a camera that gives nothing stops the
  pings, and systemd restarts the service (``Restart=on-failure``) once ``WatchdogSec`` passes. A
  ping that was due while no frame came is sent as soon as the next frame is processed;
- ``STATUS=`` (what ``systemctl status`` shows) every few seconds: fps, cameras up, frames, or how
  long no frame came;
- ``STOPPING=1`` when the run ends.

The pings come from one small thread that sleeps between them; the loop only counts frames (an
integer increment per frame, no system call). Sending never raises into the loop: a socket that
went away is counted in :attr:`Notifier.errors`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Mapping

from edge.live.sinks import Sink

STATUS_EVERY = 5.0  # seconds between STATUS= updates
UP_WITHIN = 5.0  # seconds: a camera whose last frame is older than this is not counted as up


class Notifier:
    """Sends ``sd_notify`` datagrams to ``address`` (default ``$NOTIFY_SOCKET``); disabled when unset."""

    def __init__(self, address: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") if address is None else address
        self.address = address or None
        self.errors = 0
        self.sent = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._target: str | None = None
        if self.address:
            if self.address.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
                self._target = "\0" + self.address[1:]
            elif self.address.startswith("/"):
                self._target = self.address
            else:  # neither a path nor abstract: sd_notify ignores it too
                self.address = None
        if self._target is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; False when disabled or it failed."""
        if self._sock is None or not assignments:
            return False
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        with self._lock:
            if self._sock is None:
                return False
            try:
                self._sock.sendto(data, self._target)
            except OSError as exc:  # systemd gone, socket removed, buffer full: never the loop's problem
                self.errors += 1
                self.last_error = exc.strerror or type(exc).__name__
                return False
            self.sent += 1
        return True

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """One-shot ``sd_notify``: ``notify("READY=1", "STATUS=up")``; False when not under systemd."""
    notifier = Notifier(env=env)
    try:
        return notifier.send(*assignments)
    finally:
        notifier.close()


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when systemd expects
    none from this process (unset, invalid, or ``WATCHDOG_PID`` names another process)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """``READY=1`` at the first :meth:`frame`, ``WATCHDOG=1`` every ``interval`` seconds while frames
    flow, ``STATUS=`` from ``status()`` every ``status_every`` seconds, ``STOPPING=1`` at :meth:`stop`.

    :meth:`frame` is all the loop calls per frame. :meth:`start` runs the pinging thread (only when
    the notifier is enabled and there is something to send periodically).
    """

    def __init__(self, notifier: Notifier, *, interval: float | None = None,
                 status: Callable[[], str] | None = None, status_every: float = STATUS_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.interval = interval if interval and interval > 0 else None
        self._status = status
        self.status_every = status_every if status_every and status_every > 0 else None
        self._clock = clock
        self.frames = 0  # frames processed, ever (written by the loop only)
        self.ready = False
        self.pings = 0
        self.last_frame_at = 0.0
        self._pinged_frames = 0  # self.frames at the last ping
        self._overdue = False  # a ping is due and waits for a frame
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "Watchdog":
        if self.notifier.enabled and (self.interval or self.status_every) and self.thread is None:
            self.thread = threading.Thread(target=self._run, name="edge-systemd", daemon=True)
            self.thread.start()
        return self

    def frame(self) -> None:
        """One frame processed (call it from the loop, per frame)."""
        self.frames += 1
        self.last_frame_at = self._clock()
        if not self.ready:
            self.ready = True
            self.notifier.send("READY=1", *self._status_line())
        if self._overdue:
            self._overdue = False
            self._wake.set()

    def stop(self, status: str | None = None) -> None:
        """Stop pinging, then ``STOPPING=1`` (with a last ``STATUS=``)."""
        self._stop.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(5.0)
        self.notifier.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def _status_line(self) -> list[str]:
        if self._status is None:
            return []
        try:
            return [f"STATUS={self._status()}"]
        except Exception:  # a status line must never take the watchdog down
            return []

    def _run(self) -> None:
        clock = self._clock
        now = clock()
        next_ping = now + self.interval if self.interval else float("inf")
        next_status = now + self.status_every if self.status_every else float("inf")
        while not self._stop.is_set():
            now = clock()
            if now >= next_ping:
                if self.frames > self._pinged_frames:
                    self._pinged_frames = self.frames
                    if self.notifier.send("WATCHDOG=1"):
                        self.pings += 1
                    next_ping = now + self.interval
                    continue
                # Due, but no frame since the last ping: none is sent; the next frame sends it.
                self._overdue = True
                if self.frames > self._pinged_frames:  # a frame came while we were setting the flag
                    self._overdue = False
                    continue
            if now >= next_status:
                if self.ready or self.frames:
                    self.notifier.send(*self._status_line())
                else:
                    self.notifier.send("STATUS=starting: waiting for the first frame")
                next_status = now + self.status_every
            wake_at = min(next_status, next_ping if not self._overdue else float("inf"))
            self._wake.wait(max(0.0, wake_at - clock()) if wake_at != float("inf") else None)
            self._wake.clear()


class SystemdNotifySink(Sink):
    """The :class:`Watchdog` as a sink: add it to a :class:`~edge.live.loop.LiveLoop` or, loop-wide,
    to a :class:`~edge.live.multiloop.MultiLoop` (its ``STATUS=`` then counts the cameras up).

    ``env`` (default ``os.environ``) supplies ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
    ``WATCHDOG_PID``; without ``NOTIFY_SOCKET`` the sink does nothing.
    """

    def __init__(self, *, env: Mapping[str, str] | None = None, notifier: Notifier | None = None,
                 status_every: float = STATUS_EVERY, up_within: float = UP_WITHIN) -> None:
        self.notifier = notifier or Notifier(env=env)
        self.up_within = up_within
        self._stats: Callable[[], dict] | None = None
        self.watchdog = Watchdog(self.notifier, interval=watchdog_interval(env), status=self.status,
                                 status_every=status_every)

    def start(self, stats) -> None:
        self._stats = stats
        self.watchdog.start()

    def write(self, frame, detections, annotated) -> None:
        self.watchdog.frame()

    def status(self) -> str:
        """The ``STATUS=`` text: ``12.5 fps, 2/3 cameras up, 1234 frames`` or ``no frame for 12 s``."""
        stats = self._stats() if self._stats is not None else {}
        since = time.monotonic() - self.watchdog.last_frame_at if self.watchdog.last_frame_at else None
        cameras = stats.get("cameras")
        if cameras is None:  # one source: up while frames come
            cameras, up = 1, int(since is not None and since <= self.up_within)
        else:
            up = stats.get("cameras_up", 0)
        frames = stats.get("frames_processed", self.watchdog.frames)
        plural = "s" if cameras != 1 else ""
        text = f"{stats.get('fps', 0.0):.1f} fps, {up}/{cameras} camera{plural} up, {frames} frames"
        if since is not None and since > self.up_within:
            text = f"no frame for {since:.0f} s; " + text
        return text

    def close(self) -> None:
        self.watchdog.stop(f"stopping after {self.watchdog.frames} frames")
        self.notifier.close()

    def report(self) -> str | None:
        if not self.notifier.enabled and not self.notifier.sent:
            return None
        errors = f", {self.notifier.errors} sends failed ({self.notifier.last_error})" if self.notifier.errors else ""
        return f"systemd: ready after the first frame, {self.watchdog.pings} watchdog pings{errors}"
