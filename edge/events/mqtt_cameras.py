"""Every camera of ``edge run --config`` to one MQTT broker, each as a single-camera run of its name.

Each camera gets its own :class:`~edge.events.mqtt.MqttSink`: topics under ``edgekit/<camera>``
(``PREFIX/<camera>`` when the ``--mqtt`` URL names a prefix, so cameras never share a topic), its
own event ledger, Home Assistant device, ``P/availability`` and stats thread, publishing what a
single-camera ``edge run --mqtt URL --camera NAME`` publishes.

Why a connection per camera and not one shared: MQTT gives a connection exactly one last will,
and each camera's ``P/availability`` must turn ``offline`` through the broker when the process is
killed, as a single camera's does; one shared connection could mark only one topic offline. What
the cameras do share: the log of connection problems
(:class:`~edge.events.mqtt_connection.BrokerProblems`), so a broker that is down or refuses is one
line for all of them, not one per camera; and closing, so every camera's final state is published
and drained at once and N cameras cost one close timeout, not N.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Iterable

from edge.errors import EdgeError
from edge.events.mqtt_connection import BrokerProblems
from edge.events.mqtt_target import MqttTarget, parse_mqtt_url, safe_id, topic_level
from edge.live.sinks import Sink

CLOSE_JOIN = 10.0  # seconds to wait for the cameras' closes together (each is bounded by its own timeouts)


def check_camera_topics(names: Iterable[str], where: str) -> None:
    """Refuse two cameras whose names give the same topic level (``topic_level``) or the same Home
    Assistant id (``safe_id``): their messages and sensors would overwrite each other's."""
    levels: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name in names:
        level, node = topic_level(name), safe_id(f"edgekit_{name}")
        for seen, key, what in ((levels, level, f"MQTT topic level {level!r}"),
                                (ids, node, f"Home Assistant id {node}")):
            other = seen.setdefault(key, name)
            if other != name:
                raise EdgeError(f"{where}: cameras {other!r} and {name!r} map to the same {what} with --mqtt; "
                                "rename one")


def camera_target(target: MqttTarget, camera: str) -> MqttTarget:
    """``target`` for one camera of several: a prefix from the URL gets the camera's own level below it."""
    if target.prefix is None:
        return target  # the sink's default, edgekit/<camera>
    return dataclasses.replace(target, prefix=f"{target.prefix}/{topic_level(camera)}")


class CameraMqtt(Sink):
    """One camera's :class:`~edge.events.mqtt.MqttSink` among the cameras' sinks.

    The loop starts it with this camera's stats and hands it only this camera's frames and events.
    Closing it closes every camera's sink together (:meth:`MqttCameras.close`): the loop closes
    sinks one after another, and each MQTT close may wait for the broker.
    """

    def __init__(self, sink, group: "MqttCameras") -> None:
        self.sink = sink
        self.group = group

    def start(self, stats: Callable[[], dict]) -> None:
        self.sink.start(stats)

    def write(self, frame, detections, annotated) -> None:
        self.sink.write(frame, detections, annotated)

    def events(self, frame, events) -> None:
        self.sink.events(frame, events)

    def close(self) -> None:
        self.group.close()

    def report(self) -> str | None:
        return self.sink.report()


class MqttCameras:
    """An :class:`~edge.events.mqtt.MqttSink` per camera of ``cameras`` (each a
    :class:`~edge.live.cameras.Camera` with its ``events`` stage), added to its sinks as a
    :class:`CameraMqtt`. ``options`` go to every sink (``stats_every``, ``reconnect_delay``, ...).
    Raises before anything connects (paho missing, two names on one topic); connecting starts when
    the loop starts the sinks.
    """

    def __init__(self, url: str | MqttTarget, cameras, *, log: Callable[[str], None] | None = None,
                 **options) -> None:
        from edge.events.mqtt import MqttSink

        cameras = list(cameras)
        self.target = url if isinstance(url, MqttTarget) else parse_mqtt_url(url)
        check_camera_topics([camera.name for camera in cameras], "--mqtt")
        self.problems = BrokerProblems()
        self.sinks: list = []
        self._closing = threading.Lock()
        self._closed = False
        try:
            for camera in cameras:
                self.sinks.append(MqttSink(camera_target(self.target, camera.name), camera=camera.name,
                                           zones=camera.events, log=log, problems=self.problems, **options))
        except BaseException:
            self._close_all()
            raise
        self._zoned = [camera.events is not None and camera.events.config is not None for camera in cameras]
        for camera, sink in zip(cameras, self.sinks):
            camera.sinks.append(CameraMqtt(sink, self))

    def close(self) -> None:
        """Every camera's final state (open events ended as ``stopped``, counts, ``offline``), then the
        connections closed: all cameras at once, each within its own sink's timeouts."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self._close_all()

    def _close_all(self) -> None:
        threads = [threading.Thread(target=sink.close, name=f"edge-mqtt-close-{sink.camera}", daemon=True)
                   for sink in self.sinks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLOSE_JOIN)

    def counters(self) -> dict:
        """The cameras' numbers added up (``connected``: every camera's connection is up), for the metrics."""
        numbers = [sink.counters() for sink in self.sinks]
        total = {key: sum(int(n[key]) for n in numbers) for key in ("published", "events", "dropped", "queued",
                                                                     "connects", "attempts")}
        total["connected"] = bool(numbers) and all(n["connected"] for n in numbers)
        return total

    def describe(self) -> str:
        """The start line: the broker and each camera's topics."""
        return f"mqtt to {self.target.describe()}, a connection per camera, topics under " + ", ".join(
            f"{sink.prefix}/" + ("" if zoned else " (no zones: stats only)")
            for sink, zoned in zip(self.sinks, self._zoned))


__all__ = ["CameraMqtt", "MqttCameras", "camera_target", "check_camera_topics"]
