"""Home Assistant MQTT discovery: the retained ``config`` payloads that make the sink's topics sensors.

One sensor per region x class x direction count (an all-classes one per region and direction), an
fps sensor on ``P/stats``, and per zone an objects-inside sensor and an occupancy binary sensor on
``P/occupancy/ZONE``; every one with ``availability_topic``, ``unique_id`` and a ``device`` block
naming the camera. :class:`~edge.events.mqtt.MqttSink` publishes them after every connect.
"""

from __future__ import annotations

from typing import Callable

from edge.events.mqtt_target import safe_id

DISCOVERY_PREFIX = "homeassistant"


def discovery_configs(discovery_prefix: str, *, node: str, camera: str, model: str | None, version: str | None,
                      availability_topic: str, stats_topic: str, prefix: str,
                      count_keys: list[tuple[str, str | None, str]], regions: dict,
                      count_topic: Callable[..., str], sent: set[str]) -> list[tuple[str, dict]]:
    """``(topic, config)`` for every discovery config whose topic is not in ``sent``.

    ``node``: the device id; ``count_keys``: the sink's ``(region, class or None, direction)``
    counts; ``regions``: region name -> the sink's region (``kind``, ``name``, ``level``);
    ``count_topic(region, class, direction)``: the state topic of one count.
    """
    device = {"identifiers": [node], "name": f"edgekit {camera}", "manufacturer": "edgekit",
              "model": model or "SSD detector"}
    if version:
        device["sw_version"] = version
    base = {"availability_topic": availability_topic, "payload_available": "online",
            "payload_not_available": "offline", "device": device}
    out = []

    def add(component: str, object_id: str, config: dict) -> None:
        topic = f"{discovery_prefix}/{component}/{node}/{safe_id(object_id)}/config"
        if topic not in sent:
            out.append((topic, dict(base, unique_id=f"{node}_{safe_id(object_id)}", **config)))

    add("sensor", "fps", {"name": "fps", "state_topic": stats_topic, "value_template": "{{ value_json.fps }}",
                          "unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:speedometer"})
    words = {"zone": {"in": "entered", "out": "left"}, "line": {"in": "in", "out": "out"}}
    for name, cls, direction in count_keys:
        region = regions[name]
        what = "all" if cls is None else cls
        add("sensor", f"{region.name}_{what}_{direction}",
            {"name": f"{region.name} {what} {words[region.kind][direction]}",
             "state_topic": count_topic(region, cls, direction), "state_class": "total_increasing",
             "icon": "mdi:counter"})
    for region in regions.values():
        if region.kind != "zone":
            continue
        topic = f"{prefix}/occupancy/{region.level}"
        add("sensor", f"{region.name}_objects", {"name": f"{region.name} objects", "state_topic": topic,
                                                 "state_class": "measurement", "icon": "mdi:account-group"})
        add("binary_sensor", f"{region.name}_occupancy",
            {"name": f"{region.name} occupancy", "state_topic": topic, "device_class": "occupancy",
             "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}"})
    return out


__all__ = ["DISCOVERY_PREFIX", "discovery_configs"]
