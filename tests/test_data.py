"""Dataset readers (VOC with defusedxml, COCO) and the synthetic shapes writer. No TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.data import Dataset, load_coco, load_dataset, load_voc
from convert.data.synth import MAX_SIZE_FRACTION, MIN_SIZE_FRACTION, write_synthetic_voc
from edge.cli import main as cli_main
from edge.errors import EdgeError
from edge.live.synthetic import SHAPE_CLASSES

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>
<object><name>&lol3;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""


def _voc_xml(filename, width, height, objects):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>")


def _image(path: Path, width=64, height=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))


@pytest.fixture()
def voc_dir(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    _image(root / "JPEGImages" / "good.jpg")
    (root / "Annotations" / "good.xml").write_text(
        _voc_xml("good.jpg", 64, 48, [("dog", (5, 6, 30, 40)), ("cat", (32, 2, 63, 47))]))
    _image(root / "JPEGImages" / "bomb.jpg")
    (root / "Annotations" / "bomb.xml").write_text(BOMB)
    (root / "Annotations" / "broken.xml").write_text("<annotation><filename>x.jpg</filename>")
    (root / "Annotations" / "noimage.xml").write_text(_voc_xml("missing.jpg", 64, 48, [("dog", (1, 1, 9, 9))]))
    _image(root / "JPEGImages" / "badbox.jpg")
    (root / "Annotations" / "badbox.xml").write_text(_voc_xml("badbox.jpg", 64, 48, [("dog", (30, 6, 10, 40))]))
    return root


def test_voc_reads_good_files_and_names_every_skipped_one(voc_dir):
    ds = load_voc(voc_dir)
    assert ds.labels == ["cat", "dog"]  # sorted: deterministic class ids
    assert len(ds.samples) == 1
    s = ds.samples[0]
    assert s.image_path.name == "good.jpg" and (s.width, s.height) == (64, 48)
    np.testing.assert_array_equal(s.boxes, [[5, 6, 30, 40], [32, 2, 63, 47]])
    np.testing.assert_array_equal(s.class_ids, [1, 0])
    assert s.boxes.dtype == np.float32 and s.class_ids.dtype == np.int32
    reasons = {Path(f).name: r for f, r in ds.skipped}
    assert set(reasons) == {"bomb.xml", "broken.xml", "noimage.xml", "badbox.xml"}
    assert "XML bomb" in reasons["bomb.xml"] and "refused" in reasons["bomb.xml"]
    assert "not valid XML" in reasons["broken.xml"]
    assert "not found" in reasons["noimage.xml"]
    assert "empty box" in reasons["badbox.xml"]


def test_voc_labels_fix_order_and_drop_other_classes(voc_dir):
    ds = load_voc(voc_dir, labels=["dog"])
    assert ds.labels == ["dog"]
    np.testing.assert_array_equal(ds.samples[0].class_ids, [0])
    np.testing.assert_array_equal(ds.samples[0].boxes, [[5, 6, 30, 40]])


def test_voc_with_only_bad_files_is_one_clear_error(tmp_path):
    (tmp_path / "a.xml").write_text(BOMB)
    with pytest.raises(EdgeError, match="no usable VOC samples.*XML bomb"):
        load_voc(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeError, match="no VOC annotations"):
        load_voc(empty)


def test_voc_accepts_xml_next_to_images(tmp_path):
    _image(tmp_path / "p.png", 40, 30)
    (tmp_path / "p.xml").write_text(_voc_xml("p.png", 40, 30, [("box", (0, 0, 41, 30))]))
    ds = load_dataset(tmp_path)  # auto-detected as VOC
    np.testing.assert_array_equal(ds.samples[0].boxes, [[0, 0, 40, 30]])  # off-by-one clipped


def test_coco_reader(tmp_path):
    images = tmp_path / "images"
    _image(images / "a.jpg", 100, 80)
    _image(images / "b.jpg", 100, 80)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 8, "file_name": "b.jpg", "width": 100, "height": 80},
                   {"id": 9, "file_name": "gone.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [50, 10, 20, 20]},
        ],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    ds = load_coco(ann, images)
    assert ds.labels == ["person", "dog"]  # ascending category id, dense class ids
    assert [s.image_path.name for s in ds.samples] == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(ds.samples[0].boxes, [[10, 20, 40, 60], [50, 10, 70, 30]])
    np.testing.assert_array_equal(ds.samples[0].class_ids, [1, 0])  # crowd dropped
    assert len(ds.samples[1].boxes) == 0  # image without objects kept as a negative
    assert [Path(f).name for f, _ in ds.skipped] == ["gone.jpg"]
    auto = load_dataset(tmp_path)  # folder with one json + images/
    assert auto.labels == ds.labels and len(auto.samples) == 2


def test_coco_bad_json_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(EdgeError, match="x.json: not valid JSON"):
        load_coco(bad, tmp_path)
    bad.write_text(json.dumps({"images": 3}))
    with pytest.raises(EdgeError, match="not a COCO detection file"):
        load_coco(bad, tmp_path)


def test_synthetic_set_is_deterministic_and_exact(tmp_path):
    a = write_synthetic_voc(tmp_path / "a", 12, size=200, seed=3)
    b = write_synthetic_voc(tmp_path / "b", 12, size=200, seed=3)
    c = write_synthetic_voc(tmp_path / "c", 12, size=200, seed=4)
    assert a.labels == list(SHAPE_CLASSES)
    for name in ("000000.jpg", "000011.jpg"):
        assert (tmp_path / "a/JPEGImages" / name).read_bytes() == (tmp_path / "b/JPEGImages" / name).read_bytes()
    assert (tmp_path / "a/Annotations/000003.xml").read_text() == (tmp_path / "b/Annotations/000003.xml").read_text()
    assert any((tmp_path / "a/JPEGImages" / f"{i:06d}.jpg").read_bytes() != (tmp_path / "c/JPEGImages" / f"{i:06d}.jpg").read_bytes()
               for i in range(12))
    counts = [len(s.boxes) for s in a.samples]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    sides = np.concatenate([np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]) for s in a.samples])
    assert sides.min() >= MIN_SIZE_FRACTION * 200 - 2 and sides.max() <= MAX_SIZE_FRACTION * 200 + 2
    assert sides.max() - sides.min() > 0.2 * 200  # sizes really vary
    assert len({int(c) for s in a.samples for c in s.class_ids}) == 3
    assert a.skipped == []


def test_synthetic_square_box_is_exact(tmp_path):
    ds = write_synthetic_voc(tmp_path, 30, classes=["square"], size=160, seed=0)
    sample = ds.samples[0]
    image = cv2.imread(str(sample.image_path)).astype(int)
    x0, y0, x1, y1 = sample.boxes[-1].astype(int)  # the last shape drawn is fully visible
    inner = image[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3)
    assert inner.std(axis=0).max() < 6  # one flat colour inside the box (JPEG noise only)


def test_synthetic_on_real_photos(tmp_path, images_dir):
    ds = write_synthetic_voc(tmp_path, 6, size=128, seed=0, backgrounds=images_dir)
    assert len(ds.samples) == 6


def test_split_is_deterministic():
    from convert.data import Sample

    ds = Dataset(["a"], [Sample(f"{i}.jpg", 10, 10, np.zeros((0, 4)), []) for i in range(20)])
    tr, va = ds.split(0.25, seed=1)
    tr2, va2 = ds.split(0.25, seed=1)
    assert len(va) == 5 and len(tr) == 15
    assert [s.image_path for s in va.samples] == [s.image_path for s in va2.samples]
    assert not {s.image_path for s in va.samples} & {s.image_path for s in tr.samples}


def test_cli_data_synth(tmp_path, capsys):
    assert cli_main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "3", "--size", "96",
                     "--classes", "circle,square"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "Annotations").glob("*.xml"))) == 3
    assert cli_main(["data", "synth", "--out", str(tmp_path / "e"), "--n", "3", "--classes", "hexagon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge: error: --classes hexagon")


# ---------------------------------------------------------------- the hard preset

def _tree_digest(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _pairs_iou(sample):
    from convert.data.synth import _iou

    boxes, ids = sample.boxes, sample.class_ids
    return [(_iou(boxes[i], boxes[j]), bool(ids[i] == ids[j]))
            for i in range(len(boxes)) for j in range(i + 1, len(boxes))]


@pytest.fixture(scope="module")
def hard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    return root, write_synthetic_voc(root / "a", 40, size=320, seed=7, preset="hard")


def test_hard_preset_is_deterministic(hard_set, tmp_path):
    root, _ = hard_set
    write_synthetic_voc(tmp_path / "same", 40, size=320, seed=7, preset="hard")
    write_synthetic_voc(tmp_path / "other", 40, size=320, seed=8, preset="hard")
    assert _tree_digest(root / "a") == _tree_digest(tmp_path / "same")
    assert _tree_digest(root / "a") != _tree_digest(tmp_path / "other")


def test_hard_preset_classes_sizes_and_counts(hard_set):
    from convert.data.synth import HARD_CLASSES, HARD_MAX_SIZE_FRACTION, HARD_MIN_SIZE_FRACTION, HARD_OBJECTS

    _, ds = hard_set
    assert len(HARD_CLASSES) == 8 and ds.labels == list(HARD_CLASSES) and ds.skipped == []
    assert (Path(ds.samples[0].image_path).parents[1] / "labels.txt").read_text().split() == list(HARD_CLASSES)
    assert len({int(c) for s in ds.samples for c in s.class_ids}) == 8  # every class drawn
    counts = [len(s.boxes) for s in ds.samples]
    assert min(counts) >= HARD_OBJECTS[0] and max(counts) <= HARD_OBJECTS[1] and max(counts) >= 8
    sides = np.concatenate([np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
                            for s in ds.samples]) / 320
    assert sides.min() >= HARD_MIN_SIZE_FRACTION - 2 / 320 and sides.max() <= HARD_MAX_SIZE_FRACTION + 2 / 320
    assert sides.min() <= 0.06  # small objects really occur ...
    assert np.median(sides) < MIN_SIZE_FRACTION * 2  # ... and are the common case, unlike the default


def test_hard_preset_overlaps_between_classes_only(hard_set):
    from convert.data.synth import HARD_MAX_OVERLAP_IOU, MAX_OVERLAP_IOU

    _, ds = hard_set
    pairs = [p for s in ds.samples for p in _pairs_iou(s)]
    other = [iou for iou, same in pairs if not same]
    same = [iou for iou, same in pairs if same]
    tolerance = 0.03  # boxes are rounded to whole pixels in the XML
    assert max(other) <= HARD_MAX_OVERLAP_IOU + tolerance
    assert sum(iou > MAX_OVERLAP_IOU for iou in other) >= 10  # beyond anything the default preset draws
    assert max(other) >= 0.3
    assert max(same) <= MAX_OVERLAP_IOU + tolerance


def test_hard_preset_has_unlabelled_clutter(tmp_path):
    """Outside every box, the image is far from a plain background: strokes and blobs are there."""
    from convert.data.synth import _background, render_hard_sample, HARD_CLASSES

    rough = []
    for seed in range(6):
        image, boxes, _ = render_hard_sample(np.random.default_rng(seed), 160, HARD_CLASSES)
        plain = _background(np.random.default_rng(seed), 160, [])  # the same first draws: the bare background
        outside = np.ones((160, 160), bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            outside[y0:y1, x0:x1] = False
        changed = np.abs(image.astype(int) - plain.astype(int)).max(axis=2) > 30
        rough.append(changed[outside].mean())
    assert min(rough) > 0.005 and np.mean(rough) > 0.02


def test_hard_preset_classes_subset_and_refusals(tmp_path):
    ds = write_synthetic_voc(tmp_path / "two", 6, classes=["diamond-red", "diamond-orange"], size=160, seed=1,
                             preset="hard")
    assert ds.labels == ["diamond-red", "diamond-orange"]
    with pytest.raises(EdgeError, match="--classes circle: synthetic shapes of --preset hard are circle-red"):
        write_synthetic_voc(tmp_path / "x", 2, classes=["circle"], preset="hard")
    with pytest.raises(EdgeError, match="--classes diamond-red: synthetic shapes are circle, square, triangle"):
        write_synthetic_voc(tmp_path / "y", 2, classes=["diamond-red"])
    with pytest.raises(EdgeError, match="--preset medium"):
        write_synthetic_voc(tmp_path / "z", 2, preset="medium")


def test_hard_preset_on_real_photos(tmp_path, images_dir):
    a = write_synthetic_voc(tmp_path / "a", 5, size=160, seed=2, preset="hard", backgrounds=images_dir)
    write_synthetic_voc(tmp_path / "b", 5, size=160, seed=2, preset="hard", backgrounds=images_dir)
    assert len(a.samples) == 5 and _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


# Annotations of write_synthetic_voc(DIR, 8, size=200, seed=0) as written before the hard preset existed.
# The boxes come from numpy's PCG64 stream and Python arithmetic only (no JPEG codec), so a change here
# means the default preset's draws changed, and with them every dataset and result made from it.
DEFAULT_SEED0_ANNOTATIONS_SHA256 = "e9c170446286ea19d1d8d38f0490312568c396c75574ee399ec94e7649ba6e36"


def test_default_preset_unchanged(tmp_path):
    import hashlib

    ds = write_synthetic_voc(tmp_path / "d", 8, size=200, seed=0)
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "d" / "Annotations").glob("*.xml")):
        digest.update(path.read_bytes())
    assert digest.hexdigest() == DEFAULT_SEED0_ANNOTATIONS_SHA256
    # The structure the hard preset changes: three classes, 1-4 large shapes, small overlaps only.
    big = write_synthetic_voc(tmp_path / "big", 60, size=200, seed=1)
    assert big.labels == list(SHAPE_CLASSES)
    assert max(len(s.boxes) for s in big.samples) <= 4
    sides = np.concatenate([s.boxes[:, 2] - s.boxes[:, 0] for s in big.samples])
    assert sides.min() >= MIN_SIZE_FRACTION * 200 - 2
    assert max(iou for s in big.samples for iou, _ in _pairs_iou(s)) <= 0.15 + 0.03
    assert ds.labels == list(SHAPE_CLASSES)


def test_cli_preset_default_is_the_absent_preset(tmp_path, capsys):
    base = ["data", "synth", "--n", "4", "--size", "128", "--seed", "5"]
    assert cli_main(base + ["--out", str(tmp_path / "absent")]) == 0
    assert cli_main(base + ["--out", str(tmp_path / "default"), "--preset", "default"]) == 0
    assert _tree_digest(tmp_path / "absent") == _tree_digest(tmp_path / "default")
    assert cli_main(base + ["--out", str(tmp_path / "hard"), "--preset", "hard"]) == 0
    out = capsys.readouterr().out
    assert "8 classes (circle-red, circle-orange," in out
    assert _tree_digest(tmp_path / "hard") != _tree_digest(tmp_path / "default")
    assert cli_main(base + ["--out", str(tmp_path / "bad"), "--preset", "hard", "--classes", "circle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge: error: --classes circle")


def test_cli_synth_help_names_the_presets(capsys):
    with pytest.raises(SystemExit):
        cli_main(["data", "synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset {default,hard}" in text
    for phrase in ("8 confusable classes", "3-10 objects", "5-30% of the side", "IoU 0.4", "unlabelled strokes"):
        assert phrase in text
