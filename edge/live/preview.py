"""The live preview page: an MJPEG stream of annotated frames and live stats, standard library only.

``GET /`` the page, ``/stream.mjpg`` the stream (``multipart/x-mixed-replace``), ``/stats.json`` the
numbers, ``/snapshot.jpg`` the latest frame. Binds 127.0.0.1 unless told otherwise; with a token,
every request needs ``?token=...`` (or ``Authorization: Bearer ...``).

The detector never waits for a viewer: :meth:`FrameExchange.offer` copies the annotated frame into
one preallocated buffer only when a viewer has asked for a new frame and the buffer is not being
encoded, and returns at once otherwise (the frame is dropped for viewers). JPEG encoding happens on
the viewer's own thread, at the viewer's pace, and only while someone is watching.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.live.sinks import Sink

PAGE = Path(__file__).resolve().parent / "static" / "preview.html"
MAX_VIEWERS = 4  # each viewer is a thread and a socket buffer; a preview is not a broadcast server
WRITE_TIMEOUT = 10.0  # seconds a stuck browser may block its own thread before it is dropped
BOUNDARY = "edgekitframe"


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


class FrameExchange:
    """Hands the newest annotated frame from the detector thread to viewer threads, lossy by design."""

    def __init__(self, quality: int = 80) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._jpeg = b""
        self._jpeg_seq = 0
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
        self._wanted = False
        self.viewers = 0
        self.offered = 0  # frames copied for viewers
        self.dropped = 0  # frames skipped while someone was watching
        self.encoded = 0

    def wants_frame(self) -> bool:
        return self._wanted

    def offer(self, frame: np.ndarray) -> bool:
        """Called by the detector: never blocks. Returns whether the frame was taken."""
        if not self._wanted:
            if self.viewers:
                self.dropped += 1
            return False
        if not self._cond.acquire(blocking=False):  # a viewer is encoding: skip this frame
            self.dropped += 1
            return False
        try:
            if self._frame is None or self._frame.shape != frame.shape:
                self._frame = np.empty_like(frame)  # first frame or a size change only
            np.copyto(self._frame, frame)
            self._frame_seq += 1
            self._wanted = False
            self.offered += 1
            self._cond.notify_all()
        finally:
            self._cond.release()
        return True

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The JPEG of a frame newer than ``after`` (a sequence number), waiting up to ``timeout``."""
        with self._cond:
            if self._jpeg_seq > after:
                return self._jpeg_seq, self._jpeg
            if self._frame_seq <= self._jpeg_seq:
                self._wanted = True
                if not self._cond.wait_for(lambda: self._frame_seq > self._jpeg_seq, timeout):
                    return None
            ok, encoded = cv2.imencode(".jpg", self._frame, self._params)
            if not ok:
                return None
            self._jpeg, self._jpeg_seq = encoded.tobytes(), self._frame_seq
            self.encoded += 1
            return self._jpeg_seq, self._jpeg

    def latest_jpeg(self) -> bytes:
        with self._cond:
            return self._jpeg

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, preview: "PreviewServer") -> None:
        self.preview = preview
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # noqa: A002 -- no per-request noise on stderr
        pass

    def _authorized(self, query: dict) -> bool:
        token = self.server.preview.token
        if not token:
            return True
        given = query.get("token", [""])[0]
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        url = urlsplit(self.path)
        if not self._authorized(parse_qs(url.query)):
            self._send(HTTPStatus.FORBIDDEN, b"token required\n", "text/plain")
            return
        preview = self.server.preview
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, preview.page, "text/html; charset=utf-8")
        elif url.path == "/stats.json":
            self._send(HTTPStatus.OK, json.dumps(preview.stats()).encode(), "application/json")
        elif url.path == "/snapshot.jpg":
            jpeg = preview.exchange.latest_jpeg()
            if not jpeg:
                found = preview.exchange.next_jpeg(0, 2.0)  # counts as a viewer asking for one frame
                jpeg = found[1] if found else b""
            if jpeg:
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
            if exchange.viewers >= MAX_VIEWERS:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many viewers\n", "text/plain")
                return
            exchange.viewers += 1
        self.close_connection = True
        try:
            self.connection.settimeout(WRITE_TIMEOUT)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            seq = 0
            while not preview.closing.is_set():
                found = exchange.next_jpeg(seq, 0.5)
                if found is None:
                    continue
                seq, jpeg = found
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                 f"\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (OSError, ValueError):  # browser went away or stopped reading: drop this viewer
            pass
        finally:
            with preview.viewer_lock:
                exchange.viewers -= 1


class PreviewServer:
    """The HTTP server on its own thread. ``stats`` returns the live numbers shown on the page."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None,
                 stats: Callable[[], dict] | None = None, quality: int = 80) -> None:
        self.token = token or None
        self.exchange = FrameExchange(quality)
        self.viewer_lock = threading.Lock()
        self.closing = threading.Event()
        self._stats = stats or (lambda: {})
        self.page = PAGE.read_bytes()
        try:
            self._server = _Server((host, port), _Handler, self)
        except OSError as exc:
            raise EdgeError(f"--preview {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edge-preview", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def set_stats(self, stats: Callable[[], dict]) -> None:
        """Where the page's numbers come from (e.g. :meth:`edge.live.loop.LiveLoop.live_stats`)."""
        self._stats = stats

    def stats(self) -> dict:
        data = dict(self._stats())
        data.update(viewers=self.exchange.viewers, preview_frames=self.exchange.encoded,
                    preview_dropped=self.exchange.dropped)
        return data

    def start(self) -> "PreviewServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self.exchange.wake()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


class PreviewSink(Sink):
    """Offers each annotated frame to the preview page (dropped unless a viewer is ready for one)."""

    needs_annotation = True
    name = "preview"

    def __init__(self, server: PreviewServer) -> None:
        self.server = server

    def wants_frame(self) -> bool:
        return self.server.exchange.wants_frame()

    def write(self, frame_index, timestamp, frame, detections, annotated) -> None:
        exchange = self.server.exchange
        if annotated is not None:
            exchange.offer(annotated)
        elif exchange.viewers:  # every viewer is still busy with an earlier frame: this one is skipped
            exchange.dropped += 1

    def close(self) -> None:
        self.server.close()
