"""Detection datasets as plain numpy records: the one shape every reader produces.

Readers (VOC, COCO, synthetic) never crash on one bad file: they skip it and record
``(file, reason)`` in :attr:`Dataset.skipped`, so a run over a real, messy folder finishes and says
what it left out. Boxes are float32 ``[N, 4]`` xyxy in pixels of the original image; class ids are
0-based into ``Dataset.labels`` (no background class here; the model adds column 0 itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError


@dataclass
class Sample:
    image_path: Path
    width: int  # pixels, from the annotation (checked against the image when it is read)
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy, pixels
    class_ids: np.ndarray  # int32 [N], 0-based into Dataset.labels

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(-1)


@dataclass
class Dataset:
    labels: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices) -> "Dataset":
        """A dataset of ``samples[i] for i in indices`` (same labels, no skipped entries)."""
        return Dataset(list(self.labels), [self.samples[i] for i in indices], [])

    def split(self, val_fraction: float, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Deterministic (train, val) split; val gets at least one sample when there are two."""
        n = len(self.samples)
        order = np.random.default_rng(seed).permutation(n)
        n_val = min(n - 1, max(1, int(round(n * val_fraction)))) if n > 1 and val_fraction > 0 else 0
        return self.subset(sorted(order[n_val:])), self.subset(sorted(order[:n_val]))

    def summary(self) -> str:
        objects = sum(len(s.class_ids) for s in self.samples)
        text = f"{len(self.samples)} images, {objects} objects, {len(self.labels)} classes"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text


def clean_box(box, width: int, height: int, source: str) -> np.ndarray:
    """Clip an xyxy pixel box to the image; raise ValueError for one that is empty or far outside."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{source}: box must be four numbers, not {str(box)[:40]}") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError(f"{source}: non-finite box {box}")
    # Off-by-one at the border is common in hand labels (VOC is 1-based); clip, don't reject.
    tol = 0.02 * max(width, height) + 2
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise ValueError(f"{source}: box {box} outside the {width}x{height} image")
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"{source}: empty box {box}")
    return np.array([x0, y0, x1, y1], dtype=np.float32)


from convert.data.coco import load_coco  # noqa: E402  (the readers use the types above)
from convert.data.voc import load_voc  # noqa: E402


def load_dataset(path, format: str | None = None, images_dir=None, labels=None) -> Dataset:
    """Read a VOC folder or a COCO JSON; ``format`` "voc" | "coco" | None (auto-detect).

    Auto-detection: a ``.json`` file (or a folder holding exactly one) is COCO; a folder with
    ``Annotations/`` or ``*.xml`` files is VOC.
    """
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # e.g. a name too long for the file system
        raise EdgeError(f"--data {path}: cannot use this path ({getattr(exc, 'strerror', None) or exc})") from None
    if not exists:
        raise EdgeError(f"--data {path}: no such file or directory")
    if labels is not None:
        labels = _check_labels(labels)
    if format is None:
        if path.is_file() and path.suffix.lower() == ".json":
            format = "coco"
        elif path.is_dir() and ((path / "Annotations").is_dir() or any(path.glob("*.xml"))):
            format = "voc"
        elif path.is_dir() and len(list(path.glob("*.json"))) == 1:
            format = "coco"
        else:
            raise EdgeError(f"--data {path}: cannot tell the format (no Annotations/ or *.xml for VOC, "
                            "no .json for COCO); pass --format voc|coco")
    if format == "voc":
        return load_voc(path, labels=labels)
    if format == "coco":
        if path.is_dir():
            jsons = sorted(path.glob("*.json")) or sorted(path.glob("annotations/*.json"))
            if len(jsons) != 1:
                raise EdgeError(f"--data {path}: expected one COCO .json, found {len(jsons)}; pass the file")
            if images_dir is None:
                images_dir = path / "images" if (path / "images").is_dir() else path
            path = jsons[0]
        dataset = load_coco(path, images_dir if images_dir is not None else path.parent)
        if labels:
            dataset = _restrict_labels(dataset, list(labels))
        return dataset
    raise EdgeError(f"--format {format}: expected voc or coco")


def _check_labels(labels) -> list[str]:
    """``--classes``: non-empty names, each once (a class given twice would get two class ids)."""
    names = [str(n).strip() for n in labels]
    if any(not n for n in names):
        raise EdgeError("--classes: empty class name")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise EdgeError(f"--classes: {twice} is given twice")
    return names


def _restrict_labels(dataset: Dataset, labels: list[str]) -> Dataset:
    """Keep only objects of ``labels`` and renumber class ids to that order."""
    missing = [name for name in labels if name not in dataset.labels]
    if missing:
        raise EdgeError(f"--classes: {', '.join(missing)} not in the dataset (it has {', '.join(dataset.labels)})")
    remap = np.array([labels.index(n) if n in labels else -1 for n in dataset.labels], dtype=np.int32)
    samples = []
    for s in dataset.samples:
        new_ids = remap[s.class_ids] if len(s.class_ids) else s.class_ids
        keep = new_ids >= 0
        samples.append(Sample(s.image_path, s.width, s.height, s.boxes[keep], new_ids[keep]))
    return Dataset(labels, samples, list(dataset.skipped))


__all__ = ["Dataset", "Sample", "load_coco", "load_dataset", "load_voc", "clean_box"]
