"""The event layer: track detections across frames, then turn tracks into zone and line events.

Per frame, after the detector::

    tracks = tracker.update(detections, seq=frame.seq)     # Tracks: columnar views, reused
    events = zones.update(tracks, seq=frame.seq, time=frame.stamp)   # () on most frames

:class:`Tracker` (``edge.events.tracker``) is a ByteTrack-style tracker; :class:`Zones`
(``edge.events.zones``) judges confirmed tracks against polygons and directed lines loaded by
:func:`load_config` (``edge.events.config``). numpy only, all state preallocated.
"""

from __future__ import annotations

from edge.events.config import ANCHORS, EventConfig, RegionSpec, load_config, parse_config, yaml_available
from edge.events.tracker import Tracker
from edge.events.tracks import Tracks
from edge.events.zones import Event, Zones

__all__ = ["ANCHORS", "Event", "EventConfig", "RegionSpec", "Tracker", "Tracks", "Zones", "load_config",
           "parse_config", "yaml_available"]
