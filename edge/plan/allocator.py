"""Freed memory glibc's malloc keeps resident: what the buffers alone do not add up to.

The rules (glibc's ``malloc/malloc.c``, ``mallopt(3)``), for the main arena, where ``edge run``'s
main thread builds the sources:

- a request is served from a free heap chunk (best fit) or the heap's top chunk if one holds it;
  otherwise a request of at least the **mmap threshold** gets its own ``mmap`` (unmapped when freed,
  so RSS goes back down) and a smaller one grows the heap by it plus ``M_TOP_PAD`` (128 KiB);
- freed heap memory stays resident, for later requests, until the free chunk at the top of the heap
  reaches the **trim threshold**; then the heap is cut back to ``M_TOP_PAD``;
- the thresholds are dynamic: they start at 128 KiB, and freeing an mmapped chunk larger than the
  mmap threshold (up to 32 MiB on 64-bit) raises it to that chunk's size and the trim threshold to
  twice that.

What raises the threshold before the sources are built: the imports (measured once,
``mmap_threshold_after_imports_bytes``), and any file-sized buffer freed while the model loads.
``read_tflite`` maps the model file instead of reading it (:data:`MODEL_FILE_READ_BUFFERS` is 0):
when it held the file in a ``bytes`` and a ``bytearray`` copy, their freed chunks raised the
threshold to the file's size (12.2 MB for a width-1.0 float SSDLite), and the next freed heap memory
below it stayed resident: 13 MiB at 640x480 with that model. The replay keeps the rule for any such
buffer (``buffers`` of :func:`threshold_after_load`); a file over 32 MiB leaves the threshold where it was.
Each synthetic source then builds its background in float64
bands of about 8 MB (two arrays alive at once, see :func:`source_build`): below the threshold they
come from the heap, and once freed they stay resident unless their coalesced top chunk reaches
twice the threshold. Freed mmapped bands raise the threshold too (the next camera's bands of the
same size then land in the heap).

:func:`retained_after_sources` replays that allocation sequence, camera after camera, on a model of
the heap (best fit, coalescing, top pad, trimming, the dynamic thresholds) and returns the freed
memory still resident after the last build: the steady state carries it. What it leaves out: other
allocations of the main thread after the build that would reuse it (``edge run`` with one camera
runs its loop on the main thread, so its loop buffers partly land there and the prediction is high
by up to those), thread arenas (the loops' own churn), and big frees inside the runtime while it
loads (none measured on LiteRT 2.3: the threshold after loading is the one after the imports).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

from edge.plan.components import PAGE, SYNTHETIC_BAND_VALUES, Component, Setup

SIZE_SZ = struct.calcsize("P")
ALIGNMENT = 2 * SIZE_SZ  # MALLOC_ALIGNMENT (16 on x86_64 and aarch64)
MINSIZE = 4 * SIZE_SZ
MMAP_THRESHOLD_START = 128 * 1024  # DEFAULT_MMAP_THRESHOLD_MIN
TRIM_THRESHOLD_START = 128 * 1024  # DEFAULT_TRIM_THRESHOLD
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * SIZE_SZ  # DEFAULT_MMAP_THRESHOLD_MAX: 32 MiB on 64-bit
TOP_PAD = 128 * 1024  # DEFAULT_TOP_PAD
BYTES_HEADER = sys.getsizeof(b"")  # a bytes object's header (33 on CPython)
#: File-sized buffers ``edge.contract.tflite_file.read_tflite`` allocates and frees: none, it maps the
#: file (it read it into a ``bytes`` and a ``bytearray`` copy before; tests/test_plan_allocator.py checks).
MODEL_FILE_READ_BUFFERS = 0


def request_size(n: int) -> int:
    """glibc's chunk size for a request of ``n`` bytes (``request2size``)."""
    return max(MINSIZE, (n + SIZE_SZ + ALIGNMENT - 1) & ~(ALIGNMENT - 1))


def mmapped_size(n: int) -> int:
    """The size of the chunk an mmapped request of ``n`` bytes gets (whole pages)."""
    return -(-(request_size(n) + SIZE_SZ) // PAGE) * PAGE


def threshold_after_load(file_bytes: int, imports_threshold: int, buffers: int = MODEL_FILE_READ_BUFFERS) -> int:
    """The mmap threshold once the model is loaded: the file read's freed chunks raise it to their size."""
    threshold = imports_threshold
    chunk = mmapped_size(file_bytes + BYTES_HEADER + 1)
    if buffers and request_size(file_bytes + BYTES_HEADER + 1) >= threshold and threshold < chunk <= MMAP_THRESHOLD_MAX:
        threshold = chunk
    return threshold


@dataclass
class _Block:
    start: int
    size: int
    owner: str | None  # None: free


@dataclass
class Heap:
    """The part of the main arena the followed blocks occupy: address-ordered blocks below ``top``,
    the top chunk from ``top`` to ``end`` (the break), and ``touched``, the highest byte written."""

    threshold: int
    trim: int = 0
    blocks: list[_Block] = field(default_factory=list)
    top: int = 0
    end: int = TOP_PAD
    touched: int = 0
    mmapped: dict[str, int] = field(default_factory=dict)
    peak: int = 0  # highest resident (heap + mmapped) seen

    def __post_init__(self) -> None:
        if not self.trim:
            self.trim = 2 * self.threshold if self.threshold > MMAP_THRESHOLD_START else TRIM_THRESHOLD_START

    # -- what is resident --
    def live(self) -> int:
        return sum(b.size for b in self.blocks if b.owner is not None)

    def resident(self) -> int:
        return min(self.touched, self.end) + sum(self.mmapped.values())

    def free_resident(self) -> int:
        """Freed heap memory still resident (written once, not returned)."""
        return max(0, min(self.touched, self.end) - self.live())

    def _note(self) -> None:
        self.peak = max(self.peak, self.resident())

    # -- malloc and free --
    def malloc(self, owner: str, n: int) -> None:
        nb = request_size(n)
        fits = [b for b in self.blocks if b.owner is None and b.size >= nb]
        if fits:
            block = min(fits, key=lambda b: (b.size, b.start))
            if block.size - nb >= MINSIZE:
                rest = _Block(block.start + nb, block.size - nb, None)
                self.blocks.insert(self.blocks.index(block) + 1, rest)
                block.size = nb
            block.owner = owner
        elif self.end - self.top >= nb + MINSIZE:
            block = self._from_top(owner, nb)
        elif nb >= self.threshold:
            self.mmapped[owner] = mmapped_size(n)
            self._note()
            return
        else:
            grow = nb + TOP_PAD + MINSIZE - (self.end - self.top)
            self.end += -(-grow // PAGE) * PAGE
            block = self._from_top(owner, nb)
        self.touched = max(self.touched, block.start + block.size)
        self._note()

    def _from_top(self, owner: str, nb: int) -> _Block:
        block = _Block(self.top, nb, owner)
        self.blocks.append(block)
        self.top += nb
        return block

    def free(self, owner: str) -> None:
        if owner in self.mmapped:
            size = self.mmapped.pop(owner)
            if self.threshold < size <= MMAP_THRESHOLD_MAX:
                self.threshold, self.trim = size, 2 * size
            return
        i = next(i for i, b in enumerate(self.blocks) if b.owner == owner)
        block = self.blocks[i]
        block.owner = None
        if i + 1 < len(self.blocks) and self.blocks[i + 1].owner is None:
            block.size += self.blocks.pop(i + 1).size
        if i > 0 and self.blocks[i - 1].owner is None:
            self.blocks[i - 1].size += self.blocks.pop(i).size
            i -= 1
            block = self.blocks[i]
        if block.start + block.size == self.top:  # consolidate into the top chunk
            self.blocks.pop(i)
            self.top = block.start
        top_size = self.end - self.top
        if top_size >= self.trim:  # systrim: give back all but the pad, whole pages
            extra = (top_size - MINSIZE - 1 - TOP_PAD) // PAGE * PAGE
            if extra > 0:
                self.end -= extra
                self.touched = min(self.touched, self.end)


def source_build(width: int, height: int, camera: int = 0) -> list[tuple[str, str, int]]:
    """The large allocations of one ``SyntheticSource(width, height)``, in order: its background
    image, per band of rows the noise and the noise + gradient (the previous band's sum is freed
    once the next is made), the last sum freed on return, then the frame it draws into."""
    frame = width * height * 3
    rows = max(1, SYNTHETIC_BAND_VALUES // max(1, width * 3))
    steps = [("malloc", f"{camera}:background", frame)]
    previous = None
    for k, y0 in enumerate(range(0, height, rows)):
        size = (min(height, y0 + rows) - y0) * width * 3 * 8
        noise, total = f"{camera}:noise{k}", f"{camera}:sum{k}"
        steps += [("malloc", noise, size), ("malloc", total, size), ("free", noise, 0)]
        if previous:
            steps.append(("free", previous, 0))
        previous = total
    steps += [("free", previous, 0), ("malloc", f"{camera}:frame", frame)]
    return steps


def retained_after_sources(width: int, height: int, cameras: int, threshold: int) -> dict:
    """Replay ``cameras`` source builds on a heap whose mmap threshold is ``threshold``: the freed
    memory still resident after the last one (``retained``), the thresholds it leaves, and the peak
    resident of the followed blocks during the builds."""
    heap = Heap(threshold)
    for camera in range(cameras):
        for op, owner, n in source_build(width, height, camera):
            heap.malloc(owner, n) if op == "malloc" else heap.free(owner)
    return {"retained": heap.free_resident(), "threshold": heap.threshold, "trim": heap.trim, "peak": heap.peak,
            "band_bytes": min(height, max(1, SYNTHETIC_BAND_VALUES // max(1, width * 3))) * width * 3 * 8}


def heap_part(file_bytes: int, setup: Setup, coefficients: dict) -> Component | None:
    """The freed source-build memory glibc keeps for ``setup`` (None when it keeps none, when the
    source is a camera, or when the baseline says the board's libc is not glibc)."""
    imports = coefficients.get("mmap_threshold_after_imports_bytes", MMAP_THRESHOLD_START)
    if not imports or setup.live:
        return None
    threshold = threshold_after_load(file_bytes, imports)
    kept = retained_after_sources(setup.width, setup.height, setup.cameras, threshold)
    if kept["retained"] <= 0:
        return None
    mib = 2**20
    cause = (f"the model file read ({MODEL_FILE_READ_BUFFERS} x {file_bytes / mib:.1f} MiB, freed) left glibc's mmap "
             f"threshold at {threshold / mib:.1f} MiB" if threshold > imports else
             f"glibc's mmap threshold is {threshold / mib:.1f} MiB after the imports")
    if kept["threshold"] > threshold:
        cause += f", freed mapped bands raised it to {kept['threshold'] / mib:.1f} MiB"
    return Component("freed source memory glibc keeps", kept["retained"], "camera",
                     f"{cause}: the synthetic source's float64 bands (up to {kept['band_bytes'] / mib:.1f} MiB) "
                     "below it come from the heap, and freed they stay resident while the heap's top chunk is "
                     "under the trim threshold (twice the mmap threshold); edge.plan.allocator replays the builds")
