"""sd_notify over a real unix datagram socket standing in for systemd's NOTIFY_SOCKET: READY=1
after the first frame, WATCHDOG=1 pings only while frames flow (they stop when the source blocks and
come back with the frames), STATUS= lines, STOPPING=1 last; a no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from edge.detector.detector import Detector
from edge.live.cameras import Camera
from edge.live.loop import LiveLoop
from edge.live.multiloop import MultiLoop
from edge.live.sources import Source
from edge.live.synthetic import SyntheticSource
from edge.models import DEMO_MODEL
from edge.systemd import Notifier, SystemdNotifySink, notify, watchdog_interval

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector():
    return Detector(DEMO_MODEL)


class Listener:
    """systemd's side: a bound AF_UNIX datagram socket; a thread records (time, message) pairs."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> list[tuple[float, str]]:
        time.sleep(0.1)
        self._stop.set()
        self.thread.join(2)
        self.sock.close()
        return self.messages

    def fields(self, since: float = 0.0) -> list[str]:
        return [line for t, m in list(self.messages) if t >= since for line in m.split("\n")]


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    lis = Listener(path)
    yield lis, path
    lis.close()


def test_ready_watchdog_status_stopping_in_order(detector, listener):
    lis, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    sink = SystemdNotifySink(env=env, status_every=0.3)
    assert sink.watchdog.interval == pytest.approx(0.1)
    source = SyntheticSource("synthetic", 160, 120, fps=30, realtime=True)
    loop = LiveLoop(detector, source, [sink], max_frames=60, stats_every=0, log=lambda m: None)
    summary = loop.run()
    assert summary.frames_processed == 60
    messages = [m for _, m in lis.close()]
    fields = [line for m in messages for line in m.split("\n")]
    assert messages[0].startswith("READY=1\n") and fields.count("READY=1") == 1, messages[:3]
    assert fields[-2:] == ["STOPPING=1", "STATUS=stopping after 60 frames"]
    pings = fields.count("WATCHDOG=1")
    assert pings >= 10, f"{pings} pings in a {summary.elapsed_s:.1f} s run at a 0.1 s interval"
    assert fields.index("WATCHDOG=1") > fields.index("READY=1")
    statuses = [f for f in fields[:-2] if f.startswith("STATUS=")]
    assert len(statuses) >= 4 and all("fps, 1/1 camera up" in s for s in statuses), statuses
    assert sink.watchdog.pings == pings and "watchdog pings" in sink.report()


class BlockingSource(Source):
    """Synthetic frames until ``block`` is set; then its read blocks until ``resume`` is set."""

    live = True
    reconnectable = True

    def __init__(self, frames_before_block: int) -> None:
        super().__init__("blocking")
        self.inner = SyntheticSource("synthetic", 160, 120, fps=30, realtime=True)
        self.frame_shape = self.inner.frame_shape
        self.stall_timeout = 60.0  # nobody reopens it during the test
        self.frames_before_block = frames_before_block
        self.blocked = threading.Event()
        self.resume = threading.Event()

    def _read(self):
        if self.inner.frames_read == self.frames_before_block and not self.resume.is_set():
            self.blocked.set()
            self.resume.wait(30)
        return self.inner.read()


def test_pings_stop_while_frames_stop_and_come_back_with_them(detector, listener):
    lis, path = listener
    sink = SystemdNotifySink(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}, status_every=0.25)
    source = BlockingSource(frames_before_block=15)
    loop = LiveLoop(detector, source, [sink], duration=30, stats_every=0, log=lambda m: None)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        assert source.blocked.wait(10)
        blocked_at = time.monotonic()
        time.sleep(1.5)
        quiet = lis.fields(since=blocked_at + 0.25)  # a ping for the last frames may still go out
        assert "WATCHDOG=1" not in quiet, quiet
        assert any(f.startswith("STATUS=") for f in quiet), "STATUS goes on while no frame comes"
        source.resume.set()
        resumed_at = time.monotonic()
        deadline = resumed_at + 3
        while time.monotonic() < deadline and "WATCHDOG=1" not in lis.fields(since=resumed_at):
            time.sleep(0.02)
        back = [t for t, m in lis.messages if t >= resumed_at and "WATCHDOG=1" in m]
        assert back and back[0] - resumed_at < 0.5, "the ping that was due goes out with the next frame"
    finally:
        source.resume.set()
        loop.stop()
        thread.join(10)
    fields = [line for _, m in lis.close() for line in m.split("\n")]
    assert fields[0] == "READY=1" and fields[-2] == "STOPPING=1"
    assert "WATCHDOG=1" not in fields[fields.index("STOPPING=1"):]


def test_status_counts_cameras_up_in_a_multi_camera_loop(detector, listener):
    lis, path = listener
    sink = SystemdNotifySink(env={"NOTIFY_SOCKET": path}, status_every=0.3)
    assert sink.watchdog.interval is None  # no WatchdogSec: READY, STATUS and STOPPING only
    cameras = [Camera(f"cam{i}", SyntheticSource("synthetic", 160, 120, fps=20, realtime=True, seed=i))
               for i in range(2)]
    MultiLoop(detector, cameras, sinks=[sink], duration=1.5, stats_every=0, log=lambda m: None).run()
    fields = [line for _, m in lis.close() for line in m.split("\n")]
    assert fields[0] == "READY=1" and "WATCHDOG=1" not in fields and fields[-2] == "STOPPING=1"
    assert any("2/2 cameras up" in f for f in fields if f.startswith("STATUS=")), fields


def test_abstract_namespace_and_no_op_without_notify_socket(detector):
    name = f"edgekit-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    try:
        assert notify("READY=1", "STATUS=hello", env={"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(4096) == b"READY=1\nSTATUS=hello"
    finally:
        receiver.close()
    assert notify("READY=1", env={}) is False
    sink = SystemdNotifySink(env={})
    source = SyntheticSource("synthetic", 160, 120, max_frames=5)
    LiveLoop(detector, source, [sink], stats_every=0, log=lambda m: None).run()
    assert not sink.notifier.enabled and sink.watchdog.thread is None and sink.report() is None
    # A socket that went away: counted, never raised into the loop.
    gone = Notifier("/nonexistent/notify.sock")
    assert gone.send("WATCHDOG=1") is False and gone.errors == 1
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # another process's
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_unit_file():
    unit = (PROJECT / "docker" / "edgekit.service").read_text()
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines()
             if "=" in line and not line.startswith("#")}
    assert lines["Type"] == "notify" and lines["WatchdogSec"] == "30" and lines["Restart"] == "on-failure"
    assert lines["User"] not in ("root", "0") and lines["ExecStart"].startswith("/usr/local/bin/edge run ")
    assert "--notify" in lines["ExecStart"]
    assert lines["NotifyAccess"] == "main"
