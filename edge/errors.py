"""The one exception type the CLI turns into a single line and exit code 2."""

from __future__ import annotations


class EdgeError(Exception):
    """A problem with the user's input (a file, a setting, a source), not a bug.

    The message must name the file or option and say what to do; the CLI prints it on one
    line with no traceback (unless ``--debug``) and exits with :attr:`exit_code`.
    """

    exit_code = 2
