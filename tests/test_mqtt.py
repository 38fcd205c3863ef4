"""MqttSink against a real mosquitto on a free loopback port: the event sequence and counts of a
scripted run, retained availability and Home Assistant discovery, the last will on ``kill -9``, a
broker restarted mid-run, a wrong password, an unreachable broker and a full queue.

Each test writes its own mosquitto config (``listener PORT 127.0.0.1``, anonymous, or a password
file made with ``mosquitto_passwd``), starts the broker and stops it at the end. The test's own
paho client subscribes to what the sink publishes. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install 'edgekit[events]')")

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge.detector.detector import Detector  # noqa: E402
from edge.detector.step import Frame  # noqa: E402
from edge.errors import EdgeError  # noqa: E402
from edge.events.config import parse_config  # noqa: E402
import edge.events.mqtt as mqtt_module  # noqa: E402
from edge.events.mqtt import MqttSink  # noqa: E402
from edge.events.mqtt_target import MqttTarget, parse_mqtt_url  # noqa: E402
from edge.events.stage import EventStage  # noqa: E402
from edge.events.zones import Event  # noqa: E402
from edge.live.loop import LiveLoop  # noqa: E402
from edge.live.sinks import Sink  # noqa: E402
from edge.live.sources import Source  # noqa: E402
from edge.live.synthetic import draw_shape  # noqa: E402
from edge.models import DEMO_MODEL  # noqa: E402

from test_events_live import CONFIG, CrossingSquares  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
PASSWD = shutil.which("mosquitto_passwd")

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")]


# ---- a real broker and a real subscriber -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:``port`` with a config written here; ``users`` ({name: password})
    turns anonymous access off and writes a password file with mosquitto_passwd."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", *extra, "persistence false", "log_type error", "log_type warning",
                 "log_type notice"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto', who cannot read the test's files
        if users:
            if PASSWD is None:
                pytest.skip("mosquitto_passwd is not installed")
            passwords = folder / "passwords"
            for i, (name, password) in enumerate(users.items()):
                subprocess.run([PASSWD, "-b", *(["-c"] if i == 0 else []), str(passwords), name, password],
                               check=True, capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"

    def start(self) -> "Broker":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path):
    server = Broker(tmp_path).start()
    yield server
    server.stop()


class Subscriber:
    """A paho client that subscribes to ``topics`` (again after every reconnect) and keeps what
    arrives: ``(topic, payload text, retained)``."""

    def __init__(self, port: int, topics=("#",), auth: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, str, bool]] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.topics = list(topics)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.urandom(4).hex()}")
        if auth:
            client.username_pw_set(*auth)
        client.on_connect = self._connected
        client.on_subscribe = lambda c, u, mid, codes, props: self.subscribed.set()
        client.on_message = self._message
        client.reconnect_delay_set(1, 1)
        client.connect_async("127.0.0.1", port, keepalive=30)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "the test's subscriber could not subscribe"

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _message(self, client, userdata, message) -> None:
        with self.cond:
            self.messages.append((message.topic, message.payload.decode("utf-8", "replace"), bool(message.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.messages), timeout)

    def on(self, topic: str) -> list[str]:
        with self.cond:
            return [payload for t, payload, _ in self.messages if t == topic]

    def last(self, topic: str) -> str | None:
        values = self.on(topic)
        return values[-1] if values else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _has(topic: str, payload: str | None = None):
    return lambda messages: any(t == topic and (payload is None or p == payload) for t, p, _ in messages)


class Recorder(Sink):
    """What the loop handed the sinks: every event, and when each frame was written."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.seen: list[dict] = []
        self.times = np.zeros(capacity)
        self.frames = 0

    def write(self, frame, detections, annotated) -> None:
        if self.frames < self.times.size:
            self.times[self.frames] = time.monotonic()
        self.frames += 1

    def events(self, frame, events) -> None:
        self.seen.extend(event.to_dict() for event in events)


def _settled(sink: MqttSink, timeout: float = 10.0) -> None:
    """Wait until the sink is connected and the broker acknowledged all it sent."""
    deadline = time.monotonic() + timeout
    while not (sink.connected and sink.counters()["queued"] == 0 and sink.published) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the helper thread's state messages after the connect
    deadline = time.monotonic() + timeout
    while sink.counters()["queued"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.connected


def _stage(detector) -> EventStage:
    return EventStage(detector.labels, high_score=0.5, low_score=0.1,
                      config=parse_config(CONFIG, labels=detector.labels),
                      detection_capacity=detector.detections.capacity)


def _expected(events: list[dict]) -> list[tuple]:
    """The MQTT messages the documented mapping gives for these events, then the run's end:
    (type, region, track, reason)."""
    out, open_ = [], set()
    for e in events:
        region = e.get("zone") or e.get("line")
        if e["event"] == "cross":
            out += [("new", region, e["track"], None), ("end", region, e["track"], "cross")]
        elif e["event"] == "enter":
            open_.add((region, e["track"]))
            out.append(("new", region, e["track"], None))
        elif (region, e["track"]) in open_:
            open_.discard((region, e["track"]))
            out.append(("end", region, e["track"], "leave"))
        else:
            out += [("new", region, e["track"], None), ("end", region, e["track"], "leave")]
    out += [("end", region, track, "stopped") for region, track in sorted(open_)]
    return out


# ---- the URL -----------------------------------------------------------------------------------------


def test_mqtt_urls_parse_and_errors_never_show_the_password(monkeypatch):
    monkeypatch.delenv("EDGE_MQTT_PASSWORD", raising=False)
    assert parse_mqtt_url("mqtt://broker.local") == MqttTarget("broker.local", 1883)
    assert parse_mqtt_url("mqtts://u%40x:p%2Fw@10.0.0.2/home/cam1/") == MqttTarget(
        "10.0.0.2", 8883, True, "u@x", "p/w", "home/cam1")
    assert parse_mqtt_url("mqtt://[::1]:1999").address == "[::1]:1999"
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "from-env")
    assert parse_mqtt_url("mqtt://bob@h").password == "from-env"
    assert parse_mqtt_url("mqtt://bob:given@h").describe() == "mqtt://bob@h:1883"
    for bad, words in (("broker:1883", "mqtt://"), ("http://h", "scheme"), ("mqtt://:1883", "host"),
                       ("mqtt://h:99999", "port"), ("mqtt://h/a/+/b", "prefix"), ("mqtt://bob:hunter2@h/#", "prefix"),
                       ("mqtt://h?x=1", "query")):
        with pytest.raises(EdgeError, match=words) as info:
            parse_mqtt_url(bad)
        assert "hunter2" not in str(info.value) and str(info.value).startswith("--mqtt ")


# ---- a scripted run --------------------------------------------------------------------------------


def test_a_scripted_run_publishes_the_exact_events_counts_stats_and_discovery(broker):
    sub = Subscriber(broker.port, ["edgekit/#", "homeassistant/#"])
    try:
        detector = Detector(DEMO_MODEL, score_threshold=0.1)
        stage = _stage(detector)
        lines: list[str] = []
        sink = MqttSink(broker.url, camera="door", zones=stage, log=lines.append, stats_every=0.2)
        recorder = Recorder()
        source = CrossingSquares(frames=80)
        loop = LiveLoop(detector, source, [recorder, sink], stats_every=0, log=lambda m: None, events=stage)
        summary = loop.run()
        assert summary.frames_processed == 80
        assert sub.wait_for(_has("edgekit/door/availability", "offline")), sub.messages[-20:]

        # the events: exactly the documented mapping of what the loop produced, in order
        kinds = [e["event"] for e in recorder.seen]
        assert sorted(kinds) == ["cross", "cross", "enter", "leave"], recorder.seen
        everything = [json.loads(p) for p in sub.on("edgekit/door/events")]
        messages = [m for m in everything if m["type"] != "update"]
        got = [(m["type"], m["after"].get("zone") or m["after"].get("line"), m["after"]["track"],
                m["after"]["reason"]) for m in messages]
        assert got == _expected(recorder.seen)
        assert [m["type"] for m in messages] == ["new", "end"] * 4
        assert sorted(r for _, _, _, r in got if r) == ["cross", "cross", "leave", "stopped"]
        for message in messages:  # each end carries the state last published, then the final one
            before, after = message["before"], message["after"]
            assert before["id"] == after["id"] and before["camera"] == "door" and before["label"] == "square"
            if message["type"] == "new":
                assert before == after and after["active"] and after["end_time"] is None
            else:
                assert not after["active"] and before["active"] and after["current_zones"] == []
        ids = [m["after"]["id"] for m in messages]
        assert all(ids[i] == ids[i + 1] for i in range(0, 8, 2)) and len(set(ids)) == 4
        first_leave = next(m for m in messages if m["after"]["reason"] == "leave")
        assert first_leave["after"]["entered"] is False, "the green square was inside when first tracked"
        assert any(e["event"] == "leave" for e in recorder.seen[:1])
        # updates (how many: the frame times decide) only for the zone event still open, each one's
        # before the message before it, and its end's before the last of them
        opened = next(m for m in messages if m["after"]["reason"] == "stopped")["after"]["id"]
        updates = [m for m in everything if m["type"] == "update"]
        assert all(m["after"]["id"] == opened and m["after"]["zone"] == "right" for m in updates)
        chain = [m for m in everything if m["after"]["id"] == opened]
        assert [m["type"] for m in chain] == ["new"] + ["update"] * len(updates) + ["end"]
        assert all(later["before"] == earlier["after"] for earlier, later in zip(chain, chain[1:]))

        # counts: the broker keeps the last value of each (retained), equal to the zones' own
        late = Subscriber(broker.port, ["edgekit/door/counts/#", "edgekit/door/occupancy/#",
                                        "edgekit/door/availability"])
        try:
            assert late.wait_for(lambda m: len(m) >= 10)
            retained = {t: p for t, p, r in late.messages if r}
            zones = stage.zones
            for region in ("middle", "right"):
                for direction in ("in", "out"):
                    want = str(zones.count(region, direction))
                    assert retained[f"edgekit/door/counts/{region}/{direction}"] == want
                    assert retained[f"edgekit/door/counts/{region}/square/{direction}"] == want
            assert retained["edgekit/door/counts/middle/in"] == "1" == retained["edgekit/door/counts/right/out"]
            assert retained["edgekit/door/occupancy/right"] == str(int(zones.occupancy[0])) == "1"
            assert retained["edgekit/door/availability"] == "offline"
        finally:
            late.close()

        # stats: the loop's numbers and the sink's own, QoS 0, every 0.2 s and once more at the end, so
        # the last one holds the run's final count however short the run was
        stats = [json.loads(p) for p in sub.on("edgekit/door/stats")]
        assert stats and {"fps", "frames_processed", "rss_mb", "running"} <= set(stats[-1])
        assert stats[-1]["frames_processed"] == summary.frames_processed, stats[-1]
        assert stats[-1]["mqtt"]["dropped"] == 0 and stats[-1]["camera"] == "door"

        # Home Assistant: a sensor per region x class x direction, fps, occupancy per zone
        configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
        node = "homeassistant/{}/edgekit_door/{}/config"
        for component, object_id in (("sensor", "fps"), ("sensor", "middle_square_in"), ("sensor", "middle_all_out"),
                                     ("sensor", "right_square_in"), ("sensor", "right_all_in"),
                                     ("binary_sensor", "right_occupancy"), ("sensor", "right_objects")):
            config = configs[node.format(component, object_id)]
            assert config["availability_topic"] == "edgekit/door/availability"
            assert config["unique_id"] == f"edgekit_door_{object_id}"
            assert config["device"]["identifiers"] == ["edgekit_door"]
        assert configs[node.format("sensor", "middle_square_in")]["state_topic"] == \
            "edgekit/door/counts/middle/square/in"
        assert configs[node.format("binary_sensor", "right_occupancy")]["state_topic"] == "edgekit/door/occupancy/right"
        assert sink.dropped == 0 and f"{8 + len(updates)} event messages" in sink.report()
        assert [line for line in lines if "connected" not in line] == [], lines
    finally:
        sub.close()


def test_availability_and_discovery_are_retained_for_a_late_subscriber(broker):
    sink = MqttSink(broker.url + "/site/cam7", camera="cam7", log=lambda m: None)
    sink.start(lambda: {"fps": 1.0})
    try:
        _settled(sink)
        late = Subscriber(broker.port, ["site/cam7/availability", "homeassistant/sensor/edgekit_cam7/fps/config"])
        try:
            assert late.wait_for(_has("site/cam7/availability", "online"))
            assert late.wait_for(lambda m: any(t.endswith("/fps/config") for t, _, _ in m))
            assert all(retained for _, _, retained in late.messages), "both come from the broker's retained store"
            config = json.loads(late.last("homeassistant/sensor/edgekit_cam7/fps/config"))
            assert config["state_topic"] == "site/cam7/stats" and config["payload_available"] == "online"
        finally:
            late.close()
    finally:
        sink.close()
    after = Subscriber(broker.port, ["site/cam7/availability"])
    try:
        assert after.wait_for(_has("site/cam7/availability", "offline")), "a clean stop says offline, retained"
    finally:
        after.close()


_KILLED = textwrap.dedent("""
    import sys
    from edge.detector.detector import Detector
    from edge.events.mqtt import MqttSink
    from edge.live.loop import LiveLoop
    from edge.live.sources import open_source
    from edge.models import DEMO_MODEL

    sink = MqttSink(sys.argv[1], camera="yard")
    loop = LiveLoop(Detector(DEMO_MODEL), open_source("synthetic:160x120@10"), [sink], stats_every=0)
    loop.run()
""")


def test_kill_9_of_a_run_publishes_offline_through_the_last_will(broker):
    sub = Subscriber(broker.port, ["edgekit/yard/availability"])
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, broker.url], cwd=PROJECT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert sub.wait_for(_has("edgekit/yard/availability", "online"), 60), proc.stderr.read1().decode()
        proc.kill()  # SIGKILL: no close(), no clean disconnect: only the broker's last will can say it
        proc.wait(10)
        assert sub.wait_for(_has("edgekit/yard/availability", "offline"), 10), sub.messages
        assert sub.on("edgekit/yard/availability")[-2:] == ["online", "offline"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
        sub.close()
    late = Subscriber(broker.port, ["edgekit/yard/availability"])
    try:
        assert late.wait_for(_has("edgekit/yard/availability", "offline")), "the will is retained"
    finally:
        late.close()


# ---- the broker goes away ----------------------------------------------------------------------------


class RepeatingCrossings(Source):
    """The crossing scene of ``CrossingSquares`` again every ``period`` frames (new objects each
    time), paced at ``fps``: a camera that never ends."""

    def __init__(self, fps: float = 30.0, period: int = 100) -> None:
        super().__init__("repeating-crossings")
        self.frame_shape = (240, 320, 3)
        self.period, self.interval = period, 1.0 / fps
        self._image = np.zeros(self.frame_shape, np.uint8)
        self._next = None

    def _read(self):
        now = time.monotonic()
        if self._next is None:
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.interval
        n = self.counters.frames_read % self.period
        self._image[:] = (90, 110, 100)
        draw_shape(self._image, "square", 40 + 3 * n, 70, 50, (40, 40, 230))
        draw_shape(self._image, "square", 280 - 3 * n, 170, 50, (40, 200, 40))
        return self._image


def _fps(times: np.ndarray, start: float, end: float) -> float:
    n = np.count_nonzero((times >= start) & (times < end))
    return n / (end - start)


def test_a_broker_restarted_mid_run_costs_no_fps_and_events_after_it_arrive(broker):
    sub = Subscriber(broker.port, ["edgekit/gate/#"])
    detector = Detector(DEMO_MODEL, score_threshold=0.1)
    stage = _stage(detector)
    lines: list[str] = []
    sink = MqttSink(broker.url, camera="gate", zones=stage, log=lines.append, stats_every=0.5,
                    reconnect_delay=(1, 2))
    recorder = Recorder()
    loop = LiveLoop(detector, RepeatingCrossings(fps=30), [recorder, sink], stats_every=0, log=lambda m: None,
                    events=stage)
    runner = threading.Thread(target=loop.run, name="test-loop", daemon=True)
    marks = {}
    try:
        runner.start()
        assert sub.wait_for(lambda m: sum(t.endswith("/events") for t, _, _ in m) >= 4, 30), "events before"
        time.sleep(1.0)
        marks["stop"] = time.monotonic()
        broker.stop()
        time.sleep(2.0)
        frames_at_restart = recorder.frames
        broker.start()
        marks["start"] = time.monotonic()
        deadline = time.monotonic() + 20
        while sink.connects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.connects == 2, lines
        marks["back"] = time.monotonic()
        assert sub.subscribed.wait(10)
        seq_back = recorder.frames
        # a new scene cycle after both are back: its events must reach the broker
        assert sub.wait_for(lambda m: any(t.endswith("/events") and json.loads(p)["after"]["start_frame"] > seq_back
                                          for t, p, _ in m), 20), (lines, sub.messages[-10:])
        marks["end"] = time.monotonic()
    finally:
        loop.stop()
        runner.join(30)
        sub.close()
    times = recorder.times[: min(recorder.frames, recorder.times.size)]
    before = _fps(times, marks["stop"] - 2.0, marks["stop"])
    during = _fps(times, marks["stop"], marks["back"])
    gaps = np.diff(times[(times >= marks["stop"]) & (times < marks["back"])])
    assert before > 20 and during >= 0.7 * before, (before, during)
    assert gaps.max() < 1.0, f"the loop paused {gaps.max():.2f} s while the broker was away"
    assert recorder.frames > frames_at_restart
    # one line when the broker went, one when it came back; nothing per retry
    assert len([m for m in lines if "lost the broker" in m]) == 1, lines
    assert len([m for m in lines if "reconnected" in m]) == 1, lines
    assert not [m for m in lines if "cannot reach" in m], lines
    late = Subscriber(broker.port, ["edgekit/gate/availability", "homeassistant/#"])
    try:  # the restarted broker (no persistence) got the retained state again
        assert late.wait_for(_has("edgekit/gate/availability", "offline"))  # the run has ended by now
        assert late.wait_for(lambda m: any(t.endswith("/right_occupancy/config") for t, _, _ in m))
    finally:
        late.close()


def test_an_object_the_tracker_loses_inside_a_zone_ends_its_event_as_lost(broker, monkeypatch):
    monkeypatch.setattr(mqtt_module, "LOST_CHECK_SECONDS", 0.05)  # asked every 0.05 s instead of 0.5 s
    sub = Subscriber(broker.port, ["edgekit/lost/events"])
    try:
        detector = Detector(DEMO_MODEL, score_threshold=0.1)
        stage = _stage(detector)
        sink = MqttSink(broker.url, camera="lost", zones=stage, log=lambda m: None, stats_every=0)
        # the red square enters the zone on the right, runs off the frame there and is never seen leaving
        LiveLoop(detector, RepeatingCrossings(fps=1000), [sink], max_frames=220, stats_every=0, log=lambda m: None,
                 events=stage).run()
        assert sub.wait_for(lambda m: len(m) >= 14)
        messages = [json.loads(p) for p in sub.on("edgekit/lost/events")]
        lost = [m for m in messages if m["after"]["reason"] == "lost"]
        assert len(lost) == 1, [(m["type"], m["after"]["reason"]) for m in messages]
        before, after = lost[0]["before"], lost[0]["after"]
        assert before["zone"] == "right" and before["entered"] and before["active"] and not after["active"]
        opened = [m for m in messages if m["type"] == "new" and m["after"]["id"] == after["id"]]
        assert len(opened) == 1 and opened[0]["after"]["start_frame"] < after["end_frame"]
        assert after["end_frame"] - after["start_frame"] > stage.tracker.max_missed
    finally:
        sub.close()


def test_a_wrong_password_is_one_clear_line_and_the_loop_runs_on(tmp_path):
    broker = Broker(tmp_path, users={"alice": "s3cret"}).start()
    try:
        lines: list[str] = []
        wrong = MqttSink(f"mqtt://alice:nope@127.0.0.1:{broker.port}", camera="c1", log=lines.append,
                         reconnect_delay=(1, 1))
        recorder = Recorder()
        loop = LiveLoop(Detector(DEMO_MODEL), RepeatingCrossings(fps=30), [recorder, wrong], duration=3.5,
                        stats_every=0, log=lambda m: None)
        summary = loop.run()
        assert summary.stop_reason == "duration" and summary.frames_processed > 60
        assert len(lines) == 1, lines
        assert "refused user 'alice'" in lines[0] and "check the user and password" in lines[0]
        assert "nope" not in lines[0]
        assert wrong.connects == 0 and wrong.attempts >= 2, "it keeps retrying"
        assert "never connected" in wrong.report()
        # the right password on the same broker works
        sub = Subscriber(broker.port, ["edgekit/c2/availability"], auth=("alice", "s3cret"))
        right = MqttSink(f"mqtt://alice:s3cret@127.0.0.1:{broker.port}", camera="c2", log=lines.append)
        right.start(dict)
        try:
            assert sub.wait_for(_has("edgekit/c2/availability", "online"))
        finally:
            right.close()
            sub.close()
    finally:
        broker.stop()


def test_an_unreachable_broker_is_one_line_and_the_loop_runs_on():
    lines: list[str] = []
    port = free_port()  # nothing listens there
    sink = MqttSink(f"mqtt://127.0.0.1:{port}", camera="c", log=lines.append, reconnect_delay=(1, 1))
    loop = LiveLoop(Detector(DEMO_MODEL), RepeatingCrossings(fps=30), [sink], duration=2.5, stats_every=0,
                    log=lambda m: None)
    started = time.monotonic()
    summary = loop.run()
    assert time.monotonic() - started < 6, "close() does not hang on a broker that is not there"
    assert summary.frames_processed > 45
    assert len(lines) == 1 and f"cannot reach the broker at 127.0.0.1:{port}" in lines[0], lines
    assert "Connection refused" in lines[0] and sink.attempts >= 2


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command to make a test CA")
def test_mqtts_checks_the_certificate_against_the_ca_store(tmp_path, monkeypatch):
    def openssl(*args) -> None:
        subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=60, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=edgekit test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    broker = Broker(tmp_path, extra=(f"certfile {tmp_path / 'server.crt'}", f"keyfile {tmp_path / 'server.key'}"))
    broker.start()
    try:
        lines: list[str] = []
        untrusted = MqttSink(f"mqtts://localhost:{broker.port}", camera="t1", log=lines.append, reconnect_delay=(1, 1))
        untrusted.start(dict)
        deadline = time.monotonic() + 10
        while untrusted.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        untrusted.close()
        assert untrusted.connects == 0 and len(lines) == 1, lines
        assert "TLS certificate is not trusted" in lines[0] and "SSL_CERT_FILE" in lines[0]
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))  # the "system" store now holds the test CA
        trusted = MqttSink(f"mqtts://localhost:{broker.port}", camera="t2", log=lines.append)
        trusted.start(dict)
        try:
            _settled(trusted)
            assert trusted.connects == 1 and "connected to mqtts://localhost" in lines[-1]
        finally:
            trusted.close()
    finally:
        broker.stop()


def _event(i: int, kind: str = "cross") -> Event:
    region = "line" if kind == "cross" else "zone"
    return Event(kind, "in", region, "l1", i, 0, "person", i, 1.0e9 + i, 10.0, 20.0)


def test_a_full_queue_drops_and_counts_and_never_blocks_the_detector():
    lines: list[str] = []
    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}", camera="q", log=lines.append, queue_size=10)
    sink.start(dict)
    frame = Frame.of(np.zeros((8, 8, 3), np.uint8))
    try:
        worst = 0.0
        for i in range(50):  # 50 crossings: 100 messages for a queue of 10
            t = time.perf_counter()
            sink.events(frame, [_event(i)])
            worst = max(worst, time.perf_counter() - t)
        assert sink.counters()["queued"] == 10 and sink.dropped == 90 and sink.events_published == 10
        assert worst < 0.05, f"an event took {worst * 1e3:.1f} ms with the broker away"
        assert "90 dropped (queue full)" in sink.report()
    finally:
        sink.close()


def test_frames_without_events_cost_nothing(broker):
    sink = MqttSink(broker.url, camera="idle", log=lambda m: None, stats_every=0)
    sink.start(dict)
    try:
        frame = Frame.of(np.zeros((8, 8, 3), np.uint8))
        _settled(sink)
        published = sink.published
        for _ in range(100):
            sink.write(frame, None, None)  # warm
        tracemalloc.start()
        for _ in range(10_000):
            sink.write(frame, None, None)
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, mqtt_module.__file__)])
        tracemalloc.stop()
        assert sum(stat.size for stat in snapshot.statistics("filename")) == 0, snapshot.statistics("lineno")[:5]
        assert sink.published == published, "nothing published for frames without events"
    finally:
        sink.close()
