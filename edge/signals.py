"""Ctrl-C, SIGTERM and SIGHUP end a command the same way, and are remembered.

Each raises :class:`KeyboardInterrupt` at once (temporary files are removed on the way out, nothing
is half-written), and sets a flag that long jobs check before they publish a result: a library that
swallows the exception (TensorFlow has been seen to) must not go on to overwrite an existing output.
``edge run``'s loop replaces the handlers while it runs with ones that finish the current frame.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

_received: list[str] = []


def _interrupt(signum, _frame) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    raise KeyboardInterrupt(name)


def install_stop_signals():
    """Install the handlers; returns a function that puts the previous ones back. From the main
    thread only (signal handlers cannot be set elsewhere); a no-op otherwise."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _received.clear()  # a signal remembered from an earlier command in this process is not this one's
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def interrupted() -> str | None:
    """The name of the first stop signal received, or None."""
    return _received[0] if _received else None


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if a stop signal arrived, even if something caught the first one."""
    name = interrupted()
    if name:
        raise KeyboardInterrupt(name)


def finish_frame_on_stop_signals(stop, is_stopping, log):
    """Install handlers that ask a live loop to finish its current frame: ``stop(name)`` on SIGINT,
    SIGTERM or SIGHUP, and a second SIGINT (``is_stopping()`` already true) interrupts at once.
    Returns a function that puts the previous handlers back."""

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if is_stopping() and signum == signal.SIGINT:
            raise KeyboardInterrupt(name)
        log(f"{name}: finishing the current frame")
        stop(name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
