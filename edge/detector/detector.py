"""``Detector``: one model, one backend, one FrameBuffer, one Detections; ``detect(frame)``.

Everything is allocated in the constructor. Per frame: the FrameBuffer writes into the backend's
input view, ``invoke()``, and outputs are copied (``np.copyto``) into the preallocated Detections.
Output views are called where needed and never kept across ``invoke()`` (LiteRT refuses to run
while such a view is alive). Which tensor is which comes from :mod:`edge.contract.heads`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends import open_backend
from edge.backends.base import Backend, BackendInfo
from edge.contract.detections import Detections
from edge.contract.heads import anchor_count, classify_head, postprocess_roles, raw_head_roles
from edge.contract.labels import align_labels, labels_beside, load_labels
from edge.contract.modelinfo import HEAD_POSTPROCESS, ModelInfo
from edge.detector.buffer import STRETCH, FrameBuffer
from edge.detector.rawhead import RawHeadDecoder
from edge.detector.step import Frame
from edge.errors import EdgeError
from edge.models import default_model_path


class Detector:
    """Detect objects in BGR frames with an SSD model (post-process op or raw head) on any backend.

    ``score_threshold`` is applied on top of the model's own; boxes come back in frame pixels.
    ``backend`` is an already loaded :class:`~edge.backends.base.Backend` (else one is opened for
    ``model_path`` with ``runtime``, ``num_threads`` and ``backend_options``, the engine's own options
    such as ONNX Runtime's ``providers`` and TensorRT settings; see :func:`edge.backends.open_backend`).
    """

    def __init__(self, model_path: str | Path | None = None, *, labels: str | Path | list[str] | None = None,
                 score_threshold: float = 0.5, num_threads: int | None = None, runtime: str | None = None,
                 resize: str | None = None, max_detections: int | None = None,
                 info: ModelInfo | None = None, backend: Backend | None = None,
                 backend_options: dict | None = None) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise EdgeError(f"--score {score_threshold}: must be between 0 and 1")
        self.score_threshold = float(score_threshold)
        if backend is None:
            path = Path(model_path) if model_path is not None else default_model_path()
            backend = open_backend(path, runtime, num_threads, **(backend_options or {}))
        elif backend_options is None:
            backend_options = getattr(backend, "options", None)
        # Kept for set_threads: a reopened engine must run where this one does (same providers,
        # same TensorRT engine cache), not on the defaults.
        self.backend_options = {k: v for k, v in (backend_options or {}).items() if v is not None}
        self.backend = backend
        self.model_path = backend.model_path
        self.info: ModelInfo | None = info or backend.model_info()
        image = backend.image
        self.input_size = (int(image.shape[1]), int(image.shape[2]))
        info = self.info or ModelInfo()
        self.buffer = FrameBuffer(backend.view(image), image.shape, image.dtype, image.quantization,
                                  info.normalization, info.color, resize or info.resize or STRETCH)
        outputs = backend.detection_outputs
        self.head = classify_head(outputs, backend.has_postprocess, self.info.head if self.info else None,
                                  self.model_path)
        if self.head == HEAD_POSTPROCESS:
            self.outputs = postprocess_roles(outputs, backend.signature_output_names(), self.model_path)
            capacity = self.outputs["boxes"].shape[1]
        else:
            self.outputs = raw_head_roles(outputs)
            capacity = max_detections or info.max_detections
            self._setup_raw_head(info)
        self._views = {role: backend.view(spec) for role, spec in self.outputs.items()}
        self.num_classes = self._class_count(info)
        self.labels, self.labels_source = self._resolve_labels(labels)
        self.label_notes = self._label_notes()
        self.detections = Detections(capacity, self.labels)
        self._yxyx = np.zeros((capacity, 4), np.float32)  # normalised, model input space
        self._keep = np.zeros(capacity, bool)

    # ---- construction -------------------------------------------------------------------------

    def _class_count(self, info: ModelInfo) -> int | None:
        """Classes the model can output (0-based ids), where the model says."""
        if self.head == HEAD_POSTPROCESS:
            count = (getattr(self.backend, "postprocess_options", None) or {}).get("num_classes")
            return int(count) if isinstance(count, (int, float)) and count > 0 else None
        return int(self.outputs["logits"].shape[-1]) - (1 if info.has_background else 0)

    def _resolve_labels(self, labels) -> tuple[list[str], str | None]:
        """The labels and where they came from: ``--labels``, the model's metadata, or a file beside it."""
        if isinstance(labels, (str, Path)):
            return align_labels(load_labels(labels), self.num_classes), str(labels)
        if labels is not None:
            return list(labels), "given"
        if self.info and self.info.labels:
            return list(self.info.labels), "the model's metadata"
        beside = labels_beside(self.model_path)
        if beside is not None:
            return align_labels(load_labels(beside), self.num_classes), str(beside)
        return [], None

    def _label_notes(self) -> list[str]:
        """What the user should hear once at start about the labels (none, or fewer than the classes)."""
        if not self.labels:
            return ["the model carries no labels: classes are shown as numbers (pass --labels FILE)"]
        if self.num_classes and len(self.labels) < self.num_classes:
            return [f"{self.labels_source} has {len(self.labels)} labels but the model has {self.num_classes} "
                    f"classes: ids {len(self.labels)} and above are shown as numbers"]
        return []

    def _setup_raw_head(self, info: ModelInfo) -> None:
        encodings, logits = self.outputs["encodings"], self.outputs["logits"]
        num_anchors = anchor_count(encodings)
        if info.anchors is None:
            raise EdgeError(f"{self.model_path}: raw SSD head ({num_anchors} anchors) but no anchor config; "
                            f"describe it in {self.model_path.with_suffix('.json')}")
        classes = int(logits.shape[-1])
        self._raw = RawHeadDecoder(info, classes)
        if self._raw.num_anchors != num_anchors or anchor_count(logits) != num_anchors:
            raise EdgeError(f"{self.model_path}: the anchor config gives {self._raw.num_anchors} anchors but the "
                            f"model outputs {list(encodings.shape)} and {list(logits.shape)}")
        # Float copies of the outputs, dequantized in place for integer heads.
        self._encodings = np.zeros((num_anchors, 4), np.float32)
        self._logits = np.zeros((num_anchors, classes), np.float32)

    # ---- per frame ----------------------------------------------------------------------------

    def preprocess(self, frame: Frame | np.ndarray) -> None:
        """A :class:`~edge.detector.step.Frame` (or a bare image) into the input tensor.

        When the capture thread already resized the frame (``frame.resized``), only colour order and
        encoding are left to do here.
        """
        if isinstance(frame, Frame):
            if frame.resized is not None:
                self.buffer.write_resized(frame.resized, frame.image.shape)
                return
            frame = frame.image
        self.buffer.write(frame)

    def invoke(self) -> None:
        self.backend.invoke()

    def postprocess(self) -> Detections:
        det = self.detections
        if self.head == HEAD_POSTPROCESS:
            count = self._copy_postprocess_outputs()
        else:
            count = self._decode_raw_head()
        mul_x, add_x, mul_y, add_y = self.buffer.box_transform
        frame_h, frame_w = self.buffer.frame_size
        xyxy, yxyx = det._xyxy[:count], self._yxyx[:count]
        # normalised yxyx in the model input -> pixel xyxy in the frame, clipped to it
        for col, src, mul, add, limit in ((0, 1, mul_x, add_x, frame_w), (1, 0, mul_y, add_y, frame_h),
                                          (2, 3, mul_x, add_x, frame_w), (3, 2, mul_y, add_y, frame_h)):
            np.multiply(yxyx[:, src], mul, out=xyxy[:, col])
            xyxy[:, col] += add
            # ufuncs rather than np.clip, whose dispatch caches grow for thousands of calls
            np.maximum(xyxy[:, col], 0.0, out=xyxy[:, col])
            np.minimum(xyxy[:, col], limit, out=xyxy[:, col])
        det.count = count
        return det

    def detect(self, frame: np.ndarray) -> Detections:
        """Detections in ``frame`` (BGR uint8, any size); views valid until the next call."""
        self.buffer.write(frame)
        self.invoke()
        return self.postprocess()

    def _copy_postprocess_outputs(self) -> int:
        det, fns = self.detections, self._views
        count = min(int(fns["count"]()[0]), det.capacity)
        # Only the first `count` rows are defined: the op leaves the rest uninitialised (NaN seen).
        np.copyto(self._yxyx[:count], fns["boxes"]()[0, :count])
        np.copyto(det._scores[:count], fns["scores"]()[0, :count])
        np.copyto(det._class_ids[:count], fns["classes"]()[0, :count], casting="unsafe")
        # Post-process outputs come best-first; keep the prefix above our threshold.
        np.greater_equal(det._scores[:count], self.score_threshold, out=self._keep[:count])
        kept = int(np.count_nonzero(self._keep[:count]))
        return kept

    def _decode_raw_head(self) -> int:
        det = self.detections
        for role, dst in (("encodings", self._encodings), ("logits", self._logits)):
            out = self.outputs[role]
            src = self._views[role]().reshape(dst.shape)
            if out.dtype == np.float32:
                np.copyto(dst, src)
            else:
                scale, zero_point = out.quantization
                np.subtract(src, zero_point, out=dst, casting="unsafe")
                dst *= scale
        return self._raw.decode(self._encodings, self._logits, self.score_threshold,
                                self._yxyx, det._scores, det._class_ids)

    # ---- description --------------------------------------------------------------------------

    def set_threads(self, num_threads: int) -> None:
        """Run on a fresh backend with ``num_threads`` (engines fix their thread count when loaded).

        The backend is opened with the same ``backend_options`` as the first. The model, its input
        geometry and its outputs stay as they are; recurrent state restarts at zero. Used while the
        live loop measures which thread count is faster end to end.
        """
        if num_threads == self.backend.info.num_threads:
            return
        backend = open_backend(self.model_path, self.backend.info.name, num_threads, **self.backend_options)
        by_index = {spec.index: spec for spec in backend.outputs}
        self.outputs = {role: by_index[spec.index] for role, spec in self.outputs.items()}
        self._views = {role: backend.view(spec) for role, spec in self.outputs.items()}
        self.buffer.rebind(backend.view(backend.image))
        self.backend = backend

    def twin(self, num_threads: int) -> "Detector":
        """Another detector of this model on an engine of its own with ``num_threads``: the same
        runtime, engine options, labels, score threshold, resize mode and box capacity."""
        backend = open_backend(self.model_path, self.backend.info.name, num_threads, **self.backend_options)
        return Detector(backend=backend, labels=list(self.labels), score_threshold=self.score_threshold,
                        resize=self.buffer.mode, max_detections=self.detections.capacity, info=self.info,
                        backend_options=self.backend_options)

    @property
    def runtime_info(self) -> BackendInfo:
        return self.backend.info

    def describe(self) -> str:
        source = f" (from {self.labels_source})" if self.labels_source not in (None, "given") else ""
        return (f"{self.model_path.name}: {self.head} head, input {self.input_size[1]}x{self.input_size[0]} "
                f"{self.buffer.encoding.dtype} ({self.buffer.encoding.kind}), {len(self.labels)} labels{source}, "
                f"runtime {self.runtime_info.describe()}")
