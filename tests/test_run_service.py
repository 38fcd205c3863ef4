"""``edge run`` as a service: several cameras from --config, clips, and systemd notify, through the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def edge(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_config_runs_every_camera_and_names_it_in_each_json_line(tmp_path):
    config = tmp_path / "cameras.json"
    config.write_text(json.dumps({"cameras": [{"name": "door", "source": "synthetic:320x240"},
                                              {"name": "road", "source": "synthetic:640x480"}]}))
    out = tmp_path / "out.jsonl"
    result = edge("run", "--config", config, "--max-frames", "80", "--json", out, "--stats-every", "0")
    assert result.returncode == 0, result.stderr
    names = [json.loads(line)["camera"] for line in out.read_text().splitlines()]
    assert len(names) == 80 and set(names) == {"door", "road"}
    # Both served, roughly alike. Not strictly alternating: a camera whose next frame is not ready yet
    # gives its turn to the other (the later camera's first frame took 4 turns on one CI run; under a
    # loaded machine either capture thread can lag a frame: 37 against 40 after both were up). Exact
    # shares under saturation are tests/test_cameras.py's, from the loop's own counters.
    assert min(names.count("door"), names.count("road")) >= 20, names
    assert "door" in result.stderr and "road" in result.stderr


def test_config_and_clip_options_are_checked_up_front(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cameras": [{"name": "x", "source": "synthetic", "colour": "red"}]}))
    result = edge("run", "--config", bad, "--max-frames", "1")
    assert result.returncode == 2 and "bad.json" in result.stderr.strip().splitlines()[-1]
    result = edge("run", "--config", bad, "--source", "0")
    assert result.returncode == 2 and "drop --source" in result.stderr.strip().splitlines()[-1]
    result = edge("run", "--clips", tmp_path / "clips", "--max-frames", "1")
    assert result.returncode == 2 and "add --zones" in result.stderr.strip().splitlines()[-1]


def test_notify_reports_ready_then_stopping_on_a_real_socket(tmp_path):
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(0.2)
    try:
        env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        result = edge("run", "--notify", "--max-frames", "30", "--stats-every", "0", env=env)
        assert result.returncode == 0, result.stderr
        messages = []
        while True:
            try:
                messages.append(server.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        server.close()
    ready = [i for i, m in enumerate(messages) if "READY=1" in m]
    stopping = [i for i, m in enumerate(messages) if "STOPPING=1" in m]
    assert ready and stopping and ready[0] < stopping[-1], messages
