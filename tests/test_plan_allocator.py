"""``edge.plan.allocator``: the freed memory glibc keeps after the synthetic sources are built.

The replay is checked against measured figures (the pipeline's RSS with glibc's dynamic thresholds
minus the same run with ``MALLOC_MMAP_THRESHOLD_=131072``, which pins them, LiteRT 2.3 on x86_64),
the mmap threshold the model load leaves against the one measured in a fresh process, and the
planner's assumption about how ``read_tflite`` reads the file against what it does.
"""

from __future__ import annotations

import platform
import tracemalloc

import pytest

from edge.contract.tflite_file import read_tflite
from edge.models import DEMO_MODEL
from edge.plan.allocator import (MMAP_THRESHOLD_MAX, MODEL_FILE_READ_BUFFERS, Heap, mmapped_size,
                                 retained_after_sources, threshold_after_load)
from edge.plan.baseline import load_baseline
from edge.plan.components import Setup
from edge.plan.predict import predict

MIB = 2**20
IMPORTS = 1_052_672  # measured after edge run's imports (baseline.json)
W1_FLOAT = 12_181_504  # after loading ssdlite_w1_160_float (12,180,936 B file)
W1_INT8 = 3_747_840  # after loading ssdlite_w1_320_int8 (3,746,872 B)

# (threshold after load, source, cameras, measured MiB kept: default minus pinned thresholds)
MEASURED = [
    (W1_FLOAT, (640, 480), 1, 12.95), (W1_FLOAT, (640, 480), 2, 12.92),
    (W1_FLOAT, (1280, 720), 1, -0.09),
    (W1_FLOAT, (960, 540), 1, 14.35), (W1_FLOAT, (960, 540), 2, 14.39),
    (W1_FLOAT, (320, 240), 1, 3.13), (W1_FLOAT, (320, 240), 2, 3.23),
    (W1_INT8, (960, 540), 1, 6.07), (W1_INT8, (960, 540), 2, -0.02),
    (W1_INT8, (640, 480), 1, -0.21), (W1_INT8, (640, 480), 2, 0.02),
    (W1_INT8, (320, 240), 1, 3.12), (W1_INT8, (320, 240), 2, 3.17),
    (IMPORTS, (960, 540), 1, 6.12), (IMPORTS, (960, 540), 2, -0.02),
    (IMPORTS, (640, 480), 1, -0.01), (IMPORTS, (320, 240), 1, 0.07), (IMPORTS, (320, 240), 2, 0.02),
]


@pytest.mark.parametrize("threshold, size, cameras, measured", MEASURED)
def test_replay_matches_the_measured_kept_memory(threshold, size, cameras, measured):
    kept = retained_after_sources(*size, cameras, threshold)["retained"] / MIB
    assert kept == pytest.approx(measured, abs=0.5)


def test_threshold_after_load_follows_the_file_size():
    # A file read into memory and freed (bytes + a bytearray copy, as read_tflite did before it mapped
    # the file; measured: these thresholds) raises the threshold to the file's size.
    assert threshold_after_load(12_180_936, IMPORTS, buffers=2) == W1_FLOAT
    assert threshold_after_load(3_746_872, IMPORTS, buffers=2) == W1_INT8
    assert threshold_after_load(900_000, IMPORTS, buffers=2) == IMPORTS  # read from the heap: no mmapped chunk freed
    assert threshold_after_load(40 * MIB, IMPORTS, buffers=2) == IMPORTS  # over 32 MiB: glibc leaves the threshold
    assert threshold_after_load(12_180_936, IMPORTS) == IMPORTS  # read_tflite maps the file: nothing freed


def test_heap_rules():
    heap = Heap(IMPORTS)
    heap.malloc("big", 8 * MIB)
    assert "big" in heap.mmapped
    heap.free("big")  # a freed mapped chunk raises both thresholds
    assert heap.threshold == mmapped_size(8 * MIB) and heap.trim == 2 * heap.threshold
    heap.malloc("a", 4 * MIB)
    heap.malloc("b", 4 * MIB)
    heap.free("a")
    assert heap.free_resident() >= 4 * MIB  # below the top: kept
    heap.free("b")  # top chunk of 8 MiB < 16 MiB trim threshold: still kept
    assert heap.free_resident() >= 8 * MIB
    heap.malloc("c", 7 * MIB)  # reuses it: nothing new resident
    assert heap.resident() <= 8 * MIB + 2 * 4096
    big = Heap(MMAP_THRESHOLD_MAX)
    assert big.trim == 2 * MMAP_THRESHOLD_MAX


def test_read_tflite_holds_what_the_planner_assumes():
    """If this fails, read_tflite changed how it reads the file: set MODEL_FILE_READ_BUFFERS to the
    number of file-sized buffers it holds at once (0 when it maps the file)."""
    size = DEMO_MODEL.stat().st_size
    read_tflite(DEMO_MODEL)  # the first call also imports the generated schema
    tracemalloc.start()
    try:
        read_tflite(DEMO_MODEL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert int(peak // size) == MODEL_FILE_READ_BUFFERS


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or platform.system() != "Linux", reason="glibc only")
def test_threshold_after_loading_is_predicted():
    pytest.importorskip("ai_edge_litert.interpreter")
    from edge.plan.check import run_fresh

    measured = run_fresh(DEMO_MODEL, malloc_threshold=True, threads=1, timeout=120)
    assert measured["imports"] > 0
    assert measured["loaded"] == threshold_after_load(measured["file_bytes"], measured["imports"])


def test_prediction_carries_the_kept_memory():
    baseline = load_baseline()
    kept = {}
    for size in ((960, 540), (1280, 720)):
        p = predict(DEMO_MODEL, Setup(*size, cameras=1, threads=1), baseline)
        parts = [c for c in p.components if c.name == "freed source memory glibc keeps"]
        kept[size] = parts[0].bytes if parts else 0
        assert p.steady == sum(c.bytes for c in p.components if c.group != "transient")
    assert kept[(960, 540)] > 5 * MIB and kept[(1280, 720)] == 0
    not_glibc = {**baseline, "coefficients": {**baseline["coefficients"], "mmap_threshold_after_imports_bytes": 0}}
    p = predict(DEMO_MODEL, Setup(960, 540, cameras=1, threads=1), not_glibc)
    assert not [c for c in p.components if c.name == "freed source memory glibc keeps"]
