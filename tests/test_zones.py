"""edge.events.zones and edge.events.config: the failure sequences that make naive counters wrong
(flicker, lingering, id switches, unconfirmed tracks), config validation, and memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from edge.contract.detections import Detections
from edge.errors import EdgeError
from edge.events import Tracker, Zones, load_config, parse_config, yaml_available
from test_tracker import LABELS, fill, load_frame, measure, synthetic_scene

PERSON, CAR = 0, 2
# A horizontal line across a 640x480 frame, drawn left to right: moving down the screen is "in".
ROAD_LINE = {"lines": [{"name": "road", "points": [[0, 200], [640, 200]]}]}
SQUARE = {"zones": [{"name": "square", "points": [[200, 100], [400, 100], [400, 300], [200, 300]]}]}


def feet(x: float, y: float, cls: int = PERSON, score: float = 0.9, w: float = 40.0, h: float = 80.0):
    """A detection whose bottom centre (the default anchor) is at (x, y)."""
    return (cls, score, [x - w / 2, y - h, x + w / 2, y])


class Scene:
    """Detections -> Tracker -> Zones, frame after frame, keeping every event and the ids used."""

    def __init__(self, config: dict, frame_size=(640, 480), **tracker_kwargs) -> None:
        self.tracker = Tracker(**tracker_kwargs)
        self.zones = Zones(config, frame_size, LABELS, max_tracks=self.tracker.max_tracks)
        self.det = Detections(20, LABELS)
        self.events = []
        self.ids: set[int] = set()
        self.seq = 0

    def step(self, *rows):
        tracks = self.tracker.update(fill(self.det, rows), seq=self.seq)
        events = self.zones.update(tracks, self.seq, self.seq / 30.0)
        self.ids.update(i for i in tracks.detection_track_ids.tolist() if i >= 0)
        self.events.extend(events)
        self.seq += 1
        return events

    def walk(self, points, **kwargs):
        for x, y in points:
            self.step(feet(x, y, **kwargs))

    def kinds(self):
        return [(e.kind, e.direction, e.name, e.track_id) for e in self.events]


def down(x, y0, y1, step=5):
    """Anchor points walking straight down (or up, when y1 < y0) in ``step`` px per frame."""
    step = step if y1 >= y0 else -step
    return [(x, y) for y in range(y0, y1 + (1 if step > 0 else -1), step)]


# ---- lines ------------------------------------------------------------------------------------

def test_one_crossing_counts_once_with_its_direction_and_frame():
    scene = Scene(ROAD_LINE)
    scene.walk(down(300, 120, 300))
    assert scene.kinds() == [("cross", "in", "road", 1)]
    event = scene.events[0]
    # the anchor passes y=200 between 200 and 205; the 3rd frame below is y=215
    assert (event.y, event.label, event.region, event.seq) == (215.0, "person", "line", 19)
    assert event.time == pytest.approx(19 / 30.0)
    assert json.loads(json.dumps(event.to_dict()))["line"] == "road"
    assert scene.zones.count("road", "in") == 1 and scene.zones.count("road", "out") == 0


def test_a_box_flickering_across_a_line_is_not_counted_unless_it_stays_k_frames():
    scene = Scene(ROAD_LINE)
    scene.walk(down(300, 140, 195))
    # jitter across the line: never more than 2 frames (min_frames is 3) on the far side
    for _ in range(8):
        scene.walk([(300, 198), (300, 203), (300, 204), (300, 198), (300, 203), (300, 197)])
    scene.walk(down(300, 195, 140))
    assert scene.events == []

    scene = Scene(ROAD_LINE)
    scene.walk(down(300, 140, 195))
    for _ in range(4):
        scene.walk([(300, 198), (300, 203), (300, 197)])
    scene.walk(down(300, 205, 260))  # now it really goes
    for _ in range(4):  # and flickers back over the line on its way: no "out"
        scene.walk([(300, 197), (300, 203)])
    scene.walk(down(300, 205, 300))
    assert scene.kinds() == [("cross", "in", "road", 1)]


def test_an_object_lingering_on_the_line_is_counted_only_after_k_frames_beyond_it():
    scene = Scene(ROAD_LINE)
    scene.walk(down(300, 150, 196, 2))
    pattern = [(300, 199), (300, 201), (300, 202), (300, 199), (300, 201), (300, 199), (300, 200)]
    for _ in range(6):  # 42 frames standing on it; y=200 exactly is on the line: no side at all
        scene.walk(pattern)
    assert scene.events == []
    seq_before = scene.seq
    scene.walk([(300, 204)] * 5)
    assert scene.kinds() == [("cross", "in", "road", 1)]
    assert scene.events[0].seq == seq_before + 2  # its 3rd frame on the other side


def test_two_objects_crossing_in_opposite_directions():
    scene = Scene(ROAD_LINE)
    for (x_a, y_a), (x_b, y_b) in zip(down(150, 120, 300), down(450, 300, 120)):
        scene.step(feet(x_a, y_a, PERSON), feet(x_b, y_b, CAR, w=60, h=50))
    assert sorted(scene.kinds()) == [("cross", "in", "road", 1), ("cross", "out", "road", 2)]
    assert {e.label: e.direction for e in scene.events} == {"person": "in", "car": "out"}
    summary = scene.zones.summary()["lines"]["road"]
    assert (summary["in"], summary["out"]) == (1, 1)
    assert summary["classes"] == {"person": {"in": 1, "out": 0}, "car": {"in": 0, "out": 1}}
    assert scene.zones.count("road", cls="car") == 1 and scene.zones.count("road", "in", "car") == 0


def test_an_id_switch_after_the_crossing_does_not_count_it_again():
    scene = Scene(ROAD_LINE)
    scene.walk(down(300, 120, 240))  # crossed and counted as track 1
    # the box jumps sideways (no overlap with the prediction): the tracker starts a new track
    scene.walk(down(380, 245, 400))
    assert len(scene.ids) == 2, scene.ids
    assert scene.kinds() == [("cross", "in", "road", 1)]


def test_an_id_switch_mid_crossing_never_double_counts():
    """Track 1 is one frame past the line when its box jumps: track 1 coasts on (its prediction
    moves on across the line, but coasting tracks are not judged), track 2 is born below the line
    (where a track is first seen is not an incident). Never two counts for one object; here none,
    since no single identity was seen on both sides."""
    scene = Scene(ROAD_LINE)
    scene.walk(down(300, 120, 205))
    scene.walk(down(380, 210, 400))
    assert len(scene.ids) == 2, scene.ids
    assert len(scene.events) <= 1
    assert scene.events == []


def test_a_detection_missing_while_it_crosses_keeps_its_id_and_counts_once():
    scene = Scene(ROAD_LINE)
    points = down(300, 120, 320)
    for i, (x, y) in enumerate(points):
        if 190 <= y <= 215:
            scene.step()  # occluded over the line for 6 frames; the track coasts
        else:
            scene.step(feet(x, y))
    assert scene.ids == {1}
    assert scene.kinds() == [("cross", "in", "road", 1)]
    assert scene.events[0].y == 230.0  # third frame seen below the line


def test_an_object_first_detected_just_before_the_line_is_counted():
    """Its first frames are tentative; they still establish its side, so the crossing counts."""
    scene = Scene(ROAD_LINE)
    scene.walk([(300, 185), (300, 190), (300, 195), (300, 205), (300, 210), (300, 215), (300, 220)])
    assert scene.kinds() == [("cross", "in", "road", 1)]
    assert scene.events[0].seq == 5


def test_a_crossing_made_while_still_tentative_is_not_counted():
    scene = Scene({"min_frames": 2, **ROAD_LINE}, confirm_frames=8)
    scene.walk(down(300, 190, 230))  # 2 frames above, then below; confirmed on its 8th frame
    assert scene.tracker.next_id == 2  # it was confirmed...
    assert scene.events == []  # ...after crossing: an unconfirmed track counts nothing


def test_a_crossing_beyond_the_ends_of_the_segment_is_not_counted():
    scene = Scene({"lines": [{"name": "gate", "points": [[100, 200], [300, 200]]}]})
    scene.walk(down(500, 120, 300))  # crosses the line's extension, not the gate
    assert scene.events == []
    scene = Scene({"lines": [{"name": "gate", "points": [[100, 200], [300, 200]]}]})
    scene.walk(down(250, 120, 300))
    assert scene.kinds() == [("cross", "in", "gate", 1)]


def test_unconfirmed_tracks_sharing_the_area_are_never_counted():
    """Boxes that never survive confirm_frames: one-frame false positives hopping around the
    zone and over the line, and objects seen for 2 frames that jump over the line between them."""
    scene = Scene({**SQUARE, **ROAD_LINE})
    rng = np.random.default_rng(3)
    for f in range(200):
        rows = []
        for i in range(3):  # a different place each frame: never overlaps the last frame's boxes
            x = 220 + 60 * ((f + 2 * i) % 3) + rng.uniform(0, 5)
            y = 150 + 60 * ((f + i) % 3) + rng.uniform(0, 5) + (0 if f % 2 else 25)
            rows.append(feet(x, y, CAR, 0.9))
        if f % 5 == 0:
            rows.append(feet(500, 190))
        if f % 5 == 1:
            rows.append(feet(500, 215))  # two frames, one each side of the line, then gone
        scene.step(*rows)
        assert scene.zones.occupancy.tolist() == [0]
    assert scene.tracker.next_id == 1, "a test box got confirmed: the scene is wrong"
    assert scene.events == [] and int(scene.zones.counts.sum()) == 0


# ---- zones ------------------------------------------------------------------------------------

def test_entering_then_leaving_a_zone_is_two_events_and_edge_flicker_is_none():
    scene = Scene(SQUARE)
    scene.walk(down(300, 40, 150))  # into the square (top edge at y=100)
    assert scene.kinds() == [("enter", "in", "square", 1)]
    assert scene.zones.occupancy.tolist() == [1]
    scene.walk(down(300, 155, 295))
    for _ in range(5):  # lingering at the bottom edge, y=300
        scene.walk([(300, 298), (300, 303), (300, 304), (300, 297)])
    assert len(scene.events) == 1
    scene.walk(down(300, 300, 400))
    assert scene.kinds() == [("enter", "in", "square", 1), ("leave", "out", "square", 1)]
    assert scene.zones.occupancy.tolist() == [0]
    summary = scene.zones.summary()["zones"]["square"]
    assert (summary["entered"], summary["left"], summary["inside"]) == (1, 1, 0)
    scene.walk(down(300, 400, 200))  # back in: a second incident
    assert [e.kind for e in scene.events] == ["enter", "leave", "enter"]


def test_a_track_first_seen_inside_a_zone_does_not_enter_it():
    scene = Scene(SQUARE)
    scene.walk([(300, 200)] * 10)
    assert scene.events == [] and scene.zones.occupancy.tolist() == [1]
    scene.walk(down(300, 200, 400))
    assert scene.kinds() == [("leave", "out", "square", 1)]


def test_zones_count_only_their_classes():
    config = {"zones": [{"name": "door", "points": [[200, 100], [400, 100], [400, 300], [200, 300]],
                         "classes": ["person"]}],
              "lines": [{"name": "road", "points": [[0, 200], [640, 200]], "classes": [CAR]}]}
    scene = Scene(config)
    for y in range(40, 400, 5):
        scene.step(feet(260, y, CAR, w=60, h=40), feet(350, y, PERSON))
    assert sorted((e.kind, e.label) for e in scene.events) == [("cross", "car"), ("enter", "person"),
                                                              ("leave", "person")]


def test_normalized_coordinates_and_the_anchor_point():
    # y = 0.5 of a 640x480 frame is y = 240
    config = {"normalized": True, "lines": [
        {"name": "feet", "points": [[0, 0.5], [1, 0.5]]},
        {"name": "middle", "points": [[0, 0.5], [1, 0.5]], "anchor": "center"}]}
    scene = Scene(config)
    assert scene.zones.line_points[0].tolist() == [[0.0, 240.0], [640.0, 240.0]]
    # a box 80 px tall whose bottom goes from 200 to 270: its centre (bottom - 40) stays above 240
    scene.walk(down(300, 200, 270))
    assert [e.name for e in scene.events] == ["feet"]


def test_min_frames_per_region():
    config = {"min_frames": 1, "lines": [{"name": "fast", "points": [[0, 200], [640, 200]]},
                                         {"name": "slow", "points": [[0, 200], [640, 200]], "min_frames": 6}]}
    scene = Scene(config)
    scene.walk(down(300, 150, 260))
    assert {e.name: e.y for e in scene.events} == {"fast": 205.0, "slow": 230.0}


def test_nothing_happening_returns_the_shared_empty_tuple():
    scene = Scene({**SQUARE, **ROAD_LINE})
    results = [scene.step(feet(300, 150 + (f % 2))) for f in range(30)]
    assert all(r is results[0] for r in results) and results[0] == ()


def test_class_names_need_labels():
    with pytest.raises(EdgeError, match="class name 'person' needs a labels list"):
        Zones({"zones": [{"name": "a", "points": [[0, 0], [1, 0], [1, 1]], "classes": ["person"]}]}, (640, 480))
    zones = Zones({"zones": [{"name": "a", "points": [[0, 0], [1, 0], [1, 1]], "classes": [0]}]}, (640, 480))
    assert zones.names == ["a"]


# ---- memory -----------------------------------------------------------------------------------

MEMORY_CONFIG = {
    "normalized": True,
    "zones": [
        {"name": "left", "points": [[0, 0], [0.4, 0], [0.4, 1], [0, 1]]},
        {"name": "middle", "points": [[0.3, 0.2], [0.7, 0.1], [0.75, 0.6], [0.5, 0.9], [0.25, 0.6]],
         "classes": ["car"]},
        {"name": "corner", "points": [[0.7, 0.7], [1, 0.7], [1, 1]], "anchor": "center"},
    ],
    "lines": [
        {"name": "across", "points": [[0, 0.5], [1, 0.5]]},
        {"name": "down", "points": [[0.5, 0], [0.5, 1]], "classes": ["person"], "min_frames": 2},
    ],
}


def test_tracker_and_zones_steady_state_has_no_net_growth_and_a_small_transient():
    scene = synthetic_scene()
    tracker = Tracker()
    zones = Zones(MEMORY_CONFIG, (960, 540), LABELS)
    det = Detections(100, LABELS)
    zone_worst = [0]

    def step(f: int, timed: bool) -> int:
        load_frame(det, scene, f)
        if not timed:
            zones.update(tracker.update(det), f, f / 30.0)
            return 0
        level = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        tracks = tracker.update(det)
        zone_level, tracker_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        events = zones.update(tracks, f, f / 30.0)
        zone_peak = tracemalloc.get_traced_memory()[1]
        if not events:  # frames with events allocate the events themselves
            zone_worst[0] = max(zone_worst[0], zone_peak - zone_level)
        del events
        return max(tracker_peak, zone_peak) - level

    growth, worst, median = measure(step, 2000)
    print(f"\ntracker + zones (3 zones, 2 lines): 2,000 frames, net growth {growth} B after warm-up, "
          f"transient per frame median {median} B, worst {worst} B (frames with events included); "
          f"zones alone on a frame without events, worst {zone_worst[0]} B; "
          f"{zones.total_events} events")
    assert zones.total_events > 50  # objects bounced across lines and through zones
    assert growth < 1000, f"net heap growth {growth} B over 1,800 frames"
    assert zone_worst[0] < 4 * 1024, f"zones transient {zone_worst[0]} B on a frame without events"
    assert worst < 16 * 1024, f"transient peak {worst} B per frame"


# ---- config -----------------------------------------------------------------------------------

GOOD = {"zones": [{"name": "lot", "points": [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]], "classes": ["car", 0]}],
        "lines": [{"name": "gate", "points": [[0.0, 0.5], [1.0, 0.5]]}], "normalized": True}


def test_a_json_config_loads_and_resolves_class_names(tmp_path):
    path = tmp_path / "zones.json"
    path.write_text(json.dumps(GOOD))
    config = load_config(path, LABELS)
    assert [spec.name for spec in config.regions] == ["lot", "gate"]
    assert config.zones[0].classes == (PERSON, CAR) and config.zones[0].normalized
    assert config.lines[0].anchor == "bottom_center" and config.lines[0].min_frames == 3
    zones = Zones(config, (960, 540), LABELS)
    assert zones.zone_points[0].tolist() == [[96.0, 54.0], [480.0, 54.0], [480.0, 270.0]]


def _with(**changes) -> dict:
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        target, _, field = key.partition("__")
        if not field:
            data[target] = value
        else:
            kind, index = target.rsplit("_", 1)
            data[kind][int(index)][field] = value
    return data


@pytest.mark.parametrize("data, message", [
    (_with(polygons=[]), "top level: unknown key 'polygons'"),
    (_with(zones_0__colour="red"), "zones[0] ('lot'): unknown key 'colour'"),
    (_with(zones_0__points=[[0, 0], [1, 1]]), "zones[0] ('lot').points: a zone polygon needs at least 3 points, got 2"),
    (_with(lines_0__points=[[0, 0], [1, 1], [0, 1]]), "lines[0] ('gate').points: a line needs exactly 2 points, got 3"),
    (_with(lines_0__points=[[0, float("nan")], [1, 1]]), "lines[0] ('gate').points[0].y: nan is not a finite number"),
    (_with(lines_0__points=[[0, 0], [1.5, 1]]), "lines[0] ('gate').points[1].x: 1.5 is outside 0..1"),
    (_with(zones_0__classes=["car", "unicorn"]), "zones[0] ('lot').classes: unknown class name 'unicorn'"),
    (_with(zones_0__classes=[7]), "class id 7 is not in the labels"),
    (_with(min_frames=0), "min_frames: 0 must be at least 1 frame"),
    (_with(lines_0__min_frames="3"), "lines[0] ('gate').min_frames: expected a whole number"),
    (_with(lines_0__name="lot"), "lines[0]: duplicate name 'lot' (already used by zones[0])"),
    (_with(zones_0__points=[[0, 0], [0.5, 0.5], [1, 1]]), "the polygon has zero area"),
    (_with(lines_0__points=[[0.5, 0.5], [0.5, 0.5]]), "a line needs two distinct points"),
    (_with(lines_0__anchor="feet"), "lines[0] ('gate').anchor: unknown anchor 'feet'"),
    (_with(zones_0__name=""), "zones[0].name: expected a non-empty string"),
    (_with(zones=[], lines=[]), "no zones or lines defined"),
    (_with(lines={"name": "gate"}), "lines: expected a list of lines, got dict"),
    (_with(zones_0__points=[[0, 0], [1, "0"], [1, 1]]), "points[1].y: expected a number, got '0'"),
    (_with(normalized="yes"), "normalized: expected true or false"),
    (_with(zones_0__points=[[0.5 + 0.4 * np.cos(a), 0.5 + 0.4 * np.sin(a)] for a in np.linspace(0, 6, 40)]),
     "40 points, more than the 32 a zone may have"),
    ([GOOD], "expected a mapping with 'zones' and/or 'lines', got list"),
])
def test_bad_configs_name_the_file_and_the_key(tmp_path, data, message):
    path = tmp_path / "zones.json"
    path.write_text(json.dumps(data))  # NaN is written as the NaN literal, which json accepts
    with pytest.raises(EdgeError) as info:
        load_config(path, LABELS)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert message in text


def test_bad_files(tmp_path):
    path = tmp_path / "zones.json"
    with pytest.raises(EdgeError, match="zones config not found"):
        load_config(path)
    path.write_text('{"lines": [{"name": "a", "points": [[0, 0], [1, 1]],}]}')
    with pytest.raises(EdgeError, match=r"zones.json: not valid JSON: .* at line 1 column"):
        load_config(path)
    path.write_text('{"lines": [], "lines": []}')
    with pytest.raises(EdgeError, match="key 'lines' appears twice"):
        load_config(path)
    path.write_text('{"lines": [{"name": "a", "points": [[0, Infinity], [1, 1]]}]}')
    with pytest.raises(EdgeError, match=r"points\[0\]\.y: inf is not a finite number"):
        load_config(path)
    with pytest.raises(EdgeError, match="must be a .json file"):
        load_config(tmp_path / "zones.txt")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(EdgeError, match="not a regular file"):
        load_config(folder)


def test_yaml_configs_need_pyyaml(tmp_path):
    path = tmp_path / "zones.yaml"
    path.write_text("lines:\n  - name: gate\n    points: [[0, 200], [640, 200]]\n")
    if yaml_available():
        assert load_config(path).lines[0].points == ((0.0, 200.0), (640.0, 200.0))
    else:
        with pytest.raises(EdgeError, match="zones.yaml: YAML zones configs need PyYAML, which is not installed"):
            load_config(path)


def test_parse_config_without_labels_keeps_names_for_later():
    config = parse_config(GOOD, "inline")
    assert config.zones[0].classes == ("car", 0)
    assert config.source == "inline" and config.lines[0].points == ((0.0, 0.5), (1.0, 0.5))
