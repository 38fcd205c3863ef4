"""``edge run --config FILE --mqtt URL``: every camera of the file publishes under its own name, as a
single-camera ``--mqtt URL --camera NAME`` run does, to a real mosquitto on a loopback port; a
kill -9 marks every camera offline; with the broker away the cameras keep their pace and the
problem is one line; two camera names on one topic are refused before anything starts.

Real ``edge run`` subprocesses, the bundled demo model and synthetic cameras (deterministic: the
same frames give the same tracks and events every run). The broker and the subscriber are
:mod:`test_mqtt`'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install 'edgekit[events]')")

from edge.errors import EdgeError  # noqa: E402
from edge.events.mqtt_cameras import check_camera_topics  # noqa: E402
from helpers import PortHold  # noqa: E402
from test_mqtt import MOSQUITTO, Broker, Subscriber, _has  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")]

# On synthetic:160x120 (seed 0) the demo model's triangles cross x = 100 and y = 80 and go in and
# out of the bottom band within the first 80 frames.
ZONES = {"min_frames": 3,
         "zones": [{"name": "low", "points": [[0, 90], [160, 90], [160, 120], [0, 120]]}],
         "lines": [{"name": "h80", "points": [[0, 80], [160, 80]]}, {"name": "v100", "points": [[100, 0], [100, 120]]}]}
ZONED = ("door", "yard")
CAMERAS = ZONED + ("gate",)


def edge(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout)


def _cameras_file(folder: Path, source: str = "synthetic:160x120", realtime: bool = False,
                  names=CAMERAS) -> Path:
    (folder / "zones.json").write_text(json.dumps(ZONES))
    cameras = [{"name": name, "source": source, "realtime": realtime, **({"zones": "zones.json"} if name in ZONED
                                                                          else {})} for name in names]
    path = folder / "cameras.json"
    path.write_text(json.dumps({"cameras": cameras}))
    return path


def _json_events(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name in CAMERAS}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "event" in record:
            out[record["camera"]].append(record)
    return out


def test_every_camera_publishes_under_its_own_name(tmp_path):
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port, ["edgekit/#", "homeassistant/#"])
    try:
        config, out = _cameras_file(tmp_path), tmp_path / "out.jsonl"
        result = edge("run", "--config", config, "--mqtt", broker.url, "--max-frames", "360", "--json", out,
                      "--stats-every", "0")
        assert result.returncode == 0, result.stderr
        for name in CAMERAS:  # the end: every camera said offline (after its last events and counts)
            assert sub.wait_for(_has(f"edgekit/{name}/availability", "offline")), (name, sub.messages[-10:])
        logged = result.stderr
        assert "topics under edgekit/door/, edgekit/yard/, edgekit/gate/ (no zones: stats only)" in logged
        assert all(f"connected to {broker.url}, topics under edgekit/{name}/" in logged for name in CAMERAS)

        json_events = _json_events(out)
        frames = {name: 0 for name in CAMERAS}
        for line in out.read_text().splitlines():
            record = json.loads(line)
            if "event" not in record:
                frames[record["camera"]] += 1
        for name in CAMERAS:
            assert sub.on(f"edgekit/{name}/availability") == ["online", "offline"]
            stats = [json.loads(p) for p in sub.on(f"edgekit/{name}/stats")]
            assert stats and all(s["camera"] == name and "fps" in s and s["mqtt"]["dropped"] == 0 for s in stats)
            assert stats[-1]["frames_processed"] == frames[name], (name, stats[-1])  # the last: the final count
            messages = [json.loads(p) for p in sub.on(f"edgekit/{name}/events")]
            if name not in ZONED:
                assert messages == [] and not json_events[name]
                continue
            assert len(json_events[name]) >= 4, json_events[name]
            assert {m["before"]["camera"] for m in messages} == {m["after"]["camera"] for m in messages} == {name}
            ids = [m["after"]["id"] for m in messages]
            news = [i for i, m in zip(ids, messages) if m["type"] == "new"]
            ends = [i for i, m in zip(ids, messages) if m["type"] == "end"]
            assert sorted(news) == sorted(ends) and len(set(news)) == len(news), "every new gets its one end"
            crossings = [e for e in json_events[name] if e["event"] == "cross"]
            assert sum(m["type"] == "new" and m["after"]["region"] == "line" for m in messages) == len(crossings)
            assert f"mqtt: {len(messages)} event messages" in logged

        late = Subscriber(broker.port, ["edgekit/+/counts/#", "edgekit/+/occupancy/#", "edgekit/+/availability",
                                        "homeassistant/#"])
        try:  # what the broker keeps: each camera's final counts, equal to its own JSON lines' events
            wanted = {f"edgekit/{name}/availability" for name in CAMERAS}
            wanted |= {f"homeassistant/sensor/edgekit_{name}/fps/config" for name in CAMERAS}
            wanted |= {f"edgekit/{name}/counts/{region}/{direction}" for name in ZONED
                       for region in ("low", "h80", "v100") for direction in ("in", "out")}
            wanted |= {f"homeassistant/binary_sensor/edgekit_{name}/low_occupancy/config" for name in ZONED}
            wanted |= {f"edgekit/{name}/occupancy/low" for name in ZONED}
            assert late.wait_for(lambda m: wanted <= {t for t, _, _ in m}), wanted - {t for t, _, _ in late.messages}
            retained = {t: p for t, p, r in late.messages if r}
            for name in CAMERAS:
                assert retained[f"edgekit/{name}/availability"] == "offline"
                fps = json.loads(retained[f"homeassistant/sensor/edgekit_{name}/fps/config"])
                assert fps["state_topic"] == f"edgekit/{name}/stats"
                assert fps["availability_topic"] == f"edgekit/{name}/availability"
                assert fps["device"]["identifiers"] == [f"edgekit_{name}"] and fps["unique_id"] == f"edgekit_{name}_fps"
            for name in ZONED:
                for region in ("low", "h80", "v100"):
                    for direction in ("in", "out"):
                        want = sum(1 for e in json_events[name]
                                   if (e.get("zone") or e.get("line")) == region and e["direction"] == direction)
                        assert retained[f"edgekit/{name}/counts/{region}/{direction}"] == str(want), (name, region)
                occupancy = json.loads(retained[f"homeassistant/binary_sensor/edgekit_{name}/low_occupancy/config"])
                assert occupancy["state_topic"] == f"edgekit/{name}/occupancy/low"
                assert f"edgekit/{name}/occupancy/low" in retained
            assert not any(t.startswith("edgekit/gate/counts/") for t in retained)
            assert not any(t.startswith("homeassistant/binary_sensor/edgekit_gate/") for t in retained)
        finally:
            late.close()
    finally:
        sub.close()
        broker.stop()


def test_a_broker_that_is_not_there_never_slows_the_cameras_and_is_said_once(tmp_path):
    closed = PortHold()  # bound, never listening: every connection attempt is refused
    try:
        config, out = _cameras_file(tmp_path, source="synthetic:160x120@10", realtime=True), tmp_path / "out.jsonl"
        result = edge("run", "--config", config, "--mqtt", f"mqtt://127.0.0.1:{closed.port}", "--duration", "3.5",
                      "--json", out, "--stats-every", "0")
    finally:
        closed.release()
    assert result.returncode == 0, result.stderr
    assert "(duration)" in result.stderr
    frames = {name: 0 for name in CAMERAS}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        if "detections" in record:
            frames[record["camera"]] += 1
    # paced at 10 fps each for 3.5 s: the cameras with events queued for the absent broker keep up
    # with the one without, and none falls far behind its source (generous: a busy machine)
    assert min(frames.values()) >= 15 and max(frames.values()) - min(frames.values()) <= 3, frames
    assert sum(len(v) for v in _json_events(out).values()) >= 2, "events happened and were queued"
    unreachable = [line for line in result.stderr.splitlines() if "cannot reach the broker" in line]
    assert len(unreachable) == 1, result.stderr  # 3 cameras, each retrying: one line
    assert f"127.0.0.1:{closed.port}" in unreachable[0] and "Connection refused" in unreachable[0]
    assert result.stderr.count("(never connected)") == 3


def test_kill_9_marks_every_camera_offline_through_its_own_last_will(tmp_path):
    """Why a connection per camera: MQTT keeps one last will per connection."""
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port, ["edgekit/+/availability"])
    config = _cameras_file(tmp_path, source="synthetic:160x120@10", realtime=True)
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--mqtt", broker.url,
                             "--duration", "60", "--stats-every", "0"], cwd=PROJECT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for name in CAMERAS:
            assert sub.wait_for(_has(f"edgekit/{name}/availability", "online"), 60), sub.messages
        proc.kill()  # no close(), no clean disconnect: only the broker's wills can say it
        proc.wait(10)
        for name in CAMERAS:
            assert sub.wait_for(_has(f"edgekit/{name}/availability", "offline"), 10), sub.messages
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.close()
        broker.stop()


def test_two_camera_names_on_one_topic_are_refused_before_anything_starts(tmp_path):
    config = _cameras_file(tmp_path, names=("cam", "cam_"))  # topic_level strips the trailing _
    result = edge("run", "--config", config, "--mqtt", "mqtt://127.0.0.1:1", "--max-frames", "1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr  # no model loaded, no camera opened
    assert str(config) in lines[0] and "'cam'" in lines[0] and "'cam_'" in lines[0] and "rename one" in lines[0]
    assert "Traceback" not in result.stderr
    # without --mqtt the same file runs: the names only clash as topics
    assert edge("run", "--config", config, "--max-frames", "2", "--stats-every", "0").returncode == 0
    # the URL is still checked first, in one line
    bad = edge("run", "--config", config, "--mqtt", "http://127.0.0.1", "--max-frames", "1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "edge: error: --mqtt http://127.0.0.1: the scheme must be mqtt:// or mqtts:// (TLS), not http://"]
    with pytest.raises(EdgeError, match="Home Assistant id edgekit_a_b"):  # '.' is not allowed in HA ids
        check_camera_topics(["a.b", "a_b"], "--config x.json")
    check_camera_topics(["door", "yard", "a.b"], "--config x.json")


def test_a_camera_sink_allocates_nothing_per_frame_and_closing_one_closes_all():
    import time
    import tracemalloc

    import numpy as np

    import edge.events.mqtt as mqtt_module
    import edge.events.mqtt_cameras as cameras_module
    from edge.detector.step import Frame
    from edge.events.mqtt_cameras import CameraMqtt, MqttCameras
    from edge.live.cameras import Camera
    from edge.live.synthetic import SyntheticSource

    closed = PortHold()
    try:
        cameras = [Camera(name, SyntheticSource("synthetic", 64, 48)) for name in ("a", "b")]
        lines: list[str] = []
        group = MqttCameras(f"mqtt://127.0.0.1:{closed.port}/site", cameras, log=lines.append,
                            reconnect_delay=(1, 1))
        handles = [camera.sinks[-1] for camera in cameras]
        assert all(isinstance(h, CameraMqtt) for h in handles)
        assert [h.sink.prefix for h in handles] == ["site/a", "site/b"], "a URL prefix gets each camera below it"
        for handle in handles:
            handle.start(dict)
        frame = Frame.of(np.zeros((8, 8, 3), np.uint8))
        for _ in range(100):
            handles[0].write(frame, None, None)  # warm
        tracemalloc.start()
        for _ in range(10_000):
            handles[0].write(frame, None, None)
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, mqtt_module.__file__), tracemalloc.Filter(True, cameras_module.__file__)])
        tracemalloc.stop()
        assert sum(stat.size for stat in snapshot.statistics("filename")) == 0, snapshot.statistics("lineno")[:5]
        started = time.monotonic()
        handles[0].close()
        assert all(h.sink._closed for h in handles) and time.monotonic() - started < 10
        handles[1].close()  # the loop closes each: the second finds it done
        assert group.counters()["connected"] is False
    finally:
        closed.release()


def test_a_problem_several_connections_share_is_said_once_and_again_after_they_connect():
    from edge.events.mqtt_connection import BrokerProblems

    problems, said = BrokerProblems(), []
    a, b, c = object(), object(), object()
    for owner in (a, b, c):
        problems.say(owner, "fail:ConnectionRefusedError", "cannot reach", said.append)
    assert said == ["cannot reach"]
    problems.clear(a)
    problems.clear(b)
    problems.say(a, "fail:ConnectionRefusedError", "cannot reach", said.append)  # c still has it
    assert said == ["cannot reach"]
    problems.clear(a)
    problems.clear(c)
    for owner in (a, b, c):  # all connected, then the broker went: one line again
        problems.say(owner, "lost", "lost the broker", said.append)
    problems.say(a, "refused:Not authorized", "refused", said.append)  # a new problem is said
    assert said == ["cannot reach", "lost the broker", "refused"]
