"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


def iou_xyxy(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(found: list[tuple[str, float, list[float]]], label: str, score: float, box=None,
          score_tol: float = 0.05, min_iou: float = 0.8) -> bool:
    """Is there a detection of ``label`` with ``score`` (within tolerance) and, if given, the box?"""
    for found_label, found_score, found_box in found:
        if found_label != label or abs(found_score - score) > score_tol:
            continue
        if box is None or iou_xyxy(found_box, box) >= min_iou:
            return True
    return False


def as_list(detections) -> list[tuple[str, float, list[float]]]:
    return [(detections.label(i), float(detections.scores[i]), [float(v) for v in detections.boxes[i]])
            for i in range(detections.count)]


class PortHold:
    """A loopback TCP port held by a bound socket that never listens: connections to it are refused,
    as to a port nothing listens on, but no other socket (another test, another xdist worker) can be
    given it meanwhile. A server that binds with SO_REUSEADDR (MjpegServer does) can take the port over
    while it is held; call :meth:`release` once it has."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]

    def release(self) -> None:
        self.sock.close()


class MjpegServer:
    """multipart/x-mixed-replace JPEG stream on 127.0.0.1, like an IP camera.

    ``stall_after``: the first connection sends that many frames, then keeps the socket open and
    silent (a hung camera). Frame ``i`` of connection ``c`` has pixel value ``(c * 50 + i) % 256``.
    """

    def __init__(self, port: int = 0, stall_after: int | None = None, size=(160, 120), fps: float = 30):
        self.stall_after, self.size, self.fps = stall_after, size, fps
        self.connections = 0
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.connections += 1
                conn = outer.connections
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
                self.end_headers()
                i = 0
                try:
                    while not outer.stop.is_set():
                        if conn == 1 and outer.stall_after is not None and i >= outer.stall_after:
                            outer.stop.wait(30)
                            return
                        image = np.full((outer.size[1], outer.size[0], 3), (conn * 50 + i) % 256, np.uint8)
                        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                        self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                        i += 1
                        time.sleep(1 / outer.fps)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
