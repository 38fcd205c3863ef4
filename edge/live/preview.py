"""The live preview page: an MJPEG stream of annotated frames and live stats, standard library only.

``GET /`` the page, ``/stream.mjpg`` the stream (``multipart/x-mixed-replace``), ``/stats.json`` the
numbers, ``/snapshot.jpg`` a recent frame. Binds 127.0.0.1 unless told otherwise; with a token,
every request needs ``?token=...`` (or ``Authorization: Bearer ...``).

The detector never waits for a viewer: :meth:`FrameExchange.offer` copies the annotated frame into
one preallocated buffer only when a viewer has asked for a new frame (or the kept snapshot frame is
older than ``snapshot_interval``) and the buffer is not being encoded, and returns at once otherwise.
JPEG encoding happens on the viewer's own thread, at the viewer's pace, and only on request.

The server is a small board's guest, so everything it holds is bounded:

* at most ``max_connections`` connections in total and ``max_per_client`` per client address, one
  thread each; the listen backlog is ``backlog``. When a limit is reached, the oldest connection
  still waiting for a request is closed to make room (a stream is never closed for that); when
  there is none, the new connection gets a short 503 and is closed, without a thread;
* a connection must deliver its request headers within ``header_timeout`` seconds of being accepted
  and a kept-alive connection its next request within ``idle_timeout``; both are hard deadlines (a
  reaper on the accept thread shuts such sockets down), not per-``recv`` timeouts a slow sender can
  stretch. A stream stays as long as its client reads (each write must finish in ``write_timeout``);
* when ``accept`` fails for lack of file descriptors (EMFILE/ENFILE), the oldest waiting connection
  is closed and the accept loop backs off briefly instead of spinning on the ready listen socket.

Without a token, requests must name this machine in their ``Host`` header (see
:meth:`PreviewServer.host_allowed`): a page on another site that rebinds its DNS name to 127.0.0.1
gets 403. With a token, any ``Host`` is accepted: the token is the guard.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from edge.errors import EdgeError, first_line
from edge.live.sinks import Sink

LOG = logging.getLogger("edge.live.preview")
PAGE = Path(__file__).resolve().parent / "static" / "preview.html"
MAX_VIEWERS = 4  # concurrent MJPEG streams: each is a thread and a socket buffer; not a broadcast server
MAX_CONNECTIONS = 32  # all connections (threads) together
MAX_PER_CLIENT = 8  # per client address; a browser uses about 3 (page, stream, stats)
BACKLOG = 64  # listen queue
HEADER_TIMEOUT = 5.0  # seconds from accept until the request headers must be complete
IDLE_TIMEOUT = 10.0  # seconds a kept-alive connection may wait for its next request (the page polls every 1 s)
WRITE_TIMEOUT = 10.0  # seconds a stuck browser may block its own thread before it is dropped
SNAPSHOT_INTERVAL = 0.2  # seconds: how old the frame kept for /snapshot.jpg may get while frames arrive
TOKEN_ENV = "EDGE_PREVIEW_TOKEN"
BOUNDARY = "edgekitframe"
_ADMIT_WAIT = 1.0  # seconds the accept loop waits for a closed connection's thread to end
_REAP_EVERY = 0.1  # seconds between deadline checks on the accept thread
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
            b"Connection: close\r\n\r\ntoo many connections\n")


def parse_bind(spec: str) -> tuple[str, int]:
    """``"8080"`` -> ``("127.0.0.1", 8080)``; ``"0.0.0.0:8080"`` -> ``("0.0.0.0", 8080)``."""
    spec = str(spec).strip()
    host, sep, port_text = spec.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise EdgeError(f"--preview {spec}: write PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080)")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, token_file: str | os.PathLike | None = None,
                  env_var: str = TOKEN_ENV) -> str | None:
    """The preview token from ``--token``, else ``--token-file`` (its first line, stripped), else the
    environment variable ``env_var``; ``None`` when none is given (no authentication).

    An empty token never means "no authentication": ``--token ''``, an empty first line or an empty
    variable raise :class:`EdgeError`. A file or the variable keeps the token out of ``ps``.
    """
    if token is not None:
        if token_file is not None:
            raise EdgeError(f"--token and --token-file {token_file} both given; give one")
        if not token.strip():
            raise EdgeError(f"--token {token!r}: an empty token would turn authentication off; give a token "
                            f"(or --token-file FILE, or set {env_var})")
        return token
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as handle:
                first = handle.readline().strip()
        except OSError as exc:
            raise EdgeError(f"--token-file {token_file}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise EdgeError(f"--token-file {token_file}: not a UTF-8 text file") from None
        if not first:
            raise EdgeError(f"--token-file {token_file}: the first line is empty; write the token on it")
        return first
    value = os.environ.get(env_var)
    if value is None:
        return None
    if not value.strip():
        raise EdgeError(f"{env_var} is set but empty; unset it or give it a token")
    return value.strip()


def _check_token(token: str | None) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token.strip():
        raise EdgeError(f"preview token {token!r}: an empty token would turn authentication off; give a token "
                        f"or none")
    return token


def _host_name(header: str) -> str | None:
    """``Host`` header -> the lower-case name or address without port and brackets; ``None`` if malformed."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:] if end > 0 else "x"
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        return text[1:end]
    name, sep, port = text.rpartition(":")
    if not sep:
        name = text
    elif not port.isdigit() or ":" in name:
        return None
    name = name.rstrip(".")  # "localhost." is localhost
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _reachable_address(ipv4: bool, ipv6: bool) -> str | None:
    """This machine's first non-loopback address: the source address the routing table picks for an
    outside destination (connecting a UDP socket sends nothing)."""
    probes = ([(socket.AF_INET, ("192.0.2.1", 9))] if ipv4 else []) + \
             ([(socket.AF_INET6, ("2001:db8::1", 9))] if ipv6 else [])
    for family, probe in probes:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe_socket:
                probe_socket.connect(probe)
                address = probe_socket.getsockname()[0]
        except OSError:
            continue
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return address
    return None


def _client_key(client_address) -> str:
    host = str(client_address[0]) if client_address else "?"
    return host[7:] if host.startswith("::ffff:") else host  # IPv4 clients of a dual-stack socket


class FrameExchange:
    """Hands the newest annotated frame from the detector thread to viewer threads, lossy by design.

    For ``/snapshot.jpg`` the exchange also keeps a copy of the newest frame at least every
    ``snapshot_interval`` seconds while frames arrive, even when nobody streams, and encodes it only
    when a snapshot is requested. Keeping the raw frame is cheaper than encoding every frame ahead of
    time: a copy into the one preallocated buffer (a memcpy, a few times a second) instead of a JPEG
    encode (tens of ms on a small board, and a new bytes object each time) for frames nobody may ask for.
    Memory stays fixed: one frame buffer, reallocated only when the frame size changes, and the last
    JPEG.
    """

    def __init__(self, quality: int = 80, snapshot_interval: float = SNAPSHOT_INTERVAL) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._kept_at = float("-inf")  # time.monotonic() of the last copy
        self._jpeg: np.ndarray | None = None  # cv2.imencode's buffer, served without another copy
        self._jpeg_seq = 0
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
        self._wanted = False
        self.snapshot_interval = float(snapshot_interval)
        self.viewers = 0
        self.offered = 0  # frames copied because a viewer asked for one
        self.kept = 0  # frames copied only to keep /snapshot.jpg recent
        self.dropped = 0  # frames skipped while someone was watching
        self.encoded = 0

    def wants_frame(self) -> bool:
        return self._wanted or time.monotonic() - self._kept_at >= self.snapshot_interval

    def offer(self, frame: np.ndarray) -> bool:
        """Called by the detector: never blocks. Returns whether the frame was taken."""
        wanted = self._wanted
        now = time.monotonic()
        if not wanted and now - self._kept_at < self.snapshot_interval:
            if self.viewers:
                self.dropped += 1
            return False
        if not self._cond.acquire(blocking=False):  # a viewer is encoding: skip this frame
            if wanted or self.viewers:
                self.dropped += 1
            return False
        try:
            if self._frame is None or self._frame.shape != frame.shape or self._frame.dtype != frame.dtype:
                self._frame = np.empty_like(frame)  # first frame or a size change only
            np.copyto(self._frame, frame)
            self._frame_seq += 1
            self._kept_at = now
            if self._wanted:
                self._wanted = False
                self.offered += 1
            else:
                self.kept += 1
            self._cond.notify_all()
        finally:
            self._cond.release()
        return True

    def _encode_newest(self) -> bool:
        """With the lock held: make ``_jpeg`` the JPEG of the newest kept frame."""
        if self._jpeg_seq == self._frame_seq:
            return True
        ok, encoded = cv2.imencode(".jpg", self._frame, self._params)
        if not ok:
            return False
        self._jpeg, self._jpeg_seq = encoded, self._frame_seq
        self.encoded += 1
        return True

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, np.ndarray] | None:
        """The JPEG (a uint8 buffer) of a frame newer than ``after`` (a sequence number), waiting up to
        ``timeout`` seconds for one."""
        with self._cond:
            if self._frame_seq <= after:
                self._wanted = True
                if not self._cond.wait_for(lambda: self._frame_seq > after, timeout):
                    return None
            if not self._encode_newest():
                return None
            return self._jpeg_seq, self._jpeg

    def snapshot(self, timeout: float) -> np.ndarray | None:
        """The JPEG of the newest kept frame (at most ``snapshot_interval`` plus one frame old while
        frames arrive), waiting up to ``timeout`` seconds for the first frame."""
        with self._cond:
            if self._frame_seq == 0:
                self._wanted = True
                if not self._cond.wait_for(lambda: self._frame_seq > 0, timeout):
                    return None
            return self._jpeg if self._encode_newest() else None

    def latest_jpeg(self) -> bytes:
        """The last JPEG encoded (for a viewer or a snapshot), without encoding; ``b""`` if none."""
        with self._cond:
            return b"" if self._jpeg is None else self._jpeg.tobytes()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


# ---- connections --------------------------------------------------------------------------------

_WAITING, _BUSY, _STREAMING = "waiting", "busy", "streaming"


class _Conn:
    """One accepted socket: its client, phase and deadline, and a lock that serialises closing it
    (by its own thread) with shutting it down (by the accept thread, to evict it)."""

    __slots__ = ("sock", "client", "opened", "phase", "since", "deadline", "requests", "evicted", "closed",
                 "lock")

    def __init__(self, sock: socket.socket, client: str, header_timeout: float) -> None:
        self.sock, self.client = sock, client
        self.opened = self.since = time.monotonic()
        self.deadline = self.opened + header_timeout
        self.phase = _WAITING
        self.requests = 0
        self.evicted = self.closed = False
        self.lock = threading.Lock()

    def set_phase(self, phase: str, deadline: float = float("inf")) -> None:
        self.phase, self.since, self.deadline = phase, time.monotonic(), deadline

    def evict(self) -> bool:
        """Shut the socket down so its thread's ``recv`` returns at once (the thread closes it)."""
        with self.lock:
            if self.closed or self.evicted:
                return False
            self.evicted = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.sock.close()


class _Server(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address, preview: "PreviewServer", *, backlog: int) -> None:
        self.preview = preview
        self.request_queue_size = backlog
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._cond = threading.Condition(threading.Lock())
        self._conns: set[_Conn] = set()
        self._per_client: dict[str, int] = {}
        self._next_reap = 0.0
        self._backoff = 0.0
        self._fd_logged_at = float("-inf")
        self.refused = self.evicted = self.timed_out = self.fd_errors = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            try:  # [::] serves IPv4 clients too, wherever the system allows it
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (OSError, AttributeError):
                pass
        super().server_bind()

    def dual_stack(self) -> bool:
        try:
            return not self.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        except (OSError, AttributeError):
            return False

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- accepting ----------------------------------------------------------------------------------

    def get_request(self):
        try:
            accepted = self.socket.accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_FILES:
                self._out_of_files(exc)
            raise  # socketserver drops it and goes back to select()
        self._backoff = 0.0
        return accepted

    def _out_of_files(self, exc: OSError) -> None:
        """EMFILE/ENFILE: the listen socket stays readable, so retrying at once would spin. Close the
        oldest connection still waiting for a request (its descriptor comes back) and wait a little."""
        self.fd_errors += 1
        now = time.monotonic()
        if now - self._fd_logged_at >= 10.0:
            self._fd_logged_at = now
            LOG.warning("edge preview: cannot accept a connection (%s); closing the oldest idle one and "
                        "backing off", os.strerror(exc.errno) if exc.errno else exc)
        with self._cond:
            victim = self._oldest_waiting(self._conns)
        if victim is not None and victim.evict():
            self.evicted += 1
        self._backoff = min(0.5, max(0.05, self._backoff * 2))
        self.preview.closing.wait(self._backoff)

    @staticmethod
    def _oldest_waiting(pool) -> _Conn | None:
        waiting = [c for c in pool if c.phase == _WAITING and not c.evicted]
        return min(waiting, key=lambda c: c.since) if waiting else None

    def _admit(self, conn: _Conn) -> bool:
        """Register ``conn`` if the limits allow, closing the oldest waiting connection (of the same
        client when that client is at its limit) to make room; ``False`` when nothing can be closed."""
        give_up = time.monotonic() + _ADMIT_WAIT
        preview = self.preview
        with self._cond:
            while True:
                mine = self._per_client.get(conn.client, 0)
                if len(self._conns) < preview.max_connections and mine < preview.max_per_client:
                    self._conns.add(conn)
                    self._per_client[conn.client] = mine + 1
                    return True
                pool = ([c for c in self._conns if c.client == conn.client] if mine >= preview.max_per_client
                        else self._conns)
                if not any(c.evicted for c in pool):  # none already on its way out: close one
                    victim = self._oldest_waiting(pool)
                    if victim is None or not victim.evict():
                        return False
                    self.evicted += 1
                remaining = give_up - time.monotonic()
                if remaining <= 0 or preview.closing.is_set():
                    return False
                self._cond.wait(remaining)  # until the victim's thread has closed it

    def process_request(self, request, client_address) -> None:
        conn = _Conn(request, _client_key(client_address), self.preview.header_timeout)
        if not self._admit(conn):
            self.refused += 1
            try:
                request.setblocking(False)
                request.send(_REFUSAL)
            except OSError:
                pass
            conn.close()
            return
        try:
            threading.Thread(target=self._serve, args=(conn, client_address), name="edge-preview-conn",
                             daemon=True).start()
        except RuntimeError as exc:  # no thread to be had
            LOG.warning("edge preview: cannot start a thread for %s (%s)", conn.client, exc)
            self._forget(conn)

    def _serve(self, conn: _Conn, client_address) -> None:
        try:
            _Handler(conn.sock, client_address, self, conn)
        except Exception:
            self.handle_error(conn.sock, client_address)
        finally:
            self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        conn.close()
        with self._cond:
            if conn in self._conns:
                self._conns.discard(conn)
                left = self._per_client.get(conn.client, 1) - 1
                if left > 0:
                    self._per_client[conn.client] = left
                else:
                    self._per_client.pop(conn.client, None)
            self._cond.notify_all()

    def service_actions(self) -> None:
        """On the accept thread after every ``select``: shut down connections past their deadline."""
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + _REAP_EVERY
        with self._cond:
            expired = [c for c in self._conns if c.phase == _WAITING and c.deadline <= now]
        for conn in expired:
            if conn.evict():
                self.timed_out += 1

    def close_all(self) -> None:
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            conn.evict()

    def handle_error(self, request, client_address) -> None:
        """One line, never a traceback: a client that went away mid-response is routine."""
        exc = sys.exc_info()[1]
        client = _client_key(client_address)
        if isinstance(exc, OSError):  # BrokenPipeError, ConnectionResetError, timeouts, a shut-down socket
            LOG.debug("edge preview: %s went away (%s)", client, first_line(exc, with_type=True))
        else:
            LOG.error("edge preview: request from %s failed: %s", client, first_line(exc, with_type=True))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "edgekit-preview"
    sys_version = ""

    def __init__(self, request, client_address, server: _Server, conn: _Conn) -> None:
        self.conn = conn
        super().__init__(request, client_address, server)

    def log_message(self, format, *args) -> None:  # noqa: A002 -- no per-request noise on stderr
        LOG.debug("edge preview: %s %s", self.conn.client, format % args)

    def handle_one_request(self) -> None:
        conn, preview = self.conn, self.server.preview
        now = time.monotonic()
        deadline = conn.opened + preview.header_timeout if conn.requests == 0 else now + preview.idle_timeout
        conn.set_phase(_WAITING, deadline)  # the reaper enforces the deadline; the timeout is a fallback
        if deadline <= now or conn.evicted:
            self.close_connection = True
            return
        self.connection.settimeout(deadline - now)
        super().handle_one_request()
        conn.requests += 1

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.conn.evicted:  # timed out or closed for room while the headers arrived: no response
            self.close_connection = True
            return False
        self.conn.set_phase(_BUSY)
        self.connection.settimeout(self.server.preview.write_timeout)
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a GET server reads no bodies; do not parse one as a request
        return True

    def _authorized(self, query: dict) -> bool:
        token = self.server.preview.token
        if not token:
            return True
        given = query.get("token", [""])[0]
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, status: int, body, content_type: str, *, close: bool = False) -> None:
        view = memoryview(body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(view.nbytes))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(view)

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        preview = self.server.preview
        url = urlsplit(self.path)
        if preview.token is None:
            if not preview.host_allowed(self.headers.get("Host")):
                self._send(HTTPStatus.FORBIDDEN, b"host not allowed: open the preview as http://127.0.0.1, "
                           b"localhost or this machine's address, or start it with a token\n", "text/plain",
                           close=True)
                return
        elif not self._authorized(parse_qs(url.query)):
            self._send(HTTPStatus.FORBIDDEN, b"token required\n", "text/plain")
            return
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, preview.page, "text/html; charset=utf-8")
        elif url.path == "/stats.json":
            self._send(HTTPStatus.OK, json.dumps(preview.stats()).encode(), "application/json")
        elif url.path == "/snapshot.jpg":
            jpeg = preview.exchange.snapshot(2.0)  # asks for a frame only if none was ever kept
            if jpeg is not None:
                self._send(HTTPStatus.OK, jpeg, "image/jpeg")
            else:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
        elif url.path == "/stream.mjpg":
            self._stream()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _stream(self) -> None:
        preview = self.server.preview
        exchange = preview.exchange
        with preview.viewer_lock:
            if exchange.viewers >= preview.max_viewers:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many viewers\n", "text/plain")
                return
            exchange.viewers += 1
        self.close_connection = True
        self.conn.set_phase(_STREAMING)  # stays while it reads: never reaped, never closed for room
        try:
            self.connection.settimeout(preview.write_timeout)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            seq = 0
            while not preview.closing.is_set() and not self.conn.evicted:
                found = exchange.next_jpeg(seq, 0.5)
                if found is None:
                    continue
                seq, jpeg = found
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {jpeg.nbytes}"
                                 f"\r\n\r\n".encode())
                self.wfile.write(memoryview(jpeg))
                self.wfile.write(b"\r\n")
        except (OSError, ValueError) as exc:  # browser went away or stopped reading: drop this viewer
            LOG.debug("edge preview: stream to %s ended (%s)", self.conn.client, first_line(exc, with_type=True))
        finally:
            with preview.viewer_lock:
                exchange.viewers -= 1


class PreviewServer:
    """The HTTP server on its own thread. ``stats`` returns the live numbers shown on the page.

    ``token`` (``None``: no authentication; never empty, see :func:`resolve_token`). The limits and
    timeouts are described in the module docstring; tests pass short ones. ``allowed_hosts`` adds
    names accepted in the ``Host`` header without a token (e.g. a reverse proxy's name).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None,
                 stats: Callable[[], dict] | None = None, quality: int = 80,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT,
                 max_viewers: int = MAX_VIEWERS, backlog: int = BACKLOG, header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 snapshot_interval: float = SNAPSHOT_INTERVAL, allowed_hosts: Iterable[str] = ()) -> None:
        self.token = _check_token(token)
        for name, value in (("max_connections", max_connections), ("max_per_client", max_per_client),
                            ("max_viewers", max_viewers), ("backlog", backlog), ("header_timeout", header_timeout),
                            ("idle_timeout", idle_timeout), ("write_timeout", write_timeout)):
            if not value > 0:
                raise ValueError(f"PreviewServer {name}={value!r}: must be more than 0")
        self.max_connections, self.max_per_client, self.max_viewers = max_connections, max_per_client, max_viewers
        self.header_timeout, self.idle_timeout, self.write_timeout = header_timeout, idle_timeout, write_timeout
        self.exchange = FrameExchange(quality, snapshot_interval)
        self.viewer_lock = threading.Lock()
        self.closing = threading.Event()
        self._closed = False
        self._stats = stats or (lambda: {})
        self.page = PAGE.read_bytes()
        bind = host.strip("[]") if host else "0.0.0.0"
        try:
            self._server = _Server((bind, port), self, backlog=backlog)
        except OSError as exc:
            raise EdgeError(f"--preview {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        self.host, self.port = bind, self._server.server_address[1]
        if bind in ("0.0.0.0", "::"):
            ipv6 = bind == "::"
            self.public_host = (_reachable_address(not ipv6 or self._server.dual_stack(), ipv6)
                                or socket.gethostname() or "127.0.0.1")
        else:
            self.public_host = bind
        own = socket.gethostname().lower()
        self._names = {"localhost", bind.lower(), self.public_host.lower(), own, f"{own}.local"}
        self._names.update(name.lower().strip("[]").rstrip(".") for name in allowed_hosts)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": _REAP_EVERY},
                                        name="edge-preview", daemon=True)

    @property
    def url(self) -> str:
        """The page's address as a browser elsewhere would type it: the machine's address for a
        wildcard bind, the real port, the token URL-quoted."""
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request without a token may be served, judged by its ``Host`` header.

        DNS rebinding needs a name the attacker's DNS answers for, so only such names are refused.
        Accepted: an IP literal (a browser sends one only when it was told this address), a name
        without a dot (``localhost``, this machine's name, any LAN or container name: resolved locally,
        never by an outside DNS), ``*.localhost`` (browsers map it to loopback themselves), the bind
        name, this machine's ``NAME.local`` and ``allowed_hosts``; with or without a port (any port: a
        port mapping may change it). No ``Host`` at all comes from a tool, never from a browser.
        """
        if header is None:
            return True
        name = _host_name(header)
        if not name:
            return False
        return (name in self._names or "." not in name or name.endswith(".localhost") or _is_ip(name))

    def set_stats(self, stats: Callable[[], dict]) -> None:
        """Where the page's numbers come from (e.g. :meth:`edge.live.loop.LiveLoop.live_stats`)."""
        self._stats = stats

    def stats(self) -> dict:
        data = dict(self._stats())
        data.update(viewers=self.exchange.viewers, preview_frames=self.exchange.encoded,
                    preview_dropped=self.exchange.dropped, preview_connections=self._server.connections,
                    preview_refused=self._server.refused)
        return data

    @property
    def connections(self) -> int:
        """Connections open now (each has a thread)."""
        return self._server.connections

    def start(self) -> "PreviewServer":
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        self.exchange.wake()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        if self._thread.ident is not None:
            self._thread.join(2.0)

    stop = close


class PreviewSink(Sink):
    """Offers annotated frames to the preview page: every frame a viewer is ready for, and one every
    ``snapshot_interval`` for ``/snapshot.jpg``; the rest are dropped (and not even annotated if no
    other sink needs it). No allocation here: the exchange copies into its preallocated buffer."""

    needs_annotation = True

    def __init__(self, server: PreviewServer) -> None:
        self.server = server

    def start(self, stats: Callable[[], dict]) -> None:
        self.server.set_stats(stats)

    def wants_frame(self) -> bool:
        return self.server.exchange.wants_frame()

    def write(self, frame, detections, annotated) -> None:
        exchange = self.server.exchange
        if annotated is not None:
            exchange.offer(annotated)
        elif exchange.viewers:  # every viewer is still busy with an earlier frame: this one is skipped
            exchange.dropped += 1

    def close(self) -> None:
        self.server.close()
