"""The preview's HTTP server under :class:`~edge.live.preview.PreviewServer`: bounded connections
and the requests they carry.

``_Server`` accepts and admits connections, one thread each; ``_Handler`` checks the token or the
``Host`` rule, then serves what ``server.preview.route(path)`` names: a page, a stats callable, a
snapshot or a stream of a :class:`~edge.live.frame_exchange.FrameExchange` (``/``, ``/stats.json``,
``/snapshot.jpg``, ``/stream.mjpg`` for one camera; ``/camera/NAME/...`` as well for several, see
:mod:`edge.live.preview_cameras`). At most ``max_viewers`` streams per exchange. The server is a
small board's guest, so everything it holds is bounded:

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import errno
import hmac
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
from urllib.parse import parse_qs, urlsplit

from edge.errors import first_line

if TYPE_CHECKING:  # the server this handler belongs to (imported by it, not the other way)
    from edge.live.preview import PreviewServer

LOG = logging.getLogger("edge.live.preview")  # the preview's one logger, whichever module logs
BOUNDARY = "edgekitframe"
_ADMIT_WAIT = 1.0  # seconds the accept loop waits for a closed connection's thread to end
_REAP_EVERY = 0.1  # seconds between deadline checks on the accept thread
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
            b"Connection: close\r\n\r\ntoo many connections\n")


def _client_key(client_address) -> str:
    host = str(client_address[0]) if client_address else "?"
    return host[7:] if host.startswith("::ffff:") else host  # IPv4 clients of a dual-stack socket


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
        found = preview.route(url.path)
        if found is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        kind, target = found
        if kind == "page":
            self._send(HTTPStatus.OK, target, "text/html; charset=utf-8")
        elif kind == "stats":
            self._send(HTTPStatus.OK, json.dumps(target()).encode(), "application/json")
        elif kind == "snapshot":
            jpeg = target.snapshot(2.0)  # asks for a frame only if none was ever kept
            if jpeg is not None:
                self._send(HTTPStatus.OK, jpeg, "image/jpeg")
            else:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
        else:
            self._stream(target)

    def _stream(self, exchange) -> None:
        preview = self.server.preview
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
            seq, jpeg, sent_at = 0, None, 0.0
            repeat = preview.repeat_every  # a camera without new frames: its last JPEG again, no encoding
            while not preview.closing.is_set() and not self.conn.evicted:
                found = exchange.next_jpeg(seq, 0.5)
                if found is not None:
                    seq, jpeg = found
                elif repeat is None or jpeg is None or time.monotonic() - sent_at < repeat:
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {jpeg.nbytes}"
                                 f"\r\n\r\n".encode())
                self.wfile.write(memoryview(jpeg))
                self.wfile.write(b"\r\n")
                sent_at = time.monotonic()
        except (OSError, ValueError) as exc:  # browser went away or stopped reading: drop this viewer
            LOG.debug("edge preview: stream to %s ended (%s)", self.conn.client, first_line(exc, with_type=True))
        finally:
            with preview.viewer_lock:
                exchange.viewers -= 1
