"""Every command the READMEs tell a user to type is one the tools accept.

The walk-throughs themselves are run, at test scale, by the tests each README section names; this
keeps the copy-paste text from drifting away from them: each `edge ...` command (in code blocks and
inline) parses with the real CLI parser, and each `python benchmarks/X.py ...` names a script that
exists and takes the flags given.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser

PROJECT = Path(__file__).resolve().parents[1]
READMES = [PROJECT / "README.md", PROJECT / "docker" / "README.md"]
PLACEHOLDERS = ("[", "|", "(", "...", "…")  # usage synopses, not commands


def _shell_lines(text: str) -> list[str]:
    """Commands from ```bash blocks (continuations joined, comments dropped) and inline `code` spans."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.extend(part.strip() for part in line.split("&&"))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines.extend(" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose))  # spans may wrap
    return lines


def _commands(prefix: str, first_argument: int) -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        for line in _shell_lines(readme.read_text()):
            words = line.split()
            # A command, not a mention of one (`edge train`): it has an option or a file argument.
            has_arguments = any(w.startswith("-") or "." in w or "/" in w for w in words[first_argument:])
            if words and words[0].endswith(prefix) and has_arguments and not any(p in line for p in PLACEHOLDERS):
                found.append((readme.relative_to(PROJECT).as_posix(), line))
    return found


EDGE_COMMANDS = _commands("edge", first_argument=2)  # edge SUBCOMMAND ...
BENCHMARK_COMMANDS = [(r, c) for r, c in _commands("python", first_argument=1) if "benchmarks/" in c]


def test_the_readmes_have_commands_to_check():
    assert len(EDGE_COMMANDS) >= 12 and len(BENCHMARK_COMMANDS) >= 5


@pytest.mark.parametrize("readme,command", EDGE_COMMANDS, ids=[c[:60] for _, c in EDGE_COMMANDS])
def test_edge_command_parses(readme, command):
    argv = shlex.split(command)[1:]
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{readme}: `{command}` is refused by the CLI (exit {exc.code})")
    assert getattr(args, "_main", None), f"{readme}: `{command}` names no subcommand"


@pytest.mark.parametrize("readme,command", BENCHMARK_COMMANDS, ids=[c[:60] for _, c in BENCHMARK_COMMANDS])
def test_benchmark_command_names_a_script_and_its_flags(readme, command):
    words = shlex.split(command)
    script = next(w for w in words if w.startswith("benchmarks/"))
    assert (PROJECT / script).is_file(), f"{readme}: {script} does not exist"
    usage = subprocess.run([sys.executable, script, "--help"], cwd=PROJECT, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 0, usage.stderr
    for flag in (w.split("=", 1)[0] for w in words if w.startswith("--")):
        assert flag in usage.stdout, f"{readme}: {script} has no {flag}"
