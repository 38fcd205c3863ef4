"""Images without annotations, labelled by a teacher: ``edge train --teacher RUN --data IMAGES/``.

An images-only folder (image files, no ``Annotations/``, ``*.xml`` or ``.json``) is run through the
teacher (:func:`convert.evaluate.predict_keras`: the training pipeline's resize, the runtime's box
decoding, per-class NMS); its detections scoring at least ``score`` become the boxes of a Pascal VOC
dataset written under the run directory (``RUN/pseudo_labels/``), which is then read back with the
ordinary VOC reader and trained on like any other. ``JPEGImages/`` holds symbolic links to the
originals (copies where the file system has no links), so nothing large is duplicated; every file
is written atomically (:mod:`edge.files`), and annotations of images no longer in the folder are
removed, so a rerun leaves exactly this run's labels.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET  # writing only; reading goes through defusedxml
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError
from edge.files import atomic_write
from edge.images import ImageError, image_size, list_images, read_image

PSEUDO_LABELS_DIR = "pseudo_labels"
DEFAULT_PSEUDO_LABEL_SCORE = 0.5


def images_only(path) -> bool:
    """A folder of images with no annotations a reader would take (VOC XML, COCO JSON)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "Annotations").is_dir():
        return False
    if any(folder.glob("*.xml")) or any(folder.glob("*.json")) or (folder / "annotations").is_dir():
        return False
    return bool(list_images(folder))


@dataclass
class PseudoLabels:
    out_dir: Path
    images: int
    objects: int
    skipped: list[tuple[str, str]]

    def describe(self) -> str:
        text = f"pseudo-labels: {self.objects} objects on {self.images} images -> {self.out_dir}"
        return text + (f" ({len(self.skipped)} unreadable image(s) left out)" if self.skipped else "")


def _size(path: Path) -> tuple[int, int]:
    """(width, height), from the header where possible (no decode), else from the pixels."""
    size = image_size(path)
    if size is None:
        height, width = read_image(path).shape[:2]
        size = (width, height)
    return size


def _voc_xml(image: Path, width: int, height: int, boxes, ids, labels) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = image.name
    ET.SubElement(ann, "path").text = str(image)
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, cls in zip(boxes, ids):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = labels[int(cls)]
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bnd, tag).text = f"{float(value):.1f}"
    return ET.tostring(ann, encoding="utf-8")


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` atomically: a symlink, or a copy where links are not possible."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.part")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.symlink(target, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_pseudo_labels(teacher, images_dir, out_dir, score: float = DEFAULT_PSEUDO_LABEL_SCORE,
                        batch_size: int = 16):
    """Label every image directly in ``images_dir`` with ``teacher``'s detections scoring >= ``score``
    (after NMS) and write them as VOC under ``out_dir``; returns ``(dataset, PseudoLabels)``.

    ``teacher``: a :class:`convert.distill.Teacher` (its model and config are used; the images go
    through the teacher's own input size).
    """
    from convert.data import Dataset, Sample
    from convert.data.voc import load_voc
    from convert.evaluate import predict_keras

    if not 0.0 < score <= 1.0:
        raise EdgeError(f"--pseudo-label-score {score:g}: expected 0 < score <= 1")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    labels = list(teacher.config.labels)
    samples, skipped = [], []
    for path in list_images(images_dir):
        try:
            width, height = _size(path)
        except ImageError as exc:
            skipped.append((str(path), exc.reason))
            continue
        samples.append(Sample(path.resolve(), width, height, np.zeros((0, 4)), np.zeros(0)))
    if not samples:
        raise EdgeError(f"--data {images_dir}: no readable images to pseudo-label")
    predictions, indices = predict_keras(teacher.model, teacher.config, Dataset(labels, samples),
                                         batch_size=batch_size, score_threshold=score)
    done = set(indices)
    skipped += [(str(s.image_path), "unreadable") for i, s in enumerate(samples) if i not in done]

    annotations, jpegs = out_dir / "Annotations", out_dir / "JPEGImages"
    annotations.mkdir(parents=True, exist_ok=True)
    jpegs.mkdir(parents=True, exist_ok=True)
    written, objects = set(), 0
    for (boxes, scores, ids), index in zip(predictions, indices):
        sample = samples[index]
        keep = scores >= score  # NMS already applied the threshold; kept explicit for the contract
        boxes, ids = boxes[keep], ids[keep]
        boxes = np.clip(boxes, 0, [sample.width, sample.height, sample.width, sample.height])
        wide = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # what the VOC reader takes
        boxes, ids = boxes[wide], ids[wide]
        # a.jpg and a.png would share a stem; the reader finds the image by <filename>, not by stem
        stem = sample.image_path.stem if sample.image_path.stem not in written else sample.image_path.name
        _link(sample.image_path, jpegs / sample.image_path.name)
        atomic_write(annotations / f"{stem}.xml",
                     _voc_xml(sample.image_path, sample.width, sample.height, boxes, ids, labels))
        written.add(stem)
        objects += len(ids)
    for stale in annotations.glob("*.xml"):  # an earlier run's labels of images since removed
        if stale.stem not in written:
            stale.unlink()
    atomic_write(out_dir / "labels.txt", "\n".join(labels) + "\n")
    if not written:
        raise EdgeError(f"--data {images_dir}: none of the images could be read for pseudo-labelling")
    dataset = load_voc(out_dir, labels=labels)
    return dataset, PseudoLabels(out_dir, len(written), objects, skipped)
