"""What :class:`~edge.events.mqtt.MqttSink`'s helper thread publishes: Home Assistant discovery, the
retained counts and occupancy (all of them after a connect, else those that changed) and the
``P/stats`` ticks. A mixin of the sink's (it uses the sink's connection, ledger, prefix and topics);
see :mod:`edge.events.mqtt` for the topics and why state is republished on every connect.
"""

from __future__ import annotations

import json
import time

from edge.errors import first_line
from edge.events.ha_discovery import discovery_configs
from edge.events.mqtt_events import Region
from edge.events.mqtt_target import topic_level

OCCUPANCY_EVERY = 1.0  # seconds between checks of the zones' occupancy (it changes without events too)


class StatePublishing:
    """The helper thread's part of :class:`~edge.events.mqtt.MqttSink`: :meth:`_run` loops until
    ``_stop``, woken by ``_wake`` (a connect, an event) or by the next occupancy check or stats tick."""

    def _zones(self):
        """The :class:`Zones` (an EventStage makes it on the first frame), or None."""
        source = self._source
        return source.zones if hasattr(source, "tracker") else source

    def _discovery(self) -> list[tuple[str, dict]]:
        """The Home Assistant discovery configs not yet sent since the last connect."""
        if not self.discovery_prefix:
            return []
        keys, regions = self._ledger.snapshot()
        return discovery_configs(self.discovery_prefix, node=self._node, camera=self.camera, model=self.model,
                                 version=self._version, availability_topic=self.availability_topic,
                                 stats_topic=self.stats_topic, prefix=self.prefix, count_keys=keys,
                                 regions=regions, count_topic=self._count_topic, sent=self._discovered)

    def _count_topic(self, region: Region, cls: str | None, direction: str) -> str:
        if cls is None:
            return f"{self.prefix}/counts/{region.level}/{direction}"
        return f"{self.prefix}/counts/{region.level}/{topic_level(cls)}/{direction}"

    def _occupancy(self) -> dict[str, int]:
        """Objects inside each zone now: the Zones' own number when there is one (it counts objects
        first seen inside too), else the open events."""
        zones = self._zones()
        out: dict[str, int] = {}
        if zones is not None and getattr(zones, "occupancy", None) is not None:
            occupancy = zones.occupancy.tolist()
            for i, name in enumerate(zones.names[: zones.zone_count]):
                out[name] = int(occupancy[i]) if i < len(occupancy) else 0
        self._ledger.add_open_occupancy(out)
        return out

    def _publish_state(self, full: bool) -> None:
        """Discovery configs not yet sent, then counts and occupancy: all of them (``full``, after a
        connect) or those that changed. Only while connected: a disconnect leaves them due."""
        if not self.connected:
            return
        publish = self._connection.publish
        for topic, config in self._discovery():
            if publish(topic, json.dumps(config, separators=(",", ":")), retain=True, state=True):
                self._discovered.add(topic)
        counts = self._ledger.take_counts()
        for key, value in counts.items():
            if full or self._sent_counts.get(key) != value:
                name, cls, direction = key
                if publish(self._count_topic(self._ledger.regions[name], cls, direction), str(value), retain=True,
                           state=True):
                    self._sent_counts[key] = value
                else:
                    self._ledger.dirty = True
        for name, value in self._occupancy().items():
            if full or self._sent_occupancy.get(name) != value:
                if publish(f"{self.prefix}/occupancy/{topic_level(name)}", str(value), retain=True, state=True):
                    self._sent_occupancy[name] = value

    def _publish_stats(self, final: bool = False) -> None:
        """One ``P/stats`` message. A tick skips (and counts as dropped) while the last is still unsent;
        the ``final`` one, as the run ends, goes anyway: it holds the run's last numbers, so even a run
        shorter than the first tick leaves them."""
        if not self.connected:
            return
        if not final and self._stats_info is not None and not self._stats_info.is_published():
            self._connection.count("dropped")  # the last one is still in paho's buffer: the broker is slow
            return
        try:
            data = dict(self._stats())
        except Exception as exc:
            data = {"error": first_line(exc)}
        data["camera"] = self.camera
        data["mqtt"] = self.counters()
        try:
            payload = json.dumps(data, separators=(",", ":"))
        except Exception:
            return
        info = self._connection.publish_unqueued(self.stats_topic, payload)
        if info is not None:
            self._stats_info = info
            self._connection.count("published")

    def _run(self) -> None:
        """The helper thread: state after a connect or an event, occupancy changes, stats ticks."""
        next_stats = time.monotonic() + min(1.0, self.stats_every) if self.stats_every else float("inf")
        next_occupancy = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self._wake.wait(max(0.0, min(next_stats, next_occupancy) - now))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                now = time.monotonic()
                if self._resync and self.connected:
                    self._resync = False
                    self._discovered.clear()
                    self._publish_state(full=True)
                elif self._ledger.dirty or now >= next_occupancy:
                    self._publish_state(full=False)
                if now >= next_occupancy:
                    next_occupancy = now + OCCUPANCY_EVERY
                if now >= next_stats:
                    next_stats = now + self.stats_every
                    self._publish_stats()
            except Exception as exc:  # never let the helper die silently
                self._say(f"internal error ({first_line(exc, with_type=True)})")
