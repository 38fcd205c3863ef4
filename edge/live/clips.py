"""Event clips: a short video around each incident, with the seconds before it taken from a ring.

``edge run --clips DIR --pre-roll S --post-roll S``: when an event starts (an
:class:`~edge.events.zones.Event` of kind ``enter`` or ``cross`` by default, optionally only for
some classes), :class:`ClipSink` writes a video holding the ``pre_roll`` seconds before the event
frame, the event frame and the ``post_roll`` seconds after the last event of the clip. An event
while a clip is being written extends it (up to ``max_seconds``) instead of starting another.

Memory (fixed, preallocated)
----------------------------
The pre-roll ring holds raw frames, not JPEGs: ``capacity = ceil(pre_roll * fps) + 1`` frames
(the pre-roll and the current frame) of the first frame's size, ``capacity * H * W * 3`` bytes
(:attr:`ClipSink.ring_bytes`), allocated once, before the first frame where the source knows its
size (:meth:`ClipSink.presize`) and made resident at once. Frames of another size are resized into
their slot. JPEG would take ~10x less, but its size depends on the scene and encoding costs more
CPU per frame than the detector's resize on a Pi; a fixed, known number was the requirement. Per
frame the sink copies the frame into its slot and allocates nothing. While a clip is open FFmpeg
holds its encoder state (a few frames) and the MP4 muxer ~64 bytes of index per frame, at most
``max_seconds * fps`` frames.

Time: ``fps`` (the source's nominal rate) sizes the ring and is the clip's frame rate. The pre-roll
is the ring's frames not older than ``pre_roll`` seconds before the event frame (by capture time,
``Frame.stamp``), so a camera that was reconnecting does not put stale frames in front of an event;
the post-roll ends with the first frame captured more than ``post_roll`` seconds after the clip's
last event. When the detector keeps up with the source, a clip holds ``ceil(pre_roll * fps)``
frames before the event frame.

Files: ``DIR/PREFIX-YYYYmmdd-HHMMSS-SEQ.mp4`` (local time and source frame number of the first
event), written under a temporary ``.NAME.*.part.mp4`` (:func:`edge.files.atomic_path`) and renamed
once closed with its index, so a reader never sees half a clip; a clip cut by SIGTERM is closed
whole by :meth:`ClipSink.close`; one cut by SIGKILL or power loss leaves a ``.part`` file, removed at
the next start once it is older than any clip could be. Retention (``max_clips``, ``max_bytes``,
``max_age`` seconds) removes the oldest of this prefix's clips first, after each clip and at start.
A disk below ``reserve`` free bytes skips clips (counted, logged) rather than stopping detection.

Codec: the container's FourCCs as :class:`~edge.live.video.VideoSink` tries them: for ``.mp4``
H.264 (``avc1``, which browsers play) where the installed OpenCV's FFmpeg has an encoder for it (a
Pi's V4L2 hardware encoder, a distribution's OpenCV), else MPEG-4 Part 2 (``mp4v``: VLC and ffmpeg
play it, browsers do not); ``.webm`` (VP8) plays in browsers with any build. pip's opencv-python
wheels have no software H.264 encoder. :attr:`ClipSink.codec` says which was written.

The path of the clip being written is :attr:`ClipSink.current_clip` from its first frame (a JSON
lines or MQTT sink after this one in the sink list can put it in the event's line);
:attr:`ClipSink.last_clip` and ``on_clip(ClipInfo)`` give each clip once it is in place.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2

from edge.errors import EdgeError, first_line
from edge.files import atomic_path
from edge.live.clip_folder import ClipFolder, file_size
from edge.live.clip_ring import PreRollRing
from edge.live.sinks import Sink
from edge.live.video import _FOURCC, BROWSER_PLAYABLE, DISK_RESERVE, _has_mp4_index, _stderr_silenced

TRIGGER_KINDS = ("enter", "cross")
MAX_CLIP_SECONDS = 300.0  # a clip is closed at this length even while events go on (a new one starts)
CHECK_FRAMES = 15  # free space is checked every this many frames of an open clip
STALE_PART_MARGIN = 60.0  # seconds beyond max_seconds after which a .part file is a dead writer's
_INDEXED = (".mp4", ".m4v", ".mov")
_CODEC_CACHE: dict[str, str] = {}  # container suffix -> fourcc that opened, once per process


@dataclass
class ClipInfo:
    """One clip in place: its path, frames (``pre_frames`` of them before the first event frame),
    first and last frame capture time (Unix seconds), the events it holds and the codec."""

    path: Path
    frames: int
    pre_frames: int
    start: float
    end: float
    events: int
    first_event: dict = field(default_factory=dict)
    codec: str = ""
    bytes: int = 0

    def to_dict(self) -> dict:
        return {"clip": str(self.path), "frames": self.frames, "pre_frames": self.pre_frames,
                "start": round(self.start, 4), "end": round(self.end, 4), "events": self.events,
                "first_event": self.first_event, "codec": self.codec, "bytes": self.bytes}


class _Abort(Exception):
    """Thrown into atomic_path to remove a clip's temporary file."""


class _OpenClip:
    """A clip being written: the writer, its temporary and final names, and what went in."""

    def __init__(self, final: Path, tmp: Path, manager, writer, codec: str, event_stamp: float,
                 until: float, limit: float, event) -> None:
        self.final, self.tmp, self.manager, self.writer, self.codec = final, tmp, manager, writer, codec
        self.event_stamp, self.until, self.limit = event_stamp, until, limit
        self.frames = self.pre_frames = 0
        self.start = self.end = 0.0
        self.events = 0
        self.first_event = event.to_dict() if hasattr(event, "to_dict") else {}
        self.since_check = 0
        self.cut = False  # closed early (disk full): events do not extend it


class ClipSink(Sink):
    """Clips around events into ``folder`` (see the module docstring for memory, time and files).

    ``kinds``: event kinds that start or extend a clip; ``classes``: labels or class ids that do
    (``None``: all). ``annotate`` records the annotated frames (boxes), else the raw ones.
    ``prefix`` starts every file name (a camera's name in a multi-camera run). ``log`` gets one-line
    messages (a skipped or cut clip, retention).
    """

    def __init__(self, folder: str | Path, *, pre_roll: float = 5.0, post_roll: float = 5.0,
                 fps: float | None = None, kinds: Iterable[str] = TRIGGER_KINDS,
                 classes: Iterable[str | int] | None = None, prefix: str = "clip", suffix: str = ".mp4",
                 max_clips: int | None = None, max_bytes: int | None = None, max_age: float | None = None,
                 max_seconds: float = MAX_CLIP_SECONDS, annotate: bool = True,
                 on_clip: Callable[[ClipInfo], None] | None = None, log: Callable[[str], None] | None = None,
                 reserve: int = DISK_RESERVE, codecs: tuple[str, ...] | None = None) -> None:
        self.folder = Path(folder)
        if not pre_roll >= 0 or not post_roll >= 0:
            raise EdgeError(f"--pre-roll {pre_roll:g} / --post-roll {post_roll:g}: must be 0 seconds or more")
        if not max_seconds > 0:
            raise EdgeError(f"clip max_seconds {max_seconds:g}: must be more than 0")
        self.suffix = suffix.lower()
        if self.suffix not in _FOURCC:
            raise EdgeError(f"--clips: container {suffix!r} is not one of {', '.join(_FOURCC)}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"--clips {self.folder}: cannot create the folder ({exc.strerror})") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise EdgeError(f"--clips {self.folder}: cannot write in it (permission denied or read-only)")
        self.pre_roll, self.post_roll = float(pre_roll), float(post_roll)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.pre_frames = math.ceil(self.pre_roll * self.fps - 1e-9)
        self.capacity = self.pre_frames + 1  # the pre-roll and the current frame
        self.kinds = frozenset(kinds)
        self.classes = None if classes is None else frozenset(classes)
        self.prefix = prefix
        self.max_clips, self.max_bytes, self.max_age = max_clips, max_bytes, max_age
        self.max_seconds = float(max_seconds)
        self.annotate = annotate
        self.needs_annotation = bool(annotate)
        self.on_clip = on_clip
        self._log = log or (lambda message: None)
        self.reserve = max(0, int(reserve))
        self.codecs = tuple(codecs) if codecs else _FOURCC[self.suffix]  # browsers' first: avc1, mp4v
        self.codec: str | None = None  # the fourcc of the clips written
        self.clips: list[ClipInfo] = []  # clips put in place by this sink, oldest first
        self.last_clip: Path | None = None
        self.current_clip: Path | None = None
        self.removed: list[Path] = []  # clips removed by retention
        self.skipped_clips = 0  # events that found the disk full
        self.triggers = 0  # triggering events seen
        self.problems: list[str] = []
        self._ring = PreRollRing(self.capacity)
        self._files = ClipFolder(self.folder, self.prefix, self.suffix)
        self._clip: _OpenClip | None = None
        self._pending_close = False  # the newest frame is past the clip's end: close unless an event extends it
        self._files.remove_dead_parts(time.time() - self.max_seconds - STALE_PART_MARGIN, self._log)
        self._retain()

    # ---- memory -------------------------------------------------------------------------------

    @property
    def ring_bytes(self) -> int:
        """Bytes of the preallocated ring (0 until its frame size is known)."""
        return self._ring.nbytes

    def ring_bytes_for(self, shape: tuple[int, ...]) -> int:
        """What the ring takes for frames of ``shape``: ``capacity * H * W * 3``."""
        return self._ring.nbytes_for(shape)

    def presize(self, shape: tuple[int, ...]) -> None:
        """Allocate the ring for frames of ``shape`` now (made resident, so RSS shows it at once)."""
        self._ring.presize(shape)

    # ---- the sink -----------------------------------------------------------------------------

    def write(self, frame, detections, annotated) -> None:
        image = annotated if self.annotate and annotated is not None else frame.image
        if self._pending_close:  # the last frame was past the end and no event came with it
            self._finish()
        slot = self._ring.push(image, frame.seq, frame.stamp)
        clip = self._clip
        if clip is None:
            return
        if clip.cut or frame.stamp > clip.until or frame.stamp - clip.start > clip.limit:
            self._pending_close = True
            return
        self._append(clip, slot)

    def events(self, frame, events) -> None:
        triggers = [e for e in events if self._triggers(e)]
        if not triggers:
            return
        self.triggers += len(triggers)
        clip = self._clip
        if clip is not None and (clip.cut or frame.stamp - clip.start > clip.limit):  # start another
            self._finish()
            clip = None
        if clip is None:
            self._open(frame, triggers[0])
            if self._clip is not None:
                self._clip.events += len(triggers)
            return
        clip.events += len(triggers)
        clip.until = max(clip.until, frame.stamp + self.post_roll)
        if self._pending_close:  # this frame is part of the clip after all
            self._pending_close = False
            self._append(clip, self._ring.head)

    def _triggers(self, event) -> bool:
        if event.kind not in self.kinds:
            return False
        return self.classes is None or event.label in self.classes or event.class_id in self.classes

    def close(self) -> None:
        self._finish()

    def report(self) -> str | None:
        if not (self.clips or self.problems or self.skipped_clips):
            return None
        parts = []
        if self.clips:
            names = ", ".join(f"{c.path.name} ({c.frames} frames)" for c in self.clips[-5:])
            more = f"{len(self.clips) - 5} more, " if len(self.clips) > 5 else ""
            parts.append(f"wrote {len(self.clips)} clip{'s' if len(self.clips) != 1 else ''} in {self.folder} "
                         f"({self.codec}): {more}{names}")
        if self.removed:
            parts.append(f"{len(self.removed)} old clips removed (retention)")
        if self.skipped_clips:
            parts.append(f"{self.skipped_clips} clips skipped (disk full)")
        return "; ".join(parts + self.problems)

    # ---- clips --------------------------------------------------------------------------------

    def _open(self, frame, event) -> None:
        self._retain()
        free = self._files.free()
        if self.reserve and free is not None and free < self.reserve:
            self.skipped_clips += 1
            if self.skipped_clips <= 3 or self.skipped_clips % 100 == 0:
                self._log(f"--clips {self.folder}: disk full ({free / 2**20:.1f} MB free, below the "
                          f"{self.reserve / 2**20:.0f} MB kept); clip for frame {frame.seq} skipped "
                          f"({self.skipped_clips} so far)")
            return
        ring = self._ring
        height, width = ring.frames.shape[1:3]
        final = self._files.name(frame.stamp, frame.seq)
        manager = atomic_path(final)
        tmp = manager.__enter__()
        writer, codec = self._writer(tmp, (width, height))
        if writer is None:
            manager.__exit__(_Abort, _Abort(), None)
            self.problems.append(f"--clips {self.folder}: OpenCV cannot write {'/'.join(self.codecs)} video "
                                 f"({self.suffix}); no clips")
            self._log(self.problems[-1])
            self.kinds = frozenset()  # nothing more to try
            return
        clip = _OpenClip(final, tmp, manager, writer, codec, frame.stamp, frame.stamp + self.post_roll,
                         self.max_seconds, event)
        self._clip = clip
        self.current_clip = final
        # The pre-roll: ring frames before this one, oldest first, no older than pre_roll seconds.
        for slot in ring.earlier(frame.stamp - self.pre_roll - 0.5 / self.fps):
            self._append(clip, slot)
            clip.pre_frames += 1
        self._append(clip, ring.head)

    def _writer(self, tmp: Path, size: tuple[int, int]):
        """An open cv2.VideoWriter for ``tmp`` and its fourcc: the cached codec, else the first that opens."""
        cached = _CODEC_CACHE.get(self.suffix)
        candidates = ([cached] if cached in self.codecs else []) + [c for c in self.codecs if c != cached]
        for n, fourcc in enumerate(candidates):
            # A codec this build lacks makes FFmpeg print a page of errors: hush all but the last try
            # (once per process: the codec that opened is remembered).
            with _stderr_silenced(n < len(candidates) - 1):
                writer = cv2.VideoWriter(str(tmp), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), self.fps, size)
            if writer.isOpened():
                _CODEC_CACHE[self.suffix] = fourcc
                if self.codec is None:
                    self._log(f"clips: {fourcc} in {self.suffix}" + (
                        "" if fourcc in BROWSER_PLAYABLE else
                        " (this OpenCV has no H.264 encoder: browsers will not play the clips, VLC and ffmpeg "
                        "do; .webm clips (VP8) play in browsers)"))
                self.codec = fourcc
                return writer, fourcc
            writer.release()
        return None, None

    def _append(self, clip: _OpenClip, slot: int) -> None:
        clip.writer.write(self._ring.frames[slot])
        stamp = float(self._ring.stamps[slot])
        if not clip.frames:
            clip.start = stamp
        clip.end = stamp
        clip.frames += 1
        clip.since_check += 1
        if self.reserve and clip.since_check >= CHECK_FRAMES:
            clip.since_check = 0
            free = self._files.free()
            if free is not None and free < self.reserve // 2:
                self.problems.append(f"--clips {self.folder}: disk full; {clip.final.name} cut short at "
                                     f"{clip.frames} frames")
                self._log(self.problems[-1])
                clip.cut = True
                self._pending_close = True

    def _finish(self) -> None:
        """Close the open clip and rename it into place (or remove it when it did not come out whole)."""
        clip, self._clip = self._clip, None
        self._pending_close = False
        self.current_clip = None
        if clip is None:
            return
        try:
            clip.writer.release()
        except Exception as exc:  # an FFmpeg failure closing the file: it is not whole
            problem = f"{clip.final.name}: closing failed ({first_line(exc)})"
            clip.manager.__exit__(_Abort, _Abort(), None)
            self._problem(problem)
            return
        if self.suffix in _INDEXED and not _has_mp4_index(clip.tmp):
            clip.manager.__exit__(_Abort, _Abort(), None)
            self._problem(f"{clip.final.name}: {clip.frames} frames lost, the file has no index (disk full?)")
            return
        try:
            clip.manager.__exit__(None, None, None)
        except OSError as exc:
            self._problem(f"{clip.final.name}: cannot rename it into place ({exc.strerror})")
            return
        info = ClipInfo(clip.final, clip.frames, clip.pre_frames, clip.start, clip.end, clip.events,
                        clip.first_event, clip.codec, file_size(clip.final))
        self.clips.append(info)
        self.last_clip = clip.final
        self._retain()
        if self.on_clip is not None:
            self.on_clip(info)

    def _problem(self, message: str) -> None:
        self.problems.append(f"--clips {self.folder}: {message}")
        self._log(self.problems[-1])

    def _retain(self) -> None:
        self._files.retain(self.max_clips, self.max_bytes, self.max_age, self.removed, self._problem)
