"""Helpers for tests that drive a real ``edge run`` process and its HTTP servers (not fixtures).

:class:`EdgeRun` starts ``python -m edge.cli run ...``, reads its stderr on a thread, waits for the
lines that name the preview and metrics ports (ask for port 0: the process picks a free one) and
stops it with SIGTERM. :func:`mjpeg_parts` reads JPEG parts off a real MJPEG stream.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

PROJECT = Path(__file__).resolve().parents[1]


class EdgeRun:
    """``edge run ARGS`` in a subprocess; ``lines`` is its stderr so far."""

    def __init__(self, *args, cwd: Path = PROJECT) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", *map(str, args)], cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        """The first stderr line matching ``pattern`` (a regex), waiting up to ``timeout`` seconds."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found:
                        return found
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def port(self, what: str) -> int:
        """The port of ``preview`` or ``metrics`` from its start line."""
        return int(self.wait_for(rf"{what} at http://127\.0\.0\.1:(\d+)/").group(1))

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(10)
        return code

    def summary(self) -> dict[str, dict]:
        """Per camera, from the summary table: state, processed, dropped, errors, stalls, reconnects."""
        rows = {}
        for line in self.lines:
            found = re.match(r"^  (\S+)\s+(up|down|ended|failed|starting)\s+[\d.]+\s+[\d.]+%\s+(\d+)\s+(\d+)\s+(\d+)"
                             r"\s+(\d+)\s+(\d+)$", line)
            if found:
                name, state, *numbers = found.groups()
                rows[name] = {"state": state, **dict(zip(("frames_processed", "frames_dropped", "read_errors",
                                                          "stalls", "reconnects"), map(int, numbers)))}
        return rows


def write_video(path: Path, frames: int, size=(200, 150), fps: float = 20.0) -> Path:
    """An MJPG .avi of ``frames`` frames of ``size`` (a square moving across a grey field)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    image = np.empty((size[1], size[0], 3), np.uint8)
    for i in range(frames):
        image[:] = 90
        x = 10 + (i * 3) % (size[0] - 60)
        cv2.rectangle(image, (x, 40), (x + 50, 90), (40, 200, 40), -1)
        writer.write(image)
    writer.release()
    return path


def request(port: int, path: str, *, headers: dict | None = None, timeout: float = 10.0):
    """One GET: (status, headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, **kwargs) -> dict:
    status, _, body = request(port, path, **kwargs)
    assert status == 200, (path, status, body)
    return json.loads(body)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


class MjpegReader:
    """A real MJPEG stream on a raw socket: :meth:`parts` reads the next JPEG parts."""

    def __init__(self, port: int, path: str, *, headers: dict | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the stream")
        self.buffer += chunk

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def part(self) -> bytes:
        headers = self._until(b"\r\n\r\n").decode("latin-1")
        length = int(re.search(r"Content-Length: (\d+)", headers).group(1))
        while len(self.buffer) < length + 2:
            self._fill()
        jpeg, self.buffer = self.buffer[:length], self.buffer[length + 2:]
        return jpeg

    def parts(self, n: int) -> list[bytes]:
        return [self.part() for _ in range(n)]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "MjpegReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mjpeg_parts(port: int, path: str, n: int, **kwargs) -> list[bytes]:
    with MjpegReader(port, path, **kwargs) as reader:
        assert reader.status == 200, reader.head
        return reader.parts(n)
