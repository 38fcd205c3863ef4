"""Malformed inputs: datasets (COCO, VOC), training and calibration images, labels files, model
sidecars and corrupt models. Each is skipped and named (one warning line) or one EdgeError line,
never a traceback. The bad files are made here, in tmp_path. Only the last test needs TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.data import load_coco, load_dataset, load_voc
from edge.contract.labels import MAX_LABEL_ID, load_labels, parse_labels
from edge.contract.modelinfo import ModelInfo, read_sidecar
from edge.contract.tflite_file import read_tflite
from edge.errors import EdgeError


def _image(path: Path, width=100, height=80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return path


def _bomb_png(path: Path, side: int = 100_000) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.strip() == message
    return message


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------- COCO


def _coco(tmp_path: Path, images=None, annotations=None, categories=None, **extra) -> Path:
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    data = {
        "images": images if images is not None else [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}],
        "categories": categories if categories is not None else [{"id": 1, "name": "dog"}],
        "annotations": annotations if annotations is not None else [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}],
        **extra,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("value, shown", [(None, "null"), (5, "int"), ("x", "str"), ({"a": 1}, "dict")])
def test_coco_annotations_not_a_list_is_one_line(tmp_path, value, shown):
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(EdgeError) as caught:
        load_coco(path, tmp_path / "images")
    message = _one_line(caught)
    assert message.startswith(f"{path}: 'annotations' must be a list") and shown in message


def test_coco_without_annotations_is_a_set_of_negatives(tmp_path):
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))
    ds = load_coco(path, tmp_path / "images")
    assert len(ds.samples) == 2 and all(len(s.boxes) == 0 for s in ds.samples)


def test_coco_bbox_string_is_not_a_box(tmp_path, caplog):
    path = _coco(tmp_path, annotations=[{"id": 10, "image_id": 1, "category_id": 1, "bbox": "1234"}])
    ds = load_coco(path, tmp_path / "images")
    assert [s.image_path.name for s in ds.samples] == ["b.jpg"]  # a.jpg's only object is unusable
    (file, reason), = ds.skipped
    assert file.endswith("a.jpg") and "annotation #0 (id 10)" in reason and "instances.json" in reason
    assert "bbox must be a list" in reason
    assert _warnings(caplog) == [f"skipped {file}: {reason}"]


@pytest.mark.parametrize("bbox, why", [
    ([1, 2, 3], "must be a list"),
    ([1, 2, 3, 4, 5], "must be a list"),
    ([1, 2, "3", 4], "not a number"),
    ([1, 2, True, 4], "not a number"),
    ([1, 2, None, 4], "not a number"),
    ([1, 2, float("inf"), 4], "not finite"),
    ([1, 2, float("nan"), 4], "not finite"),
    ([1, 2, 0, 4], "no positive width"),
    ([1, 2, 5, -4], "no positive width"),
    ({"x": 1}, "must be a list"),
    (None, "must be a list"),
])
def test_coco_bbox_must_be_four_finite_numbers_with_positive_size(tmp_path, bbox, why):
    path = _coco(tmp_path, annotations=[{"id": 10, "image_id": 1, "category_id": 1, "bbox": bbox}])
    ds = load_coco(path, tmp_path / "images")
    assert [s.image_path.name for s in ds.samples] == ["b.jpg"]
    assert why in ds.skipped[0][1]


def test_coco_infinite_ids_and_sizes_from_1e999(tmp_path, caplog):
    text = json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": "W", "height": 80},
                   {"id": "ID", "file_name": "b.jpg", "width": 100, "height": 80},
                   {"id": 3, "file_name": "b.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [{"id": 10, "image_id": "IMG", "category_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 11, "image_id": 3, "category_id": "CAT", "bbox": [1, 1, 5, 5]}],
    })
    for key in ("W", "ID", "IMG", "CAT"):
        text = text.replace(f'"{key}"', "1e999")  # json.loads reads it as float inf
    path = tmp_path / "instances.json"
    path.write_text(text)
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    with pytest.raises(EdgeError) as caught:  # nothing usable is left
        load_coco(path, tmp_path / "images")
    assert "no usable images" in _one_line(caught)
    warnings = _warnings(caplog)
    assert len(warnings) == 4
    assert any("image #0" in w and "width inf is not a whole number" in w for w in warnings)
    assert any("image #1" in w and "id must be an integer, not inf" in w for w in warnings)
    assert any("annotation #0 (id 10)" in w and "image_id must be an integer, not inf" in w for w in warnings)
    assert any("annotation #1 (id 11)" in w and "category_id must be an integer" in w for w in warnings)
    assert all(w.startswith("skipped ") for w in warnings)


def test_coco_image_id_as_a_list_is_skipped_and_named(tmp_path, caplog):
    path = _coco(tmp_path, annotations=[
        {"id": 10, "image_id": [1], "category_id": 1, "bbox": [1, 1, 5, 5]},  # unhashable: crashed before
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 12, "image_id": True, "category_id": 1, "bbox": [1, 1, 5, 5]},
        "not an object",
    ])
    ds = load_coco(path, tmp_path / "images")
    assert [s.image_path.name for s in ds.samples] == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(ds.samples[0].boxes, [[10, 10, 30, 30]])
    reasons = [r for _, r in ds.skipped]
    assert reasons == ["annotation #0 (id 10): image_id must be an integer, not [1]",
                       "annotation #2 (id 12): image_id must be an integer, not True",
                       "annotation #3: is str, not an object"]
    assert len(_warnings(caplog)) == 3 and all(str(path) in w for w in _warnings(caplog))


@pytest.mark.parametrize("image, why", [
    ({"id": 1, "file_name": "a.jpg", "width": 0, "height": 80}, "width 0 is not a whole number"),
    ({"id": 1, "file_name": "a.jpg", "width": -100, "height": 80}, "width -100"),
    ({"id": 1, "file_name": "a.jpg", "width": 100.5, "height": 80}, "width 100.5"),
    ({"id": 1, "file_name": "a.jpg", "width": 100, "height": float("nan")}, "height nan"),
    ({"id": 1, "file_name": "a.jpg", "width": 100, "height": 10 ** 30}, "height 1000000000000000000000000000000"),
    ({"id": 1, "file_name": "a.jpg", "width": True, "height": 80}, "width must be a number"),
    ({"id": 1.0, "file_name": "a.jpg", "width": 100, "height": 80}, "id must be an integer"),
    ({"id": 1, "file_name": ["a.jpg"], "width": 100, "height": 80}, "file_name must be a non-empty string"),
    ({"id": 1, "width": 100, "height": 80}, "file_name must be a non-empty string, not null"),
    ([1, 2], "is list, not an object"),
])
def test_coco_image_entries_are_checked(tmp_path, image, why):
    path = _coco(tmp_path, images=[image, {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}])
    ds = load_coco(path, tmp_path / "images")
    assert [s.image_path.name for s in ds.samples] == ["b.jpg"]
    (file, reason), = ds.skipped
    assert file == str(path) and reason.startswith("image #0") and why in reason, reason


def test_coco_whole_file_problems_are_one_line(tmp_path):
    path = tmp_path / "x.json"
    cases = [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"images": [], "categories": [{"id": 1, "name": "a"}], "annotations": ['
         + b"[" * 50_000 + b"]" * 50_000 + b"]}", "nested too deeply"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"images": [{"id": ' + b"9" * 5000 + b'}], "categories": []}', "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b'{"images": 3, "categories": []}', "not a COCO detection file"),
        (json.dumps({"images": [], "categories": [{"id": True, "name": "a"}]}).encode(),
         "category #0: id must be an integer"),
        (json.dumps({"images": [], "categories": [{"id": 1, "name": ""}]}).encode(), "name must be a non-empty string"),
        (json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}).encode(),
         "category id 1 is used by more than one"),
        (json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}).encode(),
         "category name 'a' is used by more than one"),
        (json.dumps({"images": [], "categories": ["dog"]}).encode(), "is str, not an object"),
        (json.dumps({"images": [], "categories": []}).encode(), "no categories"),
    ]
    for data, expected in cases:
        path.write_bytes(data)
        with pytest.raises(EdgeError) as caught:
            load_coco(path, tmp_path)
        message = _one_line(caught)
        assert message.startswith(f"{path}: ") and expected in message, message
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(EdgeError, match="not a regular file"):  # a FIFO is never opened
        load_coco(path, tmp_path)
    with pytest.raises(EdgeError, match="not a regular file"):
        load_dataset(path, format="coco")


def test_coco_image_name_too_long_for_the_file_system_is_skipped(tmp_path):
    path = _coco(tmp_path, images=[{"id": 1, "file_name": "x" * 5000 + ".jpg", "width": 100, "height": 80},
                                   {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}])
    ds = load_coco(path, tmp_path / "images")
    assert len(ds.samples) == 1 and ds.skipped[0][1] == "image file not found"


# ---------------------------------------------------------------- VOC


def _voc(root: Path, name: str, width="100", height="80", objects=(("dog", ("10", "10", "50", "50")),),
         size=True) -> None:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    _image(root / "JPEGImages" / f"{name}.jpg")
    objs = ""
    for label, box in objects:
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box) if v is not None)
        objs += f"<object>{f'<name>{label}</name>' if label else ''}<bndbox>{coords}</bndbox></object>"
    size_xml = f"<size><width>{width}</width><height>{height}</height></size>" if size else ""
    (root / "Annotations" / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.jpg</filename>{size_xml}{objs}</annotation>")


def test_voc_bad_values_are_skipped_and_named(tmp_path, caplog):
    root = tmp_path / "voc"
    _voc(root, "good")
    bad = {
        "inf_width": dict(width="inf"),
        "huge_width": dict(width="1e999"),
        "nan_height": dict(height="nan"),
        "negative_height": dict(height="-80"),
        "fraction_width": dict(width="99.5"),
        "word_width": dict(width="wide"),
        "no_size": dict(size=False),
        "empty_width": dict(width=""),
        "negative_box": dict(objects=[("dog", ("-500", "10", "50", "50"))]),
        "nan_box": dict(objects=[("dog", ("nan", "10", "50", "50"))]),
        "inf_box": dict(objects=[("dog", ("10", "10", "inf", "50"))]),
        "missing_coordinate": dict(objects=[("dog", ("10", "10", None, "50"))]),
        "missing_name": dict(objects=[(None, ("10", "10", "50", "50"))]),
        "word_box": dict(objects=[("dog", ("10", "ten", "50", "50"))]),
    }
    for name, kwargs in bad.items():
        _voc(root, name, **kwargs)
    os.mkfifo(root / "Annotations" / "pipe.xml")  # must not block the reader
    (root / "Annotations" / "encoding.xml").write_text('<?xml version="1.0" encoding="no-such-codec"?><annotation/>')
    ds = load_voc(root)
    assert [s.image_path.name for s in ds.samples] == ["good.jpg"]
    reasons = {Path(f).stem: r for f, r in ds.skipped}
    assert set(reasons) == set(bad) | {"pipe", "encoding"}
    assert "<size>/<width> 'inf' is not a whole number" in reasons["inf_width"]
    assert "'1e999'" in reasons["huge_width"] and "'nan'" in reasons["nan_height"]
    assert "'-80'" in reasons["negative_height"] and "'99.5'" in reasons["fraction_width"]
    assert "not a number" in reasons["word_width"] and "missing <size>" in reasons["no_size"]
    assert "missing <size>/<width>" in reasons["empty_width"]
    assert "object #1 'dog'" in reasons["negative_box"] and "outside" in reasons["negative_box"]
    assert "<xmin> is 'nan', not a finite number" in reasons["nan_box"]
    assert "<xmax> is 'inf'" in reasons["inf_box"]
    assert "<xmax> is missing" in reasons["missing_coordinate"]
    assert "lacks <name>" in reasons["missing_name"] and "<ymin> is missing or not a number" in reasons["word_box"]
    assert reasons["pipe"] == "not a regular file" and "not valid XML" in reasons["encoding"]
    warnings = _warnings(caplog)
    assert len(warnings) == len(reasons) and all("\n" not in w for w in warnings)
    assert all(any(f"{stem}.xml" in w for w in warnings) for stem in reasons)


def test_voc_still_refuses_entity_bombs_through_defusedxml(tmp_path):
    from convert.data import voc

    assert "defusedxml" in voc._defused()[0].__name__
    (tmp_path / "a.xml").write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>')
    with pytest.raises(EdgeError, match="XML bomb"):
        load_voc(tmp_path)


def test_classes_given_twice_is_one_line(tmp_path):
    _voc(tmp_path, "a")
    with pytest.raises(EdgeError, match="--classes: dog is given twice"):
        load_dataset(tmp_path, labels=["dog", "dog"])


# ---------------------------------------------------------------- training and calibration images


def _pipeline_for(tmp_path: Path):
    from convert.config import SSDConfig
    from convert.pipeline import InputPipeline

    root = tmp_path / "voc"
    for name in ("good", "bomb", "truncated", "raising"):
        _voc(root, name)
    _bomb_png(root / "JPEGImages" / "bomb.jpg")  # a PNG named .jpg: the header decides
    data = (root / "JPEGImages" / "truncated.jpg").read_bytes()
    (root / "JPEGImages" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    dataset = load_voc(root)
    config = SSDConfig.create(dataset.labels, input_size=96, width=0.35)
    return InputPipeline(dataset, config, augment=True), dataset


def test_pipeline_skips_and_names_decoder_errors_and_absurd_sizes(tmp_path, monkeypatch, caplog):
    import convert.pipeline as pipeline_module
    import edge.images

    pipeline, dataset = _pipeline_for(tmp_path)
    real_imread = cv2.imread

    def imread(path, *args):  # what OpenCV 5 does on some images: raise, not return None
        if "raising" in str(path):
            raise cv2.error("OpenCV(5.0.0) loadsave.cpp: error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS")
        return real_imread(path, *args)

    monkeypatch.setattr(edge.images.cv2, "imread", imread)
    assert pipeline_module.read_image is edge.images.read_image
    oks = []
    for index, sample in enumerate(dataset.samples):
        image, box_t, cls_t, ok, _ = pipeline._load(np.int64(index), np.int64(index))
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        oks.append((sample.image_path.stem, bool(ok)))
    assert dict(oks) == {"good": True, "bomb": False, "truncated": False, "raising": False}
    skipped = {Path(f).stem: r for f, r in pipeline.skipped}
    assert set(skipped) == {"bomb", "truncated", "raising"}
    assert "100000x100000" in skipped["bomb"] and "limit" in skipped["bomb"]
    assert "unreadable" in skipped["truncated"] and "truncated JPEG" in skipped["truncated"]
    assert "unreadable" in skipped["raising"] and "Assertion failed" in skipped["raising"]
    warnings = _warnings(caplog)
    assert len(warnings) == 3 and all(w.startswith("skipped ") and "\n" not in w for w in warnings)
    pipeline._load(np.int64(1), np.int64(0))  # the same bad file again: named once
    assert len(_warnings(caplog)) == 3


def test_calibration_skips_bad_images_and_names_them(tmp_path, caplog):
    from convert.quantize import list_images, load_calibration_frames

    _image(tmp_path / "a.png", 40, 30)
    _bomb_png(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    os.mkfifo(tmp_path / "d.jpg")
    paths = list_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.png", "c.jpg"]  # the FIFO is not an image file
    frames = load_calibration_frames(paths, 16, 16)
    assert len(frames) == 1 and frames[0].shape == (1, 16, 16, 3)
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and "b.png" in warnings[0] and "c.jpg" in warnings[1]
    with pytest.raises(EdgeError) as caught:
        load_calibration_frames(paths[1:], 16, 16)
    assert "none of the 2 images could be read" in _one_line(caught) and "b.png" in str(caught.value)
    with pytest.raises(EdgeError, match="--calib .*: no such directory"):
        list_images(tmp_path / "missing")


def test_quantize_has_no_image_reader_of_its_own():
    import convert.quantize as quantize
    import edge.images

    assert quantize.IMAGE_EXTENSIONS is edge.images.IMAGE_EXTENSIONS
    source = Path(quantize.__file__).read_text()
    assert "cv2.imread" not in source and "IMAGE_EXTENSIONS = " not in source


# ---------------------------------------------------------------- labels files


def test_labels_with_a_huge_id_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("0 person\n1 bicycle\n999999999 toaster\n")
    with pytest.raises(EdgeError) as caught:
        load_labels(path)
    message = _one_line(caught)
    assert message.startswith(f"{path}: line 3: class id 999999999 is over {MAX_LABEL_ID}")
    path.write_text("0 a\n" + "9" * 5000 + " b\n")  # longer than Python's int() digit limit
    with pytest.raises(EdgeError, match="line 2: class id 999999999... is over"):
        load_labels(path)
    assert len(parse_labels(f"0 a\n{MAX_LABEL_ID} b\n")) == MAX_LABEL_ID + 1
    assert parse_labels("0 person\n\n2 car\n") == ["person", "n/a", "car"]


def test_labels_file_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(EdgeError, match="not a regular file"):
        load_labels(tmp_path / "fifo.txt")
    with pytest.raises(EdgeError, match="not a regular file"):
        load_labels(tmp_path)


# ---------------------------------------------------------------- model sidecars and metadata


ANCHORS = {"feature_map_sizes": [[10, 10], [5, 5]], "input_size": [160, 160]}


@pytest.mark.parametrize("data, key", [
    ({"normalization": {"mean": 0, "std": 0}}, "normalization.std must be a positive number"),
    ({"normalization": {"mean": float("nan"), "std": 1}}, "normalization.mean must be a finite number"),
    ({"normalization": {"std": float("inf")}}, "normalization.std must be a finite number"),
    ({"normalization": {"std": "127.5"}}, "normalization.std must be a number"),
    ({"normalization": {"scale": 1}}, "normalization.scale is not a known key"),
    ({"normalization": [1, 2]}, "normalization must be an object"),
    ({"max_detections": -1}, "max_detections must be within 1..10000"),
    ({"max_detections": 10_000_000}, "max_detections must be within 1..10000"),
    ({"max_detections": float("inf")}, "max_detections must be a whole number"),
    ({"max_detections": "100"}, "max_detections must be a whole number"),
    ({"nms_iou_threshold": 2}, "nms_iou_threshold must be within 0..1"),
    ({"head": "yolo"}, "head must be 'postprocess' or 'raw', not 'yolo'"),
    ({"resize": "crop"}, "resize must be 'stretch' or 'letterbox', not 'crop'"),
    ({"color": "RGBA"}, "color must be 'RGB' or 'BGR'"),
    ({"color": 3}, "color must be 'RGB' or 'BGR', not 3"),
    ({"score_conversion": "tanh"}, "score_conversion must be"),
    ({"labels": "cat,dog"}, "labels must be a list of class names"),
    ({"labels": [{"a": 1}]}, "labels[0] must be a string"),
    ({"has_background": "no"}, "has_background must be true or false"),
    ({"box_coder": {"y": 0}}, "box_coder.y must be a positive number"),
    ({"postprocess": 5}, "postprocess must be an object"),
    ({"anchors": {**ANCHORS, "feature_map_sizes": [[0, 10]]}}, "anchors.feature_map_sizes[0][0] must be within 1..1024"),
    ({"anchors": {**ANCHORS, "feature_map_sizes": [[10, 1e999]]}}, "anchors.feature_map_sizes[0][1] must be a whole number"),
    ({"anchors": {**ANCHORS, "feature_map_sizes": [[100000, 100000]]}}, "anchors.feature_map_sizes[0][0] must be within 1..1024"),
    ({"anchors": {**ANCHORS, "feature_map_sizes": [[1024, 1024]] * 3}}, "anchors describe 15728640 anchors, more than 200000"),
    ({"anchors": {**ANCHORS, "feature_map_sizes": []}}, "anchors.feature_map_sizes must be a non-empty list"),
    ({"anchors": {**ANCHORS, "feature_map_sizes": [[10]]}}, "anchors.feature_map_sizes[0] must be a pair"),
    ({"anchors": {**ANCHORS, "min_scale": 0}}, "anchors.min_scale must be a positive number"),
    ({"anchors": {**ANCHORS, "max_scale": 3}}, "anchors.max_scale must be at most 2"),
    ({"anchors": {**ANCHORS, "scales": [0.2, -1]}}, "anchors.scales[1] must be a positive number"),
    ({"anchors": {**ANCHORS, "scales": [0.2]}}, "anchors.scales must be a list of 2 scales"),
    ({"anchors": {**ANCHORS, "aspect_ratios": []}}, "anchors.aspect_ratios must be a non-empty list"),
    ({"anchors": {**ANCHORS, "aspect_ratios": [1, 0]}}, "anchors.aspect_ratios[1] must be a positive number"),
    ({"anchors": {**ANCHORS, "input_size": [0, 160]}}, "anchors.input_size[0] must be within"),
    ({"anchors": {**ANCHORS, "bogus": 1}}, "anchors.bogus is not a known key"),
    ({"anchors": [1, 2]}, "anchors must be an object"),
])
def test_sidecar_values_are_checked_on_read(tmp_path, data, key):
    sidecar = tmp_path / "model.json"
    sidecar.write_text(json.dumps({"labels": ["a"], **data}))
    with pytest.raises(EdgeError) as caught:
        read_sidecar(sidecar)
    message = _one_line(caught)
    assert message.startswith(f"{sidecar}: {key}"), message


def test_sane_sidecar_round_trips(tmp_path):
    from edge.contract.anchors import AnchorConfig

    info = ModelInfo(labels=["a", "b"], anchors=AnchorConfig.for_input(320), head="raw", max_detections=50,
                     provenance={"source": "test"})
    sidecar = tmp_path / "model.json"
    sidecar.write_text(info.to_json())
    again = read_sidecar(sidecar)
    assert again.to_dict() == info.to_dict()
    assert again.anchors.num_anchors == info.anchors.num_anchors
    assert ModelInfo.from_dict({}).to_dict() == ModelInfo().to_dict()  # every key has its default


def test_sidecar_file_problems_are_one_line(tmp_path):
    sidecar = tmp_path / "model.json"
    sidecar.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(EdgeError, match="nested too deeply"):
        read_sidecar(sidecar)
    sidecar.write_bytes(b"\xff\xfe{}")
    with pytest.raises(EdgeError, match="not valid JSON"):
        read_sidecar(sidecar)
    sidecar.unlink()
    os.mkfifo(sidecar)
    with pytest.raises(EdgeError, match="not a regular file"):
        read_sidecar(sidecar)
    with pytest.raises(EdgeError, match="metadata must be a JSON object"):
        ModelInfo.from_dict([1, 2], source="m.tflite (embedded metadata)")


# ---------------------------------------------------------------- corrupt models


def test_corrupt_model_with_a_valid_tfl3_header_is_one_line(tmp_path, ssd_model_path):
    model = tmp_path / "m.tflite"
    good = ssd_model_path.read_bytes()
    # Root table at 16 (vtable at 8: operator_codes in slot 6), whose one-element operator_codes vector
    # points 4 GB ahead: flatbuffers raised TypeError "bad number 4294967308 for type uint32".
    type_error = (struct.pack("<I", 16) + b"TFL3" + struct.pack("<HHHH", 8, 8, 0, 4)
                  + struct.pack("<iI", 8, 4) + struct.pack("<II", 1, 0xFFFFFFF0))
    model.write_bytes(type_error)
    with pytest.raises(EdgeError) as caught:
        read_tflite(model)
    assert _one_line(caught) == (f"{model}: corrupt TFLite flatbuffer (TypeError: bad number 4294967308 for "
                                 "type uint32); re-export or re-download the model")
    cases = [struct.pack("<I", 0xFFFFFFF0) + b"TFL3" + b"\x00" * 32,
             b"\x10\x00\x00\x00TFL3" + b"\xff" * 64,
             good[:64],
             good[:4096]]
    rng = np.random.default_rng(0)
    for _ in range(40):
        damaged = bytearray(good[:20000])
        for i in rng.integers(8, 2000, 12):
            damaged[i] = int(rng.integers(0, 256))
        cases.append(bytes(damaged))
    corrupt = 0
    for data in cases:
        model.write_bytes(data)
        try:
            read_tflite(model)
        except EdgeError as exc:
            message = str(exc)
            assert message.startswith(f"{model}: ") and "\n" not in message
            corrupt += 1
    assert corrupt >= 4
    os.unlink(model)
    os.mkfifo(model)
    with pytest.raises(EdgeError, match="not a regular file"):
        read_tflite(model)


# ---------------------------------------------------------------- the real tf.data pipeline


@pytest.mark.slow
def test_training_batches_go_on_past_bad_images(tmp_path, caplog):
    pipeline, dataset = _pipeline_for(tmp_path)
    batches = pipeline.training_dataset(batch_size=2, seed=0)
    for images, targets in batches.take(3):
        assert images.shape == (2, 96, 96, 3)
    skipped = {Path(f).stem for f, _ in pipeline.skipped}
    assert {"bomb", "truncated"} <= skipped and "good" not in skipped
