"""`edge detect` and `edge inspect` as a user runs them, and their bad-input errors."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

PROJECT = Path(__file__).resolve().parents[1]


def edge(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=cwd or PROJECT,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_detect_prints_and_writes_coco_results_and_annotated_images(ssd_model_path, coco_labels_path,
                                                                     images_dir, tmp_path):
    out = tmp_path / "out"
    proc = edge("detect", ssd_model_path, images_dir / "grace_hopper.bmp", images_dir / "pets.jpg",
                "--labels", coco_labels_path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "person" in proc.stdout and "tie" in proc.stdout and "dog" in proc.stdout
    results = json.loads((out / "detections.json").read_text())
    by_file = {}
    for r in results:
        by_file.setdefault(r["file_name"], []).append(r)
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and 0 <= r["score"] <= 1
    assert {r["label"] for r in by_file["grace_hopper.bmp"]} >= {"person", "tie"}
    assert [r["label"] for r in by_file["pets.jpg"]].count("dog") == 2
    dogs = [r for r in by_file["pets.jpg"] if r["label"] == "dog"]
    assert all(r["class_id"] == 17 and r["category_id"] == 18 for r in dogs), "COCO category ids (dog is 18)"
    annotated = cv2.imread(str(out / "grace_hopper.annotated.jpg"))
    assert annotated.shape == cv2.imread(str(images_dir / "grace_hopper.bmp")).shape
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "grace_hopper.annotated.jpg",
                                                     "pets.annotated.jpg"]


def test_detect_without_a_model_uses_the_bundled_demo(tmp_path):
    from edge.models import DEMO_MODEL
    from edge.live.synthetic import draw_shape

    if not DEMO_MODEL.exists():
        pytest.fail(f"bundled demo model {DEMO_MODEL} is missing")
    image = (cv2.GaussianBlur(cv2.randu(__import__("numpy").zeros((480, 640, 3), "uint8"), 0, 255), (0, 0), 3))
    draw_shape(image, "circle", 200, 200, 150, (40, 40, 230))
    draw_shape(image, "square", 470, 300, 140, (40, 200, 40))
    path = tmp_path / "shapes.png"
    cv2.imwrite(str(path), image)
    proc = edge("detect", path)
    assert proc.returncode == 0, proc.stderr
    assert "demo_ssd_int8.tflite" in proc.stdout
    assert "circle" in proc.stdout and "square" in proc.stdout


def test_inspect_reports_tensors_operators_labels_and_memory(ssd_model_path, coco_labels_path):
    proc = edge("inspect", ssd_model_path, "--labels", coco_labels_path, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["head"] == "TFLite_Detection_PostProcess"
    (image_input,) = report["inputs"]
    assert image_input["shape"] == [1, 300, 300, 3] and image_input["dtype"] == "uint8"
    assert image_input["quantization"] == {"scale": 0.0078125, "zero_point": 128}
    assert [o["shape"] for o in report["outputs"]] == [[1, 10, 4], [1, 10], [1, 10], [1]]
    assert "DEPTHWISE_CONV_2D" in report["operators"]
    assert len(report["labels"]) == 90
    assert report["runtime"].startswith("litert")
    # weights (~4 MB) plus activations: more than the file, less than 100 MB
    assert 4_000_000 < report["memory"]["tensor_bytes"] < 100_000_000


def test_inspect_shows_embedded_labels_and_anchors_of_the_demo_model():
    from edge.models import DEMO_MODEL

    proc = edge("inspect", DEMO_MODEL)
    assert proc.returncode == 0, proc.stderr
    assert "circle, square, triangle" in proc.stdout
    assert "anchors   ssd_anchor_generator" in proc.stdout


def test_missing_model(tmp_path):
    assert_one_line_error(edge("inspect", tmp_path / "nope.tflite"), "nope.tflite", "not found")


def test_file_that_is_not_a_tflite_model(tmp_path, images_dir):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert_one_line_error(edge("detect", fake, images_dir / "cat.bmp"), "model.tflite", "not a TFLite model")


def test_truncated_tflite_model(tmp_path, ssd_model_path, images_dir):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(ssd_model_path.read_bytes()[:200_000])
    assert_one_line_error(edge("detect", cut, images_dir / "cat.bmp"), "cut.tflite")


@pytest.mark.parametrize("content,needle", [(b"", "empty"), (b"\xff\xd8\xff\xe0 broken jpeg", "unreadable image")])
def test_empty_or_corrupt_image(tmp_path, ssd_model_path, content, needle):
    image = tmp_path / "photo.jpg"
    image.write_bytes(content)
    out = tmp_path / "out"
    proc = edge("detect", ssd_model_path, image, "--out", out)
    assert_one_line_error(proc, "photo.jpg", needle)
    assert not out.exists()  # nothing half-written


def test_missing_image(tmp_path, ssd_model_path):
    assert_one_line_error(edge("detect", ssd_model_path, tmp_path / "gone.png"), "gone.png", "not found")


def test_debug_shows_the_traceback(tmp_path):
    proc = edge("--debug", "inspect", tmp_path / "nope.tflite")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_an_image_classifier_is_not_a_detector(tmp_path, images_dir):
    """A real (tiny, untrained) TFLite image classifier: [1, 96, 96, 3] -> [1, 10] softmax."""
    from convert.tf import import_keras, import_tensorflow

    tf, keras = import_tensorflow(), import_keras()
    model = keras.Sequential([keras.layers.Input((96, 96, 3), batch_size=1),
                              keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    classifier = tmp_path / "classifier.tflite"
    classifier.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    assert_one_line_error(edge("detect", classifier, images_dir / "cat.bmp"), "classifier.tflite",
                          "not an SSD detector")
    inspect = edge("inspect", classifier)
    assert inspect.returncode == 0 and "not an SSD detector" in inspect.stdout


def test_labels_beside_the_model_are_found_and_short_files_warned(tmp_path, ssd_model_path, coco_labels_path, images_dir):
    model = tmp_path / "detect.tflite"
    model.write_bytes(ssd_model_path.read_bytes())
    proc = edge("detect", model, images_dir / "pets.jpg")
    assert "carries no labels" in proc.stdout and "0 labels" in proc.stdout
    # The Model Zoo's labelmap.txt: "???" (background) first, then COCO's 90 ids.
    (tmp_path / "labelmap.txt").write_text("???\n" + coco_labels_path.read_text())
    proc = edge("detect", model, images_dir / "pets.jpg")
    assert proc.returncode == 0 and f"90 labels (from {tmp_path / 'labelmap.txt'})" in proc.stdout
    assert "dog" in proc.stdout and "no labels" not in proc.stdout
    short = tmp_path / "short.txt"
    short.write_text("\n".join(coco_labels_path.read_text().splitlines()[:20]))
    proc = edge("detect", model, images_dir / "pets.jpg", "--labels", short)
    assert "has 20 labels but the model has 90 classes" in proc.stdout and "dog" in proc.stdout
