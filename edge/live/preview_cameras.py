"""The preview page of ``edge run --config FILE --preview [HOST:]PORT``: every camera on one page and
one port, each with its own stream, snapshot and numbers.

Routes (NAME URL-quoted; the config's names need no quoting, but they are quoted anyway):

* ``/`` the page: a tile per camera with its live image and its numbers (state, fps, frames read,
  processed and dropped, read errors, reconnects, stalls), and the loop's numbers at the top. Up to
  :data:`PAGE_STREAMS` cameras it shows each camera's MJPEG stream; with more it refreshes each
  camera's snapshot once a second instead (a browser opens at most 6 connections to one server,
  and a stream holds one for as long as it plays);
* ``/stats.json`` the loop's numbers and ``per_camera``: ``{NAME: {..., "state", "viewers", ...}}``;
* ``/camera/NAME/stream.mjpg``, ``/camera/NAME/snapshot.jpg``, ``/camera/NAME/stats.json`` one
  camera's stream, recent frame and numbers.

:class:`CamerasPreviewServer` is a :class:`~edge.live.preview.PreviewServer` (the same token, Host
rule, connection limits and deadlines, :mod:`edge.live.preview_http`) with a
:class:`~edge.live.frame_exchange.FrameExchange` per camera: each camera's frames are copied and
encoded by the single-camera rule (a copy only when one of its viewers asks, or every
``snapshot_interval`` for its snapshot; JPEG encoding only on request, on the viewer's thread),
into its own fixed buffer, and ``max_viewers`` applies per camera. A camera that is down, stalled
or ended shows its state; its viewers wait on its exchange alone, so it never holds up another
camera's stream. :meth:`CamerasPreviewServer.attach` adds a :class:`CameraPreview` sink to each
camera: the loop hands it only that camera's annotated frames and starts it with that camera's stats.
"""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote, unquote

from edge.errors import EdgeError
from edge.live.frame_exchange import SNAPSHOT_INTERVAL, FrameExchange
from edge.live.preview import PreviewServer
from edge.live.sinks import Sink

PAGE = Path(__file__).resolve().parent / "static" / "preview_cameras.html"
PAGE_STREAMS = 4  # cameras shown as live streams on the page; beyond, snapshots once a second
REPEAT_EVERY = 1.0  # seconds: a stream of a camera without new frames repeats its last JPEG this often
_CELLS = "<!-- CAMERAS -->"
_NUMBERS = (("fps", "fps"), ("frames_read", "read"), ("frames_processed", "processed"),
            ("frames_dropped", "dropped"), ("read_errors", "errors"), ("reconnects", "reconnects"),
            ("stalls", "stalls"), ("viewers", "viewers"))


def camera_path(name: str) -> str:
    """The prefix of camera ``name``'s routes: ``/camera/NAME/``, NAME URL-quoted."""
    return f"/camera/{quote(name, safe='')}/"


def _starting() -> dict:
    return {"state": "starting"}


class CameraFeed:
    """One camera on the preview: its name, its routes' prefix, its frame exchange and its numbers
    (``stats``: the camera's :meth:`~edge.live.cameras.Camera.stats` once the loop has started)."""

    __slots__ = ("name", "path", "exchange", "stats")

    def __init__(self, name: str, quality: int, snapshot_interval: float) -> None:
        self.name = name
        self.path = camera_path(name)
        self.exchange = FrameExchange(quality, snapshot_interval)
        self.stats: Callable[[], dict] = _starting


def render_page(feeds: Iterable[CameraFeed], streams: int = PAGE_STREAMS) -> bytes:
    """The page with a tile per camera (names HTML-escaped, paths URL-quoted and relative, so the
    page works behind a reverse proxy's path prefix too)."""
    cells = []
    for feed in feeds:
        name = html.escape(feed.name, quote=True)
        numbers = " ".join(f'<span class="stat">{label} <b data-key="{key}">-</b></span>' for key, label in _NUMBERS)
        cells.append(f'<section class="camera" data-name="{name}" data-path="{html.escape(feed.path[1:])}">\n'
                     f'  <h2><span class="name">{name}</span> <span class="state">starting</span></h2>\n'
                     f'  <img class="view" alt="{name}: annotated live image">\n'
                     f'  <p class="numbers">{numbers}</p>\n</section>')
    text = PAGE.read_text(encoding="utf-8").replace(_CELLS, "\n".join(cells))
    return text.replace('data-streams="4"', f'data-streams="{int(streams)}"').encode("utf-8")


class CamerasPreviewServer(PreviewServer):
    """One preview server for several cameras (``cameras``: their names, in page order).

    Takes :class:`~edge.live.preview.PreviewServer`'s options; ``max_viewers`` is per camera.
    :meth:`set_stats` gives the loop-wide numbers (:meth:`MultiLoop.live_stats
    <edge.live.multiloop.MultiLoop.live_stats>`); each camera's come from its :class:`CameraPreview`.
    A stream whose camera has no new frame for :data:`REPEAT_EVERY` seconds sends its last JPEG
    again (the buffer already encoded, no new encode): a browser shows an MJPEG part only when the
    next one begins, so a stalled or ended camera's last frame would otherwise never appear.
    """

    repeat_every = REPEAT_EVERY

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, cameras: Iterable[str] = (), *,
                 quality: int = 80, snapshot_interval: float = SNAPSHOT_INTERVAL, page_streams: int = PAGE_STREAMS,
                 **options) -> None:
        names = [str(name) for name in cameras]
        if not names:
            raise EdgeError("a preview of several cameras needs at least one camera")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise EdgeError(f"camera names must be unique: {', '.join(duplicates)} given twice")
        feeds = {name: CameraFeed(name, quality, snapshot_interval) for name in names}
        page = render_page(feeds.values(), page_streams)
        super().__init__(host, port, quality=quality, snapshot_interval=snapshot_interval, **options)
        self.feeds = feeds
        self.page = page

    def attach(self, cameras) -> list["CameraPreview"]:
        """A :class:`CameraPreview` added to each camera's sinks (:class:`~edge.live.cameras.Camera`)."""
        sinks = []
        for camera in cameras:
            sink = CameraPreview(self, camera.name)
            camera.sinks.append(sink)
            sinks.append(sink)
        return sinks

    def route(self, path: str) -> tuple[str, object] | None:
        if path.startswith("/camera/"):
            quoted, sep, leaf = path[len("/camera/"):].partition("/")
            feed = self.feeds.get(unquote(quoted)) if sep else None
            if feed is None:
                return None
            if leaf == "stream.mjpg":
                return "stream", feed.exchange
            if leaf == "snapshot.jpg":
                return "snapshot", feed.exchange
            if leaf == "stats.json":
                return "stats", partial(self.camera_stats, feed)
            return None
        if path in ("/stream.mjpg", "/snapshot.jpg"):  # which camera's? the page names each one's route
            return None
        return super().route(path)

    def camera_stats(self, feed: CameraFeed) -> dict:
        """One camera's numbers and its preview's (viewers, JPEGs encoded, frames dropped, routes)."""
        data = dict(feed.stats())
        exchange = feed.exchange
        data.update(name=feed.name, viewers=exchange.viewers, preview_frames=exchange.encoded,
                    preview_dropped=exchange.dropped, stream=feed.path + "stream.mjpg",
                    snapshot=feed.path + "snapshot.jpg")
        return data

    def stats(self) -> dict:
        data = dict(self._stats())
        data.pop("per_camera", None)
        per_camera = {name: self.camera_stats(feed) for name, feed in self.feeds.items()}
        data.update(viewers=sum(row["viewers"] for row in per_camera.values()),
                    preview_frames=sum(row["preview_frames"] for row in per_camera.values()),
                    preview_dropped=sum(row["preview_dropped"] for row in per_camera.values()),
                    preview_connections=self._server.connections, preview_refused=self._server.refused,
                    per_camera=per_camera)
        return data

    def close(self) -> None:
        if not self._closed:
            self.closing.set()
            for feed in self.feeds.values():  # streams waiting for a camera's next frame return now
                feed.exchange.wake()
        super().close()

    stop = close


class CameraPreview(Sink):
    """One camera's handle on a :class:`CamerasPreviewServer`: offers its annotated frames to its
    exchange by the rule of :class:`~edge.live.preview.PreviewSink` (nothing allocated per frame:
    the exchange copies into its buffer, presized here when the source knows its frame size).
    Closing it closes the server (once, whichever camera's handle comes first)."""

    needs_annotation = True

    def __init__(self, server: CamerasPreviewServer, camera: str) -> None:
        self.server = server
        self.camera = camera
        self.feed = server.feeds[camera]
        self.exchange = self.feed.exchange

    @property
    def ring_bytes(self) -> int:
        """The exchange's frame buffer, counted in the camera's ``preallocated_bytes``."""
        return self.exchange.buffer_bytes

    def start(self, stats: Callable[[], dict]) -> None:
        self.feed.stats = stats

    def presize(self, frame_shape: tuple[int, ...]) -> None:
        self.exchange.presize(frame_shape)

    def wants_frame(self) -> bool:
        return self.exchange.wants_frame()

    def write(self, frame, detections, annotated) -> None:
        exchange = self.exchange
        if annotated is not None:
            exchange.offer(annotated)
        elif exchange.viewers:  # every viewer of this camera is still busy with an earlier frame
            exchange.dropped += 1

    def close(self) -> None:
        self.server.close()


__all__ = ["PAGE_STREAMS", "CameraFeed", "CameraPreview", "CamerasPreviewServer", "camera_path", "render_page"]
