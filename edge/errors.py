"""The one exception type the CLI turns into a single line and exit code 2, and how to quote others."""

from __future__ import annotations


class EdgeError(Exception):
    """A problem with the user's input (a file, a setting, a source), not a bug.

    The message must name the file or option and say what to do; the CLI prints it on one
    line with no traceback (unless ``--debug``) and exits with :attr:`exit_code`.
    """

    exit_code = 2


class BadFrameError(EdgeError):
    """A frame or input image that cannot be used (empty, wrong dtype or channel count, unreadable).
    The live loop skips it and counts it."""


def first_line(exc: BaseException, limit: int = 200, *, with_type: bool = False) -> str:
    """The first non-empty line of ``exc``'s message (its type name when it has none), cut to ``limit``.

    Library errors (OpenCV, TensorFlow, the interpreters) carry pages of context; a user-facing
    message quotes only this line.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if with_type and lines:
        return f"{type(exc).__name__}: {text}"
    return text
