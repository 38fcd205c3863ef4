"""``update`` messages of open zone events, against a real mosquitto and a real paho subscriber.

The scenes are scripted detections (boxes, scores, frame times) fed through the real
:class:`~edge.events.stage.EventStage` (tracker and zones) and :class:`~edge.events.mqtt.MqttSink`
the way the live loop calls them (``write`` then ``events``, every frame), so every score, box
and frame time is known and the rate limit's bound follows from them. The broker and the
subscriber are :mod:`test_mqtt`'s.
"""

from __future__ import annotations

import json
import math
import time
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install 'edgekit[events]')")

import edge.events.mqtt as mqtt_module  # noqa: E402
import edge.events.mqtt_events as mqtt_events_module  # noqa: E402
import edge.events.mqtt_updates as mqtt_updates_module  # noqa: E402
from edge.contract.detections import Detections  # noqa: E402
from edge.detector.step import Frame  # noqa: E402
from edge.events.config import parse_config  # noqa: E402
from edge.events.mqtt import MqttSink  # noqa: E402
from edge.events.mqtt_updates import MOVE_IOU, SCORE_STEP  # noqa: E402
from edge.events.stage import EventStage  # noqa: E402
from test_mqtt import MOSQUITTO, Broker, Subscriber, _settled, free_port  # noqa: E402

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")]

LABELS = ["person"]
WIDTH, HEIGHT = 640, 480
# a zone in the middle third (anchor: the box's bottom centre), a line near the right edge
ZONES = {"min_frames": 3,
         "zones": [{"name": "yard", "points": [[200, 0], [440, 0], [440, 480], [200, 480]]}],
         "lines": [{"name": "gate", "points": [[560, 0], [560, 480]]}]}
T0 = 1_700_000_000.0
DT = 0.125  # 8 fps of frame time: exact in binary, so the scripted times add up exactly
INTERVAL = 1.0


class Scene:
    """One camera: scripted detections -> EventStage -> MqttSink, frame by frame."""

    def __init__(self, sink: MqttSink, stage: EventStage) -> None:
        self.sink, self.stage = sink, stage
        self.detections = Detections(8, LABELS)
        self.image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        self.frame = Frame(self.image, None, 0, T0)
        self.events: list[dict] = []
        self._box = np.zeros(4, np.float32)

    def step(self, box=None, score: float = 0.0) -> tuple:
        """One frame with one person at ``box`` (x0, y0, x1, y1) and ``score``, or nobody (None)."""
        d, frame = self.detections, self.frame
        frame.seq += 1
        frame.stamp = T0 + frame.seq * DT
        d.count = 0
        if box is not None:
            self._box[:] = box
            d._xyxy[0] = self._box
            d._scores[0] = score
            d._class_ids[0] = 0
            d.count = 1
        events = self.stage.update(self.image, frame.seq, frame.stamp, d)
        self.sink.write(frame, d, None)
        if events:
            self.sink.events(frame, events)
            self.events.extend(event.to_dict() for event in events)
        return events


def _scene(broker_url: str, camera: str, **options) -> Scene:
    stage = EventStage(LABELS, high_score=0.5, low_score=0.1, config=parse_config(ZONES, labels=LABELS),
                       detection_capacity=8)
    sink = MqttSink(broker_url, camera=camera, zones=stage, log=lambda m: None, stats_every=0,
                    update_interval=options.pop("update_interval", INTERVAL), **options)
    sink.start(dict)
    return Scene(sink, stage)


def _person(x0: float, y0: float = 300.0, w: float = 60.0, h: float = 120.0) -> tuple:
    return (x0, y0, x0 + w, y0 + h)


def _events(sub: Subscriber, camera: str, count: int) -> list[dict]:
    topic = f"edgekit/{camera}/events"
    assert sub.wait_for(lambda m: sum(t == topic for t, _, _ in m) >= count), sub.messages[-10:]
    time.sleep(0.2)  # nothing more may come
    return [json.loads(p) for p in sub.on(topic)]


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _check_chain(messages: list[dict]) -> None:
    """One event: ``new``, updates, ``end``; each message's ``before`` is the previous one's ``after``."""
    assert messages[0]["type"] == "new" and messages[0]["before"] == messages[0]["after"]
    assert len({m["after"]["id"] for m in messages} | {m["before"]["id"] for m in messages}) == 1
    for previous, message in zip(messages, messages[1:]):
        assert message["before"] == previous["after"], (previous["type"], message["type"])
    fields = set(messages[0]["after"])
    assert {"box", "score", "top_score", "point", "frame", "time"} <= fields
    for message in messages[1:-1]:
        assert message["type"] == "update" and set(message["after"]) == fields and message["after"]["active"]


@pytest.fixture
def broker(tmp_path):
    server = Broker(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def sub(broker):
    client = Subscriber(broker.port, ["edgekit/#"])
    yield client
    client.close()


def test_an_object_moving_across_a_zone_with_a_rising_score_gets_rate_limited_updates(broker, sub):
    scene = _scene(broker.url, "walk")
    scores = {}
    try:
        _settled(scene.sink)
        x0 = 100.0
        while x0 <= 500:  # 6 px a frame, left to right; bottom centre inside the zone for x0 in 170..410
            score = min(0.55 + 0.01 * (scene.frame.seq + 1), 0.95)
            scene.step(_person(x0), score)
            scores[scene.frame.seq] = score
            x0 += 6.0
        for _ in range(5):
            scene.step()  # gone from view: the event ended with its leave already
    finally:
        scene.sink.close()
    assert [e["event"] for e in scene.events] == ["enter", "leave"], scene.events
    messages = _events(sub, "walk", 3)
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "new" and kinds[-1] == "end" and set(kinds[1:-1]) == {"update"}, kinds
    _check_chain(messages)
    new, updates, end = messages[0], messages[1:-1], messages[-1]
    assert end["after"]["reason"] == "leave" and end["before"] == updates[-1]["after"]

    # the rate limit: one message of the event per INTERVAL of frame time at most, so no more
    # updates than whole intervals between the new and the frame before the leave (the leave's
    # own frame has the end, never an update too); the motion alone (48 px a second, a 60 px
    # box) makes one due on every allowed frame, so the bound is met to within one
    t_new, t_leave = new["after"]["time"], end["after"]["end_time"]
    bound = math.floor((t_leave - DT - t_new) / INTERVAL + 1e-9)
    assert bound - 1 <= len(updates) <= bound, (len(updates), bound)
    assert updates[-1]["after"]["frame"] < end["after"]["end_frame"]
    times = [m["after"]["time"] for m in messages[:-1]]
    assert all(b - a >= INTERVAL - 1e-9 for a, b in zip(times, times[1:])), times

    for message in updates:  # material, and what the tracker saw on that frame
        before, after = message["before"], message["after"]
        moved = _iou(after["box"], before["box"]) < MOVE_IOU
        better = after["top_score"] >= before["top_score"] + SCORE_STEP - 1e-6
        assert moved or better, (before, after)
        x0, y0, x1, y1 = after["box"]
        assert after["point"] == [round((x0 + x1) / 2, 1), round(y1, 1)]  # bottom centre, the zone's anchor
        assert after["time"] == T0 + after["frame"] * DT
        assert after["score"] == pytest.approx(scores[after["frame"]], abs=1e-4)
        assert before["top_score"] <= after["top_score"] <= max(scores.values()) + 1e-4
        assert after["start_time"] == new["after"]["start_time"] and after["zone"] == "yard"
    assert updates[-1]["after"]["top_score"] > new["after"]["top_score"] + SCORE_STEP
    assert end["after"]["frame"] == end["after"]["end_frame"], "the end carries the box of the leave frame"
    assert scene.sink.updates_published == len(updates) and scene.sink.updates_dropped == 0
    assert f"({len(updates)} updates)" in scene.sink.report()


def test_without_a_rate_limit_the_rule_alone_spaces_the_updates(broker, sub):
    scene = _scene(broker.url, "free", update_interval=0.0)
    try:
        _settled(scene.sink)
        x0 = 100.0
        while x0 <= 500:  # the same walk, the same score: 6 px a frame with a 60 px wide box
            scene.step(_person(x0), 0.8)
            x0 += 6.0
    finally:
        scene.sink.close()
    messages = _events(sub, "free", 3)
    _check_chain(messages)
    updates, end = messages[1:-1], messages[-1]
    frames = [m["after"]["frame"] for m in messages[:-1]]
    # moved = IoU below 0.6 = a shift of more than a quarter of the width (15 px): every 3rd frame
    assert all(b - a == 3 for a, b in zip(frames, frames[1:])), frames
    assert all(_iou(m["after"]["box"], m["before"]["box"]) < MOVE_IOU for m in updates)
    assert len(updates) >= 10 and frames[-1] < end["after"]["end_frame"] == end["after"]["frame"], \
        "no update on the frame of the end: the end has that box"


def _enter_and_stop(scene: Scene, score: float = 0.8) -> tuple:
    """Walk in until the zone's enter fires, then stand there: the box it stands at."""
    x0 = 140.0
    while not scene.events:
        scene.step(_person(x0), score)
        x0 += 6.0
    assert scene.events[0]["event"] == "enter"
    return _person(x0 - 6.0)


def test_an_object_standing_still_with_a_steady_score_gets_no_update(broker, sub):
    scene = _scene(broker.url, "still")
    try:
        _settled(scene.sink)
        box = _enter_and_stop(scene)
        jitter = (0.0, 1.0, 0.0, -1.0)  # a detector's box wobbles by a pixel
        for i in range(2400):  # 300 s of frame time
            x0, y0, x1, y1 = box
            j = jitter[i % 4]
            spike = i % 97 == 50  # a one-frame spike of the score: not a better sighting
            scene.step((x0 + j, y0 - j, x1 + j, y1), 0.99 if spike else 0.8)
    finally:
        scene.sink.close()
    messages = _events(sub, "still", 2)
    assert [m["type"] for m in messages] == ["new", "end"], [m["type"] for m in messages]
    _check_chain(messages)
    assert messages[1]["after"]["reason"] == "stopped"
    assert messages[1]["after"]["top_score"] == pytest.approx(0.8, abs=1e-4), "the spikes never counted"
    assert scene.sink.updates_published == scene.sink.updates_dropped == 0


def test_an_object_standing_still_whose_score_rises_gets_score_updates(broker, sub):
    scene = _scene(broker.url, "better")
    try:
        _settled(scene.sink)
        box = _enter_and_stop(scene, 0.6)
        scores = [min(0.6 + 0.005 * i, 0.95) for i in range(1, 100)]
        for score in scores:
            scene.step(box, score)
    finally:
        scene.sink.close()
    messages = _events(sub, "better", 3)
    updates = [m for m in messages if m["type"] == "update"]
    assert updates and [m["type"] for m in messages] == ["new"] + ["update"] * len(updates) + ["end"]
    _check_chain(messages)
    for message in updates:
        before, after = message["before"], message["after"]
        assert after["box"] == before["box"] == messages[0]["after"]["box"], "it did not move"
        assert after["top_score"] >= before["top_score"] + SCORE_STEP - 1e-6
        assert after["time"] - before["time"] >= INTERVAL - 1e-9
    # top_score is a median of 3: it trails the last score by a frame; the end has the best of all
    assert messages[-1]["after"]["top_score"] == pytest.approx(scores[-2], abs=1e-4)


def test_a_line_crossing_is_new_and_end_and_never_an_update(broker, sub):
    scene = _scene(broker.url, "gate")
    try:
        _settled(scene.sink)
        for i in range(80):  # 10 s of frame time, bottom centre from x 480 to 638: across x = 560
            scene.step(_person(450.0 + 2.0 * i), min(0.55 + 0.01 * i, 0.95))
    finally:
        scene.sink.close()
    assert [e["event"] for e in scene.events] == ["cross"]
    messages = _events(sub, "gate", 2)
    assert [m["type"] for m in messages] == ["new", "end"]
    assert messages[0]["after"]["id"] == messages[1]["after"]["id"]
    assert messages[1]["before"] == messages[0]["after"] and messages[1]["after"]["reason"] == "cross"
    assert messages[0]["after"]["line"] == "gate" and messages[0]["after"]["box"] is not None
    assert scene.sink.updates_published == 0


def test_an_object_still_inside_a_zone_costs_no_memory_and_no_json(broker, monkeypatch):
    calls = []

    class CountingJson:
        @staticmethod
        def dumps(*args, **kwargs):
            calls.append(1)
            return json.dumps(*args, **kwargs)

    scene = _scene(broker.url, "idle")
    try:
        _settled(scene.sink)
        box = _enter_and_stop(scene)
        for _ in range(200):  # warm
            scene.step(box, 0.8)
        assert scene.sink._ledger.open, "the event is open: every frame checks it"
        monkeypatch.setattr(mqtt_module, "json", CountingJson)
        published = scene.sink.published
        files = [tracemalloc.Filter(True, module.__file__)
                 for module in (mqtt_module, mqtt_events_module, mqtt_updates_module)]
        tracemalloc.start()
        try:
            for _ in range(200):
                scene.step(box, 0.8)
            first = tracemalloc.take_snapshot().filter_traces(files)
            for _ in range(3000):
                scene.step(box, 0.8)
            second = tracemalloc.take_snapshot().filter_traces(files)
        finally:
            tracemalloc.stop()
        # a leak of one byte a frame would be 3000 here; what may show is a block or two that
        # Python's free lists keep (a list of the lost check, which runs by the wall clock)
        growth = sum(stat.size_diff for stat in second.compare_to(first, "lineno"))
        held = sum(stat.size for stat in second.statistics("filename"))
        assert growth < 256, second.compare_to(first, "lineno")[:5]
        assert held < 1024, second.statistics("lineno")[:5]  # a few floats in the open event's slots
        assert calls == [] and scene.sink.published == published, "nothing built, nothing sent"
    finally:
        scene.sink.close()


def test_a_full_queue_drops_updates_and_keeps_room_for_the_end():
    # nothing listens on the port: every message waits in the queue (of 3 here)
    stage = EventStage(LABELS, high_score=0.5, low_score=0.1, config=parse_config(ZONES, labels=LABELS),
                       detection_capacity=8)
    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}", camera="full", zones=stage, log=lambda m: None,
                    stats_every=0, queue_size=3, reconnect_delay=(1, 1), update_interval=INTERVAL)
    sink.start(dict)
    scene = Scene(sink, stage)
    try:
        x0 = 100.0
        while x0 <= 500:  # the walk of the first test: several updates due
            scene.step(_person(x0), 0.8)
            x0 += 6.0
        assert [e["event"] for e in scene.events] == ["enter", "leave"]
        # new (1 queued) + one update (2: room left for the end) + the end (3); the rest dropped
        assert sink.updates_published == 1 and sink.updates_dropped >= 2, (sink.updates_published,
                                                                            sink.updates_dropped)
        assert sink.events_published == 3 and sink.counters()["queued"] == 3
        assert sink.dropped == sink.updates_dropped, "only updates were dropped, never the end"
        assert sink.counters()["updates_dropped"] == sink.updates_dropped
    finally:
        sink.close()
