"""The live preview page: an MJPEG stream of annotated frames and live stats, standard library only.

``GET /`` the page, ``/stream.mjpg`` the stream (``multipart/x-mixed-replace``), ``/stats.json`` the
numbers, ``/snapshot.jpg`` a recent frame. Binds 127.0.0.1 unless told otherwise; with a token,
every request needs ``?token=...`` (or ``Authorization: Bearer ...``).

Here: :class:`PreviewServer` (where it listens, who may use it, its thread), :class:`PreviewSink`
(what the loop writes to) and the helpers for ``--preview [HOST:]PORT`` and the token. The frames
go through :mod:`edge.live.frame_exchange` (the detector never waits for a viewer); the
connections, their limits and the requests are :mod:`edge.live.preview_http`'s. Several cameras
(``edge run --config``) on one page and port, a stream each: :mod:`edge.live.preview_cameras`.

Without a token, requests must name this machine in their ``Host`` header (see
:meth:`PreviewServer.host_allowed`): a page on another site that rebinds its DNS name to 127.0.0.1
gets 403. With a token, any ``Host`` is accepted: the token is the guard.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote

from edge.errors import EdgeError
from edge.live.frame_exchange import SNAPSHOT_INTERVAL, FrameExchange
from edge.live.preview_http import _REAP_EVERY, _Server
from edge.live.sinks import Sink

PAGE = Path(__file__).resolve().parent / "static" / "preview.html"
MAX_VIEWERS = 4  # concurrent MJPEG streams: each is a thread and a socket buffer; not a broadcast server
MAX_CONNECTIONS = 32  # all connections (threads) together
MAX_PER_CLIENT = 8  # per client address; a browser uses about 3 (page, stream, stats)
BACKLOG = 64  # listen queue
HEADER_TIMEOUT = 5.0  # seconds from accept until the request headers must be complete
IDLE_TIMEOUT = 10.0  # seconds a kept-alive connection may wait for its next request (the page polls every 1 s)
WRITE_TIMEOUT = 10.0  # seconds a stuck browser may block its own thread before it is dropped
TOKEN_ENV = "EDGE_PREVIEW_TOKEN"


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


class PreviewServer:
    """The HTTP server on its own thread. ``stats`` returns the live numbers shown on the page.

    ``token`` (``None``: no authentication; never empty, see :func:`resolve_token`). The limits and
    timeouts are described in :mod:`edge.live.preview_http`; tests pass short ones. ``allowed_hosts``
    adds names accepted in the ``Host`` header without a token (e.g. a reverse proxy's name).
    """

    repeat_every: float | None = None  # seconds after which a stream without a new frame repeats its last

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

    def route(self, path: str) -> tuple[str, object] | None:
        """What ``path`` serves: ``("page", bytes)``, ``("stats", callable)``, ``("snapshot", exchange)``
        or ``("stream", exchange)``; ``None`` for 404. The handler checks the token or Host first."""
        if path in ("/", "/index.html"):
            return "page", self.page
        if path == "/stats.json":
            return "stats", self.stats
        if path == "/snapshot.jpg":
            return "snapshot", self.exchange
        if path == "/stream.mjpg":
            return "stream", self.exchange
        return None

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
