"""Shared fixtures: the real files in ../shared/fixtures (skipped, saying why, where absent), and the
tiny SSD trained once per session for every test that needs *a* trained model.

A fixture imported from another test module (``from test_export import trained_run``) is a second,
separate fixture to pytest, built again: shared ones live here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


def _require(path: Path) -> Path:
    if not path.exists():
        reason = f"real fixture {path} is absent (it lives in ../shared/fixtures beside the project)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI always has it")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(SHARED_FIXTURES)


@pytest.fixture(scope="session")
def ssd_model_path() -> Path:
    """Google's int8 SSD MobileNet v1 COCO (TFLite_Detection_PostProcess, 10 detections)."""
    return _require(SHARED_FIXTURES / "models" / "ssd_mobilenet_v1_coco_quant.tflite")


@pytest.fixture(scope="session")
def coco_labels_path() -> Path:
    return _require(SHARED_FIXTURES / "models" / "coco_labels.txt")


@pytest.fixture(scope="session")
def odapi_frozen_graph() -> Path:
    """Real TF OD API SSDLite MobileNetV2 person detector, TF1 frozen graph."""
    return _require(SHARED_FIXTURES / "odapi" / "ssdlite_mobilenet_v2_person_frozen.pb")


@pytest.fixture(scope="session")
def traffic_video() -> Path:
    return _require(SHARED_FIXTURES / "video" / "traffic_960x540.mp4")


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return _require(SHARED_FIXTURES / "images")


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, images_dir) -> Path:
    """scikit-image's public-domain photos (generated into tmp) plus the real fixture photos re-encoded
    into the same folder (the converter reads one folder). tests/test_odapi.py, test_onnx_export.py."""
    import cv2

    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("calib")
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"):
        image = getattr(skimage_data, name)()
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR))
    for path in images_dir.iterdir():
        image = cv2.imread(str(path))
        if image is not None:
            cv2.imwrite(str(folder / f"fixture_{path.stem}.png"), image)
    return folder


TRAIN_STEPS = 330


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(run_dir, train_dir, val_dir): a tiny SSD (MobileNetV2 0.35, 160 px, 3 shapes) trained ~1.5 min
    on synthetic shapes to a non-trivial mAP, once per session. For tests that need *a* trained model, not particular settings;
    tests/test_export.py, test_onnx_export.py."""
    from convert.config import SSDConfig
    from convert.data.synth import write_synthetic_voc
    from convert.train import train

    root = tmp_path_factory.mktemp("shapes")
    train_set = write_synthetic_voc(root / "train", 240, size=160, seed=1)
    write_synthetic_voc(root / "val", 80, size=160, seed=2)
    config = SSDConfig.create(list(train_set.labels), input_size=160, width=0.35)
    run_dir = root / "run"
    train(config, train_set, run_dir, epochs=TRAIN_STEPS // 15, batch_size=16, steps_per_epoch=15,
          learning_rate=4e-3, verbose=0)
    return run_dir, root / "train", root / "val"
