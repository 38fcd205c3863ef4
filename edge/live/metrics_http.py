"""The Prometheus exporter's HTTP server: ``GET /metrics`` on its own port, one connection at a time.

:class:`MetricsServer` serves what :class:`~edge.live.metrics.MetricsSink` renders. The same rules as
the preview page (:mod:`edge.live.preview`): with a token every request needs ``?token=...`` or
``Authorization: Bearer ...`` (Prometheus: ``authorization: {credentials_file: ...}``); without one,
the ``Host`` header must name this machine (:meth:`PreviewServer.host_allowed
<edge.live.preview.PreviewServer.host_allowed>`, used as is), so a page elsewhere that rebinds its
DNS name to 127.0.0.1 gets 403.

The server is one thread serving one connection at a time, each with a hard deadline (``timeout``
seconds for the whole request and response) and a bounded request head, so a slow or hostile
client holds it for at most that long and memory stays fixed. When ``accept`` fails for lack of
file descriptors it backs off instead of spinning on the ready listen socket.
"""

from __future__ import annotations

import errno
import hmac
import http.client
import io
import logging
import socket
import threading
import time
from http import HTTPStatus
from typing import Callable, Iterable
from urllib.parse import parse_qs, quote, urlsplit

from edge.errors import EdgeError, first_line
from edge.live.preview import PreviewServer, _check_token, _reachable_address, parse_bind

LOG = logging.getLogger("edge.live.metrics")  # the exporter's one logger, whichever module logs
TOKEN_ENV = "EDGE_METRICS_TOKEN"
REQUEST_TIMEOUT = 5.0  # seconds for a whole request: headers in, response out
MAX_HEAD = 16 * 1024  # bytes of request line and headers
BACKLOG = 16
_ACCEPT_POLL = 0.25  # seconds between checks for close() while nobody connects
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_metrics_bind(spec: str) -> tuple[str, int]:
    """``"9108"`` -> ``("127.0.0.1", 9108)``; ``"0.0.0.0:9108"`` -> ``("0.0.0.0", 9108)``."""
    try:
        return parse_bind(spec)
    except EdgeError:
        raise EdgeError(f"--metrics {spec}: write PORT or HOST:PORT (e.g. 9108 or 0.0.0.0:9108)") from None


class MetricsServer:
    """``/metrics`` over HTTP on its own thread; what it serves comes from :meth:`set_render`.

    ``token`` (``None``: no authentication, then the ``Host`` rule applies; never empty, see
    :func:`edge.live.preview.resolve_token`). ``allowed_hosts`` adds names accepted in ``Host``
    without a token (a reverse proxy's). ``timeout`` bounds each request from accept to the last
    byte sent.
    """

    host_allowed = PreviewServer.host_allowed  # the preview's Host rule, on this server's names

    def __init__(self, host: str = "127.0.0.1", port: int = 9108, *, token: str | None = None,
                 allowed_hosts: Iterable[str] = (), timeout: float = REQUEST_TIMEOUT) -> None:
        self.token = _check_token(token)
        if not timeout > 0:
            raise ValueError(f"MetricsServer timeout={timeout!r}: must be more than 0")
        self.timeout = float(timeout)
        bind = host.strip("[]") if host else "0.0.0.0"
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and bind == "::":
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:
                    pass
            sock.bind((bind, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise EdgeError(f"--metrics {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        sock.settimeout(_ACCEPT_POLL)
        self._sock = sock
        self.host, self.port = bind, sock.getsockname()[1]
        if bind in ("0.0.0.0", "::"):
            self.public_host = _reachable_address(True, bind == "::") or socket.gethostname() or "127.0.0.1"
        else:
            self.public_host = bind
        own = socket.gethostname().lower()
        self._names = {"localhost", bind.lower(), self.public_host.lower(), own, f"{own}.local"}
        self._names.update(name.lower().strip("[]").rstrip(".") for name in allowed_hosts)
        self._render: Callable[[], bytes] = lambda: b""
        self._closing = threading.Event()
        self._current: socket.socket | None = None
        self.requests = self.scrapes = self.refused = self.timed_out = 0
        self._thread = threading.Thread(target=self._serve, name="edge-metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        query = f"?token={quote(self.token, safe='')}" if self.token else ""
        return f"http://{host}:{self.port}/metrics{query}"

    def set_render(self, render: Callable[[], bytes]) -> None:
        """What ``/metrics`` serves: called on the server's thread, once per scrape."""
        self._render = render

    def start(self) -> "MetricsServer":
        if not self._thread.is_alive() and not self._closing.is_set():
            self._thread.start()
        return self

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        current = self._current
        if current is not None:
            try:
                current.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread.ident is not None:
            self._thread.join(self.timeout + 2 * _ACCEPT_POLL)
        self._sock.close()

    stop = close

    # ---- serving (its own thread) ----------------------------------------------------------------

    def _serve(self) -> None:
        backoff = 0.0
        while not self._closing.is_set():
            try:
                conn, address = self._sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._closing.is_set():
                    break
                if exc.errno in _OUT_OF_FILES:  # the listen socket stays readable: do not spin
                    backoff = min(1.0, max(0.05, backoff * 2))
                    self._closing.wait(backoff)
                continue
            backoff = 0.0
            self._current = conn
            try:
                self._handle(conn, address)
            except Exception as exc:  # one line, never a traceback, and the server goes on
                LOG.debug("edge metrics: request from %s failed: %s", address[0], first_line(exc, with_type=True))
            finally:
                self._current = None
                try:
                    conn.close()
                except OSError:
                    pass

    def _handle(self, conn: socket.socket, address) -> None:
        deadline = time.monotonic() + self.timeout
        head = bytearray()
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out += 1
                return  # too slow: closed without a word
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                self.timed_out += 1
                return
            if not chunk:
                return
            head += chunk
            if len(head) > MAX_HEAD:
                self._respond(conn, deadline, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n")
                return
        self.requests += 1
        line, _, rest = bytes(head).partition(b"\n")
        parts = line.decode("latin-1").strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(conn, deadline, HTTPStatus.BAD_REQUEST, b"bad request\n")
            return
        method, target, _version = parts
        try:
            headers = http.client.parse_headers(io.BytesIO(rest))
        except http.client.HTTPException:
            self._respond(conn, deadline, HTTPStatus.BAD_REQUEST, b"bad headers\n")
            return
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._respond(conn, deadline, HTTPStatus.METHOD_NOT_ALLOWED, b"GET /metrics\n", extra=("Allow: GET, HEAD",))
            return
        url = urlsplit(target)
        if self.token is None:
            if not self.host_allowed(headers.get("Host")):
                self.refused += 1
                self._respond(conn, deadline, HTTPStatus.FORBIDDEN,
                              b"host not allowed: scrape http://127.0.0.1, localhost or this machine's address, "
                              b"or start the exporter with a token\n", head_only=head_only)
                return
        elif not self._authorized(parse_qs(url.query), headers):
            self.refused += 1
            self._respond(conn, deadline, HTTPStatus.FORBIDDEN, b"token required\n", head_only=head_only,
                          extra=('WWW-Authenticate: Bearer realm="edgekit"',))
            return
        if url.path == "/metrics":
            body = self._render()
            self.scrapes += 1
            self._respond(conn, deadline, HTTPStatus.OK, body, CONTENT_TYPE, head_only=head_only)
        elif url.path == "/":
            self._respond(conn, deadline, HTTPStatus.OK, b"edgekit exporter: see /metrics\n", head_only=head_only)
        else:
            self._respond(conn, deadline, HTTPStatus.NOT_FOUND, b"not found\n", head_only=head_only)

    def _authorized(self, query: dict, headers) -> bool:
        given = query.get("token", [""])[0]
        header = headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def _respond(conn: socket.socket, deadline: float, status: HTTPStatus, body: bytes,
                 content_type: str = "text/plain; charset=utf-8", *, head_only: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                 "Connection: close", *extra]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        conn.sendall(data)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


__all__ = ["CONTENT_TYPE", "TOKEN_ENV", "MetricsServer", "parse_metrics_bind"]
