"""The catalogue: a few well-known, openly licensed SSD detectors that ``edge models pull`` fetches.

Every entry ends in the ``TFLite_Detection_PostProcess`` op (boxes, classes, scores, count), the head
``edge run`` reads without any decoding of its own. An entry is downloaded only against a pinned
SHA-256 of the file as served (the archive, or the plain ``.tflite``); an entry without a pin is
listed but refused (:func:`edge.download.pull`). Where the pins come from is written beside each
one, so they can be checked again.

Adding a model: one :class:`CatalogEntry` in :data:`CATALOG`, with a pin from a source you trust
(a release page, a build file that pins it) or from ``sha256sum`` of a copy you checked by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edge.errors import EdgeError

ZIP, TFLITE = "zip", "tflite"
ARCHIVE_FORMATS = (ZIP, TFLITE)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable detector. Sizes are bytes; ``None`` where nobody could check the value."""

    name: str  # what the user types: ``edge run coco-ssd``, ``edge models pull coco-ssd``
    description: str
    url: str  # the file as served: a .zip or a plain .tflite
    license: str  # SPDX identifier of the model's licence
    input_size: tuple[int, int]  # (height, width) of the image input
    input_dtype: str  # "uint8" or "float32"
    archive: str  # ZIP or TFLITE
    sha256: str | None  # of the file as served; None: pull refuses to download it
    size_bytes: int | None  # of the file as served (display, progress, runaway cap)
    size_exact: bool = True  # False: size_bytes is an estimate (shown as "about")
    model_member: str | None = None  # ZIP: the member holding the model
    model_sha256: str | None = None  # of the model itself (the member once unpacked), checked too
    model_bytes: int | None = None
    labels_member: str | None = None  # ZIP: the member holding the labels
    labels_url: str | None = None  # TFLITE: the labels as a separate download ...
    labels_sha256: str | None = None  # ... which needs its own pin
    labels_background: str | None = None  # a first labels line that is the background class: dropped
    labels_unused: tuple[str, ...] = field(default=())  # label texts marking unused ids: stored as n/a
    pin_source: str = ""  # where the pins were found

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"catalogue name {self.name!r}: lower-case letters, digits, '.', '-', '_'")
        if self.archive not in ARCHIVE_FORMATS:
            raise ValueError(f"{self.name}: archive must be one of {ARCHIVE_FORMATS}, not {self.archive!r}")
        for pin in (self.sha256, self.model_sha256, self.labels_sha256):
            if pin is not None and not _SHA256.match(pin):
                raise ValueError(f"{self.name}: {pin!r} is not a lower-case hex SHA-256")
        if self.archive == ZIP and self.labels_url:
            raise ValueError(f"{self.name}: a zip entry takes its labels from labels_member")
        if self.archive == TFLITE and (self.model_member or self.labels_member):
            raise ValueError(f"{self.name}: a plain .tflite entry has no members")

    @property
    def has_labels(self) -> bool:
        return bool(self.labels_member or self.labels_url)

    @property
    def input_text(self) -> str:
        return f"{self.input_size[1]}x{self.input_size[0]} {self.input_dtype}"

    def size_text(self) -> str:
        if self.size_bytes is None:
            return "size unknown"
        return f"{'' if self.size_exact else 'about '}{self.size_bytes / 1e6:.1f} MB"


# COCO SSD MobileNet v1, quantized: the model of TensorFlow Lite's object detection examples.
#
# sha256: the .zip as served. The same value is pinned, for this URL, by STMicroelectronics'
#   X-LINUX-AI Yocto recipes (SRC_URI[coco_ssd_mobilenet_v1_1.0_quant.sha256sum], md5
#   3764f289165250252d2323d718c04d83) and meta-raspberrypi's libcamera-apps recipe
#   (SRC_URI[object_detect_tf.sha256sum]); TensorFlow's tensorflow/workspace2.bzl pins it too
#   (tf_http_archive "tflite_mobilenet_ssd_quant"). A public README lists it beside the sha256 of
#   its detect.tflite, e4b118e5..., which is that of the fixture
#   ../shared/fixtures/models/ssd_mobilenet_v1_coco_quant.tflite (4,183,312 bytes), computed here.
# size_bytes: an estimate; the archive's exact byte count could not be looked up here
#   (detect.tflite deflates to 2,917,351 bytes at zlib level 6, the labels to a few hundred).
#   The SHA-256 decides; the size is for display and to stop a server that never ends.
# labelmap.txt: 91 lines, "???" first (the background class the post-process op leaves out) and
#   "???" for the ten unused COCO ids; stored as labels.txt with 90 lines and "n/a" for those,
#   the layout of edge's label files (line i is class i).
COCO_SSD = CatalogEntry(
    name="coco-ssd",
    description="COCO SSD MobileNet v1 1.0, quantized (uint8), 90 COCO classes; TensorFlow Lite's "
                "detection example model (Google)",
    url="https://storage.googleapis.com/download.tensorflow.org/models/tflite/"
        "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.zip",
    license="Apache-2.0",
    input_size=(300, 300),
    input_dtype="uint8",
    archive=ZIP,
    sha256="a809cd290b4d6a2e8a9d5dad076e0bd695b8091974e0eed1052b480b2f21b6dc",
    size_bytes=2_918_000,
    size_exact=False,
    model_member="detect.tflite",
    model_sha256="e4b118e5e4531945de2e659742c7c590f7536f8d0ed26d135abcfe83b4779d13",
    model_bytes=4_183_312,
    labels_member="labelmap.txt",
    labels_background="???",
    labels_unused=("???",),
    pin_source="STMicroelectronics X-LINUX-AI and meta-raspberrypi recipes, tensorflow/workspace2.bzl; "
               "model member: the shared fixture",
)

# Coral's SSD MobileNet v2 COCO (quantized, with the post-process op), the CPU build of the Edge TPU
# example model, from google-coral/test_data (Apache-2.0) at a fixed commit. No pinned SHA-256 of the
# .tflite could be found (the repository keeps it outside the git blobs available here), so pull
# refuses it until someone pins it (or passes --sha256 after checking a copy). The labels are
# pinned: coco_labels.txt at that commit is the same file as ../shared/fixtures/models/coco_labels.txt.
_CORAL = "https://github.com/google-coral/test_data/raw/104342d2d3480b3e66203073dac24f4e2dbb4c41/"
CORAL_SSD_V2 = CatalogEntry(
    name="coral-ssd-v2",
    description="SSD MobileNet v2 COCO, quantized (uint8), 90 COCO classes; Coral's example detector, "
                "CPU build (Google)",
    url=_CORAL + "ssd_mobilenet_v2_coco_quant_postprocess.tflite",
    license="Apache-2.0",
    input_size=(300, 300),
    input_dtype="uint8",
    archive=TFLITE,
    sha256=None,
    size_bytes=None,
    labels_url=_CORAL + "coco_labels.txt",
    labels_sha256="dc183f003fc753c4c43fae6fdf7f387559449573f13fa32e517fb7453fd380f1",
    pin_source="labels: google-coral/test_data@104342d (git blob e6e41385); model: none found",
)

#: name -> entry. Tests and forks add entries here (``monkeypatch.setitem``); lookups read it live.
CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in (COCO_SSD, CORAL_SSD_V2)}


def catalog_names() -> list[str]:
    return sorted(CATALOG)


def get_entry(name: str) -> CatalogEntry:
    """The entry called ``name``; one line listing the catalogue otherwise."""
    entry = CATALOG.get(name)
    if entry is None:
        raise EdgeError(f"{name}: not a catalogue model; the catalogue has {', '.join(catalog_names())} "
                        "(see edge models)")
    return entry
