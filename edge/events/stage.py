"""The event step of the live loop: detections -> tracks -> zone and line events, once per frame.

With tracking on, the detector runs at the tracker's low threshold (ByteTrack keeps tracks alive on
low-score boxes); what the sinks then see are the rows a user asked for: a score at or above the
high threshold, or a confirmed track. Zones are sized on the first frame, when the frame size is
known (or before it, from :meth:`EventStage.presize`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.contract.detections import Detections
from edge.events.config import EventConfig
from edge.events.tracker import Tracker
from edge.events.zones import Event, Zones

NO_EVENTS: tuple = ()


class EventStage:
    """``update(frame, detections)`` tracks, keeps the rows worth reporting, and returns the events."""

    def __init__(self, labels: list[str], *, high_score: float = 0.5, low_score: float = 0.1,
                 config: EventConfig | None = None, max_tracks: int = 64, detection_capacity: int = 100) -> None:
        self.labels = list(labels)
        self.config = config
        self.high_score = float(high_score)
        self.tracker = Tracker(max_tracks=max_tracks, high_score=high_score, low_score=min(low_score, high_score),
                               labels=self.labels, max_detections=detection_capacity)
        self.zones: Zones | None = None
        self._mask = np.zeros(detection_capacity, bool)
        self._confirmed = np.zeros(detection_capacity, bool)
        self.events_total = 0

    @property
    def low_score(self) -> float:
        return self.tracker.low_score

    def presize(self, frame_shape: tuple[int, ...]) -> None:
        if self.config is not None and self.zones is None:
            self.zones = Zones(self.config, (int(frame_shape[1]), int(frame_shape[0])), self.labels,
                               max_tracks=self.tracker.max_tracks)

    def update(self, image: np.ndarray, seq: int, stamp: float, detections: Detections) -> Sequence[Event]:
        tracks = self.tracker.update(detections, seq=seq)
        detections.set_track_ids(tracks.detection_track_ids)
        n = detections.count
        keep, confirmed = self._mask[:n], self._confirmed[:n]
        np.greater_equal(detections.scores, self.high_score, out=keep)
        np.greater_equal(detections.track_ids, 0, out=confirmed)
        np.logical_or(keep, confirmed, out=keep)
        detections.keep(keep)
        if self.config is None:
            return NO_EVENTS
        if self.zones is None:
            self.presize(image.shape)
        events = self.zones.update(tracks, seq, stamp)
        self.events_total += len(events)
        return events
