"""The cameras file (``edge run --config``) and the cameras it builds for a multi-camera run.

:func:`load_cameras_config` reads it (JSON, or YAML with PyYAML) into :class:`CameraSpec` s;
:func:`build_cameras` makes each :class:`~edge.live.cameras.Camera` ready for
:class:`~edge.live.multiloop.MultiLoop`: its source (a :class:`WaitingSource` with ``wait`` when it
is not up yet), its event stage, its clip sink and its handle on the one shared JSON lines sink.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import EdgeError
from edge.live.cameras import _CAMERA_NAME, Camera, CameraSink
from edge.live.sinks import JsonLinesSink, Sink
from edge.live.sources import DEFAULT_STALL_TIMEOUT, Source, SourceUnavailable, open_source


# ---- cameras that are not up at start ------------------------------------------------------------


class WaitingSource(Source):
    """A camera or stream that was not up at start, opened later by its capture thread.

    Its first read raises :class:`~edge.live.sources.SourceUnavailable`; the capture then reopens it
    with its reconnect backoff (a line per try), as it would a camera that went away, while the
    other cameras run. Once open it reads through the real source; ``fps`` and ``frame_shape`` are
    known from then on (so this camera's ring is sized at its first frame rather than before).
    """

    live = True
    reconnectable = True

    def __init__(self, spec: str, error: BaseException, **options) -> None:
        super().__init__(spec)
        self._options = options
        self.stall_timeout = float(options.get("stall_timeout", DEFAULT_STALL_TIMEOUT))
        self.inner: Source | None = None
        self.error = error

    def _open(self) -> None:
        if self.inner is None:
            self.inner = open_source(self.spec, **self._options)  # SourceUnavailable while it is not up
        else:
            self.inner._open()
        self.fps, self.frame_shape = self.inner.fps, self.inner.frame_shape

    def _read(self):
        if self.inner is None:
            raise SourceUnavailable(f"not up yet ({self.error})")
        frame = self.inner._read()  # the inner source's hook: frames are counted once, here
        self.frame_name = self.inner.frame_name
        return frame

    def _release(self) -> None:
        if self.inner is not None:
            self.inner._release()

    def describe(self) -> str:
        return self.inner.describe() if self.inner is not None else f"{self.spec} (not up yet)"


def open_camera_source(spec: str, *, wait: bool = False, log: Callable[[str], None] | None = None,
                       **options) -> Source:
    """:func:`~edge.live.sources.open_source` for one camera of several: with ``wait``, a camera or
    stream that is not up yet becomes a :class:`WaitingSource` (the others start; it joins when it
    comes up) instead of an error. Other errors (a bad spec, a missing file) are raised at once."""
    try:
        return open_source(spec, **options)
    except SourceUnavailable as exc:
        if not wait:
            raise
        if log is not None:
            log(f"source {spec}: not up yet ({exc}); the other cameras start, this one joins when it comes up")
        return WaitingSource(spec, exc, **options)


# ---- the cameras file (``edge run --config``) -----------------------------------------------------

_CAMERA_KEYS = ("name", "source", "loop", "realtime", "stall_timeout", "zones")


@dataclass(frozen=True)
class CameraSpec:
    """One camera of a cameras file: ``source`` as ``--source`` takes it, the options that go with it,
    and an optional zones file (relative paths are taken from the cameras file's folder)."""

    name: str
    source: str
    loop: bool = False
    realtime: bool = False
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    zones: Path | None = None


def parse_cameras_config(data, where: str = "cameras config", base: Path | None = None) -> list[CameraSpec]:
    """``{"cameras": [{"name", "source", "loop"?, "realtime"?, "stall_timeout"?, "zones"?}, ...]}``."""
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise EdgeError(f"{where}: expected {{\"cameras\": [{{\"name\": ..., \"source\": ...}}, ...]}}")
    unknown = sorted(set(data) - {"cameras"})
    if unknown:
        raise EdgeError(f"{where}: unknown key {unknown[0]!r} (only \"cameras\")")
    specs, names = [], set()
    for i, item in enumerate(data["cameras"]):
        at = f"{where}: camera {i + 1}"
        if not isinstance(item, dict):
            raise EdgeError(f"{at}: expected an object with \"name\" and \"source\"")
        bad = sorted(set(item) - set(_CAMERA_KEYS))
        if bad:
            raise EdgeError(f"{at}: unknown key {bad[0]!r} (allowed: {', '.join(_CAMERA_KEYS)})")
        name, source = item.get("name"), item.get("source")
        if not isinstance(name, str) or not _CAMERA_NAME.match(name):
            raise EdgeError(f"{at}: \"name\" must be 1-64 letters, digits, '.', '_' or '-' (it names files)")
        if name in names:
            raise EdgeError(f"{at}: camera name {name!r} is used twice")
        names.add(name)
        if not isinstance(source, (str, int)) or isinstance(source, bool) or str(source).strip() == "":
            raise EdgeError(f"{at} ({name}): \"source\" must be a non-empty string (as --source takes it)")
        for key in ("loop", "realtime"):
            if key in item and not isinstance(item[key], bool):
                raise EdgeError(f"{at} ({name}): \"{key}\" must be true or false")
        stall = item.get("stall_timeout", DEFAULT_STALL_TIMEOUT)
        if isinstance(stall, bool) or not isinstance(stall, (int, float)) or not stall > 0:
            raise EdgeError(f"{at} ({name}): \"stall_timeout\" must be a number of seconds above 0")
        zones = item.get("zones")
        if zones is not None:
            if not isinstance(zones, str) or not zones:
                raise EdgeError(f"{at} ({name}): \"zones\" must be a file name")
            zones = Path(zones)
            if base is not None and not zones.is_absolute():
                zones = base / zones
        specs.append(CameraSpec(name, str(source), bool(item.get("loop", False)), bool(item.get("realtime", False)),
                                float(stall), zones))
    return specs


def load_cameras_config(path: str | Path) -> list[CameraSpec]:
    """Read a cameras file: ``.json``, or ``.yaml``/``.yml`` when PyYAML is installed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeError(f"--config {path}: cannot read it ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgeError(f"--config {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise EdgeError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), "
                            "or write the file as .json") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise EdgeError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        raise EdgeError(f"--config {path}: must be a .json file (or .yaml/.yml with PyYAML installed)")
    return parse_cameras_config(data, f"--config {path}", base=path.parent)


def build_cameras(specs: list[CameraSpec], detector, *, json_target: str | Path | None = None,
                  clips: str | Path | None = None, clip_options: dict | None = None, track: bool = False,
                  high_score: float = 0.5, low_score: float = 0.1, wait: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[list[Camera], list[Sink]]:
    """The cameras of a cameras file, ready for :class:`~edge.live.multiloop.MultiLoop`, and the
    shared sinks made.

    Each camera gets its source (a :class:`WaitingSource` with ``wait`` when it is not up yet), an
    :class:`~edge.events.stage.EventStage` when it has zones or ``track`` is set, a
    :class:`~edge.live.clips.ClipSink` in ``clips`` named after it (``clip_options``: its keyword
    arguments: pre_roll, post_roll, max_clips, ...), and a :class:`~edge.live.cameras.CameraSink` on
    one shared :class:`~edge.live.sinks.JsonLinesSink` for ``json_target`` (each line names its
    camera first). On an error everything made so far is closed.
    """
    from edge.events.config import load_config
    from edge.events.stage import EventStage

    log = log or (lambda message: None)
    cameras: list[Camera] = []
    shared: list[Sink] = []
    try:
        json_sink = JsonLinesSink(json_target) if json_target else None
        if json_sink is not None:
            shared.append(json_sink)
        for spec in specs:
            config = load_config(spec.zones, labels=detector.labels) if spec.zones is not None else None
            events = None
            if track or config is not None:
                events = EventStage(detector.labels, high_score=high_score, low_score=low_score, config=config,
                                    detection_capacity=detector.detections.capacity)
            source = open_camera_source(spec.source, wait=wait, log=lambda m, n=spec.name: log(f"camera {n}: {m}"),
                                        loop=spec.loop, realtime=spec.realtime, stall_timeout=spec.stall_timeout)
            camera = Camera(spec.name, source, events=events)
            cameras.append(camera)
            if clips is not None and config is not None:
                from edge.live.clips import ClipSink

                camera.sinks.append(ClipSink(clips, prefix=spec.name, fps=source.fps, log=log,
                                             **(clip_options or {})))
            if json_sink is not None:
                camera.sinks.append(CameraSink(json_sink, spec.name))
            live = " (live: stale frames are dropped)" if source.live else ""
            zones = f", {len(config.regions)} zones/lines from {spec.zones}" if config is not None else ""
            log(f"camera {spec.name}: {source.describe()}{live}{zones}")
    except BaseException:
        close_cameras(cameras, shared)
        raise
    return cameras, shared


def close_cameras(cameras: list[Camera], shared: list[Sink]) -> None:
    """Close what :func:`build_cameras` made, for a run that stops before its loop starts."""
    for camera in cameras:
        for sink in camera.sinks:
            if not isinstance(sink, CameraSink):
                sink.close()
        camera.source.close()
    for sink in shared:
        sink.close()
