"""The board never needs TensorFlow: every module under ``edge/`` imports with it blocked.

The check runs in a subprocess because the block is a meta-path finder that would otherwise leak
into every test after this one. ``convert`` is blocked too: the design lets only the CLI dispatcher
reach it, by name, when a desktop subcommand runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "convert")

# Runs in the child interpreter. Prints one JSON object: which edge modules imported, which failed
# (with the error), and whether any blocked top-level package ended up in sys.modules anyway.
_CHILD = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                Block.attempts.append(name)
                raise ModuleNotFoundError(f"{name} is blocked: board code must not import it", name=name)
            return None

    sys.meta_path.insert(0, Block())

    imported, failed = [], {}
    def record_failure(name):
        failed[name] = traceback.format_exc(limit=3)

    import edge
    imported.append("edge")
    for info in pkgutil.walk_packages(edge.__path__, "edge.", onerror=record_failure):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except BaseException:
            record_failure(info.name)

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"imported": imported, "failed": failed, "leaked": leaked,
                      "attempts": Block.attempts}))
    """
)

# Runs in the child: a real detection with the blocked finder in place, so the runtime choice
# (ai-edge-litert, else tflite-runtime) never falls through to tensorflow.lite.
_DETECT_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import numpy as np

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import cv2
    from edge import Detector

    detector = Detector(sys.argv[2], score_threshold=0.3)
    frame = cv2.imread(sys.argv[3], cv2.IMREAD_COLOR)
    detections = detector.detect(frame)
    print(json.dumps({"count": int(detections.count), "class_ids": detections.class_ids[: detections.count].tolist(),
                      "runtime": detector.runtime_info.name,
                      "leaked": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
    """
)


def _run_child(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, ",".join(BLOCKED), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_edge_module_imports_with_tensorflow_blocked():
    result = _run_child(_CHILD)
    assert not result["failed"], "edge modules that need a blocked package:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in result["failed"].items()
    )
    assert result["leaked"] == []
    # The walk really covered the package, not just edge/__init__.py.
    expected = {p.stem for p in (PROJECT_ROOT / "edge").glob("*.py") if p.stem != "__init__"}
    imported = {name.split(".")[1] for name in result["imported"] if name.count(".") >= 1}
    assert expected <= imported, f"not imported: {sorted(expected - imported)}"
    assert "edge.cli" in result["imported"] and "edge.detector.detector" in result["imported"]


def test_edge_commands_import_with_tensorflow_blocked():
    """The board subcommands (run, detect, inspect, bench) are what a Pi executes."""
    result = _run_child(_CHILD)
    commands_dir = PROJECT_ROOT / "edge" / "commands"
    expected = {f"edge.commands.{p.stem}" for p in commands_dir.glob("*.py") if p.stem != "__init__"}
    assert expected, "edge/commands/ has no subcommand modules"
    assert expected <= set(result["imported"]), f"not imported: {sorted(expected - set(result['imported']))}"


def test_detection_runs_with_tensorflow_blocked(ssd_model_path, images_dir):
    result = _run_child(_DETECT_CHILD, str(ssd_model_path), str(images_dir / "grace_hopper.bmp"))
    assert result["leaked"] == []
    assert "tensorflow" not in result["runtime"]
    # Grace Hopper: the fixture model finds a person (COCO id 0) at ~0.72.
    assert result["count"] >= 1
    assert 0 in result["class_ids"]
