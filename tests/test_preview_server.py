"""The preview HTTP server under abuse, against a real server on 127.0.0.1 with real sockets: bounded
connections and threads, hard header and idle deadlines, EMFILE back-off, the DNS-rebinding Host
guard, /snapshot.jpg staying recent with nobody streaming, quiet disconnects, and tokens.

Frames come from a feeder thread calling PreviewSink.write directly (no detector needed). Clients
other than "the viewer" connect from other loopback addresses (127.0.0.2, ...), so the per-client
limit applies to them and not to the viewer. Every wait is bounded; every test stops by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from edge.detector.step import Frame
from edge.errors import EdgeError
from edge.live.preview import PreviewServer, PreviewSink, resolve_token

PROJECT = Path(__file__).resolve().parents[1]


# ---- helpers ---------------------------------------------------------------------------------------


class Feeder:
    """Writes frames into a PreviewSink from its own thread, like the live loop (about 50 fps)."""

    def __init__(self, sink: PreviewSink, shape=(120, 160, 3), value: int | None = 80) -> None:
        self.sink, self.value = sink, value
        self.image = np.empty(shape, np.uint8)
        self.frame = Frame.of(self.image)
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-feeder", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            annotated = None
            if self.sink.wants_frame():
                if self.value is not None:
                    self.image[:] = self.value
                annotated = self.image
            self.sink.write(self.frame, None, annotated)
            self.written += 1

    def __enter__(self) -> "Feeder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@contextlib.contextmanager
def serving(**kwargs):
    server = PreviewServer("127.0.0.1", 0, **kwargs).start()
    try:
        yield server
    finally:
        server.close()


def get(port: int, path: str, *, host: str | None = None, source: str | None = None, timeout: float = 10.0):
    """One GET from ``source`` (a loopback address; default 127.0.0.1): (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def silent(port: int, source: str, timeout: float = 3.0) -> socket.socket | None:
    """A connection that never sends anything (half-open request); None if connect itself failed."""
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    except OSError:
        return None


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (EOF or reset), or None if it stays open that long."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except (socket.timeout, TimeoutError):
        return None


def wait_until(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a killed browser tab does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---- 1. bounded connections, deadlines, EMFILE ---------------------------------------------------


def test_many_half_open_sockets_keep_threads_bounded_and_a_viewer_gets_through():
    baseline = threading.active_count()
    limit = 12
    attackers, peak = [], 0
    with serving(max_connections=limit, max_per_client=4, header_timeout=5.0) as server:
        sink = PreviewSink(server)
        with Feeder(sink):
            bound = baseline + 2 + limit + 3  # + accept thread + feeder; + a few threads on their way out
            try:
                for i in range(200):  # 10 client addresses x 20 silent sockets each
                    sock = silent(server.port, f"127.0.0.{2 + i % 10}")
                    if sock is not None:
                        attackers.append(sock)
                    peak = max(peak, threading.active_count())
                assert len(attackers) >= 150, "the kernel accepted the connections (backlog 64)"
                time.sleep(0.3)  # the accept loop has caught up
                peak = max(peak, threading.active_count())
                assert peak <= bound, f"{peak} threads for {len(attackers)} half-open sockets (bound {bound})"
                assert wait_until(lambda: server.connections == limit, 5)
                # A normal viewer, while all 200 sockets are still open.
                status, headers, body = get(server.port, "/stats.json")
                assert status == 200 and json.loads(body)["preview_connections"] <= limit
                status, headers, body = get(server.port, "/snapshot.jpg")
                assert status == 200 and headers["Content-Type"] == "image/jpeg"
                image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (120, 160, 3)
                peak = max(peak, threading.active_count())
                assert server.connections <= limit
            finally:
                for sock in attackers:
                    sock.close()
    assert peak <= bound, f"{peak} threads for {len(attackers)} half-open sockets (bound {bound})"


def test_per_client_limit_closes_that_clients_oldest_waiting_socket():
    with serving(max_connections=32, max_per_client=4, header_timeout=30.0) as server:
        socks = [silent(server.port, "127.0.0.5") for _ in range(10)]
        try:
            assert all(socks)
            assert wait_until(lambda: server.connections == 4, 5)
            for old in socks[:6]:  # oldest first made room for the newer ones
                assert closed_within(old, 3.0) is not None
            for kept in socks[6:]:
                assert closed_within(kept, 0.2) is None
            status, _, _ = get(server.port, "/stats.json")  # another address is not affected
            assert status == 200
        finally:
            for sock in socks:
                sock.close()


def test_a_silent_socket_is_closed_after_the_header_timeout():
    with serving(header_timeout=0.6) as server:
        sock = silent(server.port, "127.0.0.2")
        try:
            took = closed_within(sock, 5.0)
        finally:
            sock.close()
        assert took is not None and 0.4 <= took <= 1.6, took
        assert wait_until(lambda: server.connections == 0, 2)


def test_a_slow_sender_cannot_stretch_the_header_deadline():
    """Headers trickling in, one line every 0.2 s, never complete: the deadline is for all of them."""
    with serving(header_timeout=1.0) as server:
        sock = silent(server.port, "127.0.0.2")
        received = b""
        start = time.monotonic()
        try:
            sock.sendall(b"GET /stats.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.settimeout(0.2)
            while time.monotonic() - start < 5.0:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                except (socket.timeout, TimeoutError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        finally:
            sock.close()
        took = time.monotonic() - start
        assert took < 2.5, f"closed only after {took:.1f} s"
        assert b"200 OK" not in received


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    with serving(header_timeout=5.0, idle_timeout=0.6) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            for _ in range(2):  # keep-alive works: two requests on one connection, 0.3 s apart
                conn.request("GET", "/stats.json")
                response = conn.getresponse()
                assert response.status == 200 and response.getheader("Connection") != "close"
                response.read()
                time.sleep(0.3)
            first_socket = conn.sock
            assert first_socket is not None
            took = closed_within(first_socket, 5.0)
        finally:
            conn.close()
        assert took is not None and took <= 0.3 + 1.2, took  # 0.6 s idle minus the 0.3 s already slept


def test_a_stream_outlives_the_timeouts_while_it_reads():
    with serving(header_timeout=0.4, idle_timeout=0.4) as server:
        sink = PreviewSink(server)
        with Feeder(sink):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            try:
                sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                data, start, late = b"", time.monotonic(), 0
                while time.monotonic() - start < 2.5:
                    chunk = sock.recv(65536)
                    assert chunk, "the server closed a stream that was being read"
                    data += chunk
                    if time.monotonic() - start > 2.0:
                        late += chunk.count(b"--edgekitframe")
            finally:
                sock.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert data.count(b"--edgekitframe") >= 20 and late >= 1, "frames kept coming after 5x the timeouts"


EMFILE_CHILD = r"""
import os, resource, sys, time
from edge.live.preview import PreviewServer
server = PreviewServer("127.0.0.1", 0, max_connections=1000, max_per_client=1000, header_timeout=30.0,
                       idle_timeout=30.0).start()
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 12, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.port, flush=True)
for line in sys.stdin:
    if line.strip() == "cpu":
        print(time.process_time(), flush=True)
    else:
        break
server.close()
print("fd_errors", server._server.fd_errors, flush=True)
"""


def test_out_of_file_descriptors_backs_off_and_still_serves_a_viewer():
    """A child server with ~12 spare descriptors (like ``ulimit -n``) and 60 silent sockets: accept
    hits EMFILE; the server must not spin on it (CPU stays low), must stay up, and must let a
    viewer in by closing the oldest waiting sockets."""
    child = subprocess.Popen([sys.executable, "-c", EMFILE_CHILD], cwd=PROJECT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(PROJECT)})
    socks = []
    try:
        port = int(child.stdout.readline())
        for _ in range(60):
            sock = silent(port, "127.0.0.2")
            if sock is not None:
                socks.append(sock)
        assert len(socks) >= 40
        time.sleep(0.2)
        child.stdin.write("cpu\n")
        child.stdin.flush()
        cpu_0 = float(child.stdout.readline())
        time.sleep(1.0)
        child.stdin.write("cpu\n")
        child.stdin.flush()
        cpu_1 = float(child.stdout.readline())
        assert cpu_1 - cpu_0 < 0.4, f"the server used {cpu_1 - cpu_0:.2f} s of CPU in 1 s: spinning on accept"
        status, _, body = get(port, "/stats.json", timeout=20)
        assert status == 200 and b"preview_connections" in body
        child.stdin.write("quit\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=20)
    finally:
        for sock in socks:
            sock.close()
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
    assert child.returncode == 0, err
    fd_errors = int(out.split("fd_errors")[1])
    assert fd_errors > 0, "the test did not reach EMFILE"
    assert "Traceback" not in err
    assert err.count("cannot accept a connection") == 1, err  # one line, rate-limited


# ---- 2. DNS rebinding ------------------------------------------------------------------------------


def test_without_a_token_only_this_machines_names_are_served():
    with serving() as server:
        port = server.port
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", f"[::1]:{port}",
                     "LOCALHOST.", "raspberrypi", "10.1.2.3:8080", "cam.localhost"):
            status, _, _ = get(port, "/stats.json", host=host)
            assert status == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil.example",
                     "[::1", "a:b:c"):
            status, headers, body = get(port, "/stats.json", host=host)
            assert status == 403, host
            assert body.endswith(b"\n") and body.count(b"\n") == 1 and b"host not allowed" in body
            assert headers.get("Connection") == "close"


def test_with_a_token_any_host_is_accepted():
    with serving(token="s3cret") as server:
        status, _, body = get(server.port, "/stats.json?token=s3cret", host="evil.example")
        assert status == 200 and b"viewers" in body
        status, _, body = get(server.port, "/stats.json", host="evil.example")
        assert status == 403 and body == b"token required\n"


# ---- 3. /snapshot.jpg with nobody streaming -----------------------------------------------------------


def _snapshot_value(port: int) -> float:
    status, _, body = get(port, "/snapshot.jpg")
    assert status == 200
    return float(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE).mean())


def test_snapshot_is_recent_when_nobody_streams():
    with serving(snapshot_interval=0.1) as server:
        sink = PreviewSink(server)
        with Feeder(sink, value=40) as feeder:
            assert wait_until(lambda: feeder.written >= 3, 5)
            assert abs(_snapshot_value(server.port) - 40) < 3
            feeder.value = 200  # the scene changes; still nobody streams
            time.sleep(0.35)
            assert abs(_snapshot_value(server.port) - 200) < 3, "the snapshot went stale"
            time.sleep(0.2)
        exchange = server.exchange
        assert exchange.viewers == 0 and exchange.offered <= 1
        assert exchange.encoded == 2, "JPEG encoding only on request"
        assert exchange.kept < feeder.written / 2, "frames are kept a few times a second, not every frame"


def test_preview_sink_write_allocates_nothing_per_frame():
    """Nobody watching; worst case (a copy kept every frame): no frame-sized allocation, no growth."""
    with serving(snapshot_interval=0.0) as server:
        sink = PreviewSink(server)
        image = np.zeros((240, 320, 3), np.uint8)
        frame = Frame.of(image)
        for _ in range(5):
            sink.write(frame, None, image)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(300):
                image[0, 0, 0] = i % 256
                assert sink.wants_frame()
                sink.write(frame, None, image)
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert server.exchange.kept >= 300
        assert peak - max(before, after) < image.nbytes // 4
        assert after - before < 16 * 1024
    with serving() as server:  # default interval: between kept frames the loop need not annotate
        sink = PreviewSink(server)
        sink.write(frame, None, image)
        assert not sink.wants_frame()


# ---- 4. clients that go away mid-response --------------------------------------------------------------


def test_a_client_that_disconnects_mid_response_leaves_no_traceback(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.live.preview")
    noise = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), np.uint8)  # a JPEG of ~2 MB
    with serving(snapshot_interval=0.05) as server:
        sink = PreviewSink(server)
        feeder = Feeder(sink, shape=noise.shape, value=None)
        feeder.image[:] = noise
        with feeder:
            assert wait_until(lambda: feeder.written >= 3, 5)
            # The stream: read a part of it, then reset.
            for _ in range(2):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                abort(sock)
            # A snapshot far larger than the socket buffers: read 1 KB, then reset.
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(5)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(b"GET /snapshot.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(1024).startswith(b"HTTP/1.1 200")
                time.sleep(0.2)  # the server is blocked in sendall now
                abort(sock)
            # Half a request line, then a reset.
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /stats.js")
            time.sleep(0.1)
            abort(sock)
            assert wait_until(lambda: server.connections == 0, 5)
            assert get(server.port, "/stats.json")[0] == 200, "the server goes on serving"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err
    assert "Traceback" not in caplog.text
    went_away = [r for r in caplog.records if "went away" in r.getMessage() or "ended" in r.getMessage()]
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert 1 <= len(went_away) <= 5, "one line per disconnect (5 disconnects), at most"
    assert all(r.levelno <= logging.DEBUG for r in went_away)


# ---- 5. tokens and the printed URL --------------------------------------------------------------------


def test_an_empty_token_is_an_error_not_no_auth(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_PREVIEW_TOKEN", raising=False)
    for bad in ("", "   "):
        with pytest.raises(EdgeError) as info:
            resolve_token(bad, None)
        assert "\n" not in str(info.value) and "--token" in str(info.value)
        with pytest.raises(EdgeError):
            PreviewServer("127.0.0.1", 0, token=bad)
    assert resolve_token(None, None) is None  # nothing given: no authentication, as before
    monkeypatch.setenv("EDGE_PREVIEW_TOKEN", "")
    with pytest.raises(EdgeError) as info:
        resolve_token(None, None)
    assert "EDGE_PREVIEW_TOKEN" in str(info.value)


def test_token_from_environment_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_PREVIEW_TOKEN", "from-env")
    assert resolve_token(None, None) == "from-env"
    assert resolve_token("given", None) == "given", "--token wins over the environment"
    assert resolve_token(None, None, env_var="OTHER_VARIABLE_NOT_SET") is None
    monkeypatch.delenv("EDGE_PREVIEW_TOKEN")
    good = tmp_path / "token"
    good.write_text("  s3cret-from-file \nsecond line\n")
    assert resolve_token(None, good) == "s3cret-from-file"
    empty = tmp_path / "empty"
    empty.write_text("\nlater\n")
    for path, words in ((empty, "first line is empty"), (tmp_path / "missing", "cannot read")):
        with pytest.raises(EdgeError) as info:
            resolve_token(None, path)
        assert words in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EdgeError):
        resolve_token("x", good)


def test_url_quotes_the_token_and_it_works():
    token = "a b&c/d?e#f+g%"
    with serving(token=token) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/?token={quote(token, safe='')}"
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200 and b"edgekit live preview" in response.read()
        with urllib.request.urlopen(server.url.replace("/?", "/stats.json?"), timeout=10) as response:
            assert "viewers" in json.loads(response.read())


def test_url_names_the_real_address_and_port_for_a_wildcard_bind():
    for wildcard in ("0.0.0.0", "::"):
        try:
            server = PreviewServer(wildcard, 0, token="t0k").start()
        except EdgeError:
            assert wildcard == "::", "IPv4 wildcard must work"
            continue
        try:
            assert server.port != 0 and f":{server.port}/" in server.url
            assert "0.0.0.0" not in server.url and "[::]" not in server.url
            assert server.url.split("/")[2].rsplit(":", 1)[0] not in ("127.0.0.1", "::1", "localhost") or not _has_other_address()
            with urllib.request.urlopen(server.url.replace("/?", "/stats.json?"), timeout=10) as response:
                assert response.status == 200
        finally:
            server.close()


def _has_other_address() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return not probe.getsockname()[0].startswith("127.")
    return False
