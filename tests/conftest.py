"""Shared fixtures: the real files in ../shared/fixtures (skipped, saying why, where absent)."""

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
