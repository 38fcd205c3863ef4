"""``Detector``: one model, one interpreter, one FrameBuffer, one Detections; ``detect(frame)``.

Everything is allocated in the constructor. Per frame: the FrameBuffer writes into the input
tensor, ``invoke()``, and outputs are copied (``np.copyto``) into the preallocated Detections.
Output tensors are reached through ``interpreter.tensor(i)`` functions, called where needed and
never kept across ``invoke()`` (LiteRT refuses to run while such a view is alive).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.detector.buffer import STRETCH, FrameBuffer
from edge.contract.detections import Detections
from edge.errors import EdgeError
from edge.contract.labels import load_labels
from edge.contract.tflite_file import TFLiteFile, load_model_info, read_tflite
from edge.contract.modelinfo import HEAD_POSTPROCESS, HEAD_RAW, ModelInfo
from edge.models import default_model_path
from edge.detector.rawhead import RawHeadDecoder
from edge.backends.tflite import RuntimeInfo, load_interpreter

# Output names that signatures of TF2 exports use, and the TF1 export's op-output order.
_SIGNATURE_NAMES = {
    "boxes": ("detection_boxes", "boxes"),
    "classes": ("detection_classes", "classes"),
    "scores": ("detection_scores", "scores"),
    "count": ("num_detections", "count", "num_boxes"),
}
_TF1_SUFFIXES = {"": "boxes", ":0": "boxes", ":1": "classes", ":2": "scores", ":3": "count"}


@dataclass
class _Output:
    index: int
    shape: tuple
    dtype: np.dtype
    quantization: tuple[float, int]


class Detector:
    """Detect objects in BGR frames with an SSD ``.tflite`` (post-process op or raw head).

    ``score_threshold`` is applied on top of the model's own; boxes come back in frame pixels.
    """

    def __init__(self, model_path: str | Path | None = None, *, labels: str | Path | list[str] | None = None,
                 score_threshold: float = 0.5, num_threads: int | None = None, runtime: str | None = None,
                 resize: str | None = None, max_detections: int | None = None,
                 info: ModelInfo | None = None) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not 0.0 <= score_threshold <= 1.0:
            raise EdgeError(f"--score {score_threshold}: must be between 0 and 1")
        self.score_threshold = float(score_threshold)
        self.tflite: TFLiteFile = read_tflite(self.model_path)
        self.info: ModelInfo | None = info or load_model_info(self.model_path, self.tflite)
        self._interpreter, self.runtime_info = load_interpreter(self.model_path, runtime, num_threads)
        interpreter = self._interpreter
        try:
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise EdgeError(f"{self.model_path}: cannot allocate tensors ({exc})") from None
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        image_input = self._find_image_input(inputs)
        self.input_size = (int(image_input["shape"][1]), int(image_input["shape"][2]))
        self.labels = self._resolve_labels(labels)
        info = self.info or ModelInfo()
        self.buffer = FrameBuffer(
            interpreter.tensor(image_input["index"]), image_input["shape"], image_input["dtype"],
            tuple(image_input["quantization"]), info.normalization, info.color, resize or info.resize or STRETCH,
        )
        self._state_pairs = self._find_recurrent_state(inputs, outputs, image_input["index"])
        for _, in_index in self._state_pairs:  # allocate_tensors() leaves memory as it was: state starts at zero
            self._interpreter.tensor(in_index)().fill(0)
        self.head = self._classify_head(outputs)
        if self.head == HEAD_POSTPROCESS:
            self._setup_postprocess(outputs)
            capacity = self._out["boxes"].shape[1]
        else:
            capacity = max_detections or info.max_detections
            self._setup_raw_head(outputs, info)
        self.detections = Detections(capacity, self.labels)
        self._yxyx = np.zeros((capacity, 4), np.float32)  # normalised, model input space
        self._keep = np.zeros(capacity, bool)

    # ---- construction -------------------------------------------------------------------------

    def _find_image_input(self, inputs: list[dict]) -> dict:
        images = [d for d in inputs if len(d["shape"]) == 4 and d["shape"][-1] == 3]
        if len(images) != 1:
            shapes = ", ".join(f"{d['name']} {list(d['shape'])}" for d in inputs)
            raise EdgeError(f"{self.model_path}: expected one image input [1, H, W, 3], found {shapes}")
        return images[0]

    def _resolve_labels(self, labels) -> list[str]:
        if isinstance(labels, (str, Path)):
            return load_labels(labels)
        if labels is not None:
            return list(labels)
        return list(self.info.labels) if self.info else []

    def _find_recurrent_state(self, inputs, outputs, image_index) -> list[tuple[int, int]]:
        """(output index, input index) pairs of LSTM-style state: ``raw_outputs/X`` -> ``raw_inputs/init_X``."""
        by_name = {d["name"]: d for d in outputs}
        pairs = []
        for d in inputs:
            if d["index"] == image_index:
                continue
            name = d["name"]
            stem = name.split("raw_inputs/init_", 1)[-1] if "raw_inputs/init_" in name else None
            match = by_name.get(f"raw_outputs/{stem}") if stem else None
            if match is None or tuple(match["shape"]) != tuple(d["shape"]):
                raise EdgeError(f"{self.model_path}: input {name} {list(d['shape'])} is neither the image nor "
                                f"a recurrent state fed by a raw_outputs/ output")
            pairs.append((match["index"], d["index"]))
        return pairs

    def _classify_head(self, outputs: list[dict]) -> str:
        state_outputs = {o for o, _ in self._state_pairs}
        outputs = [d for d in outputs if d["index"] not in state_outputs]
        declared = self.info.head if self.info else None
        if self.tflite.has_postprocess and declared != HEAD_RAW:
            if len(outputs) != 4:
                raise EdgeError(f"{self.model_path}: TFLite_Detection_PostProcess model with {len(outputs)} "
                                "outputs, expected 4 (boxes, classes, scores, count)")
            return HEAD_POSTPROCESS
        shapes = [tuple(d["shape"]) for d in outputs]
        has_boxes = any(len(s) in (3, 4) and s[-1] == 4 for s in shapes)
        if len(outputs) == 2 and has_boxes:
            return HEAD_RAW
        raise EdgeError(
            f"{self.model_path}: not an SSD detector: outputs {', '.join(str(list(s)) for s in shapes)}; "
            "expected TFLite_Detection_PostProcess or box encodings [1, A, 4] + class scores [1, A, C]"
        )

    def _output(self, d: dict) -> _Output:
        return _Output(d["index"], tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]),
                       tuple(d["quantization"]))

    def _setup_postprocess(self, outputs: list[dict]) -> None:
        roles: dict[str, dict] = {}
        signature_names = self._signature_output_names()
        for d in outputs:
            name = signature_names.get(d["index"], "")
            for role, names in _SIGNATURE_NAMES.items():
                if name in names:
                    roles[role] = d
        if len(roles) != 4:  # TF1 exports: TFLite_Detection_PostProcess, :1, :2, :3
            roles = {}
            for d in outputs:
                base, _, suffix = d["name"].partition(":")
                if base.endswith("TFLite_Detection_PostProcess"):
                    role = _TF1_SUFFIXES.get(f":{suffix}" if suffix else "")
                    if role:
                        roles[role] = d
        if len(roles) != 4:  # by shape: boxes [1,N,4], count [1]; classes before scores in index order
            by_rank = sorted(outputs, key=lambda d: d["index"])
            boxes = [d for d in by_rank if len(d["shape"]) == 3 and d["shape"][-1] == 4]
            count = [d for d in by_rank if len(d["shape"]) == 1]
            pairs = [d for d in by_rank if len(d["shape"]) == 2]
            if len(boxes) != 1 or len(count) != 1 or len(pairs) != 2:
                raise EdgeError(f"{self.model_path}: cannot tell the post-process outputs apart by name or shape")
            roles = {"boxes": boxes[0], "count": count[0], "classes": pairs[0], "scores": pairs[1]}
        self._out = {role: self._output(d) for role, d in roles.items()}
        for role, out in self._out.items():
            if out.dtype != np.float32:
                raise EdgeError(f"{self.model_path}: post-process output '{role}' is {out.dtype}, expected float32")
        self._tensor_fns = {role: self._interpreter.tensor(out.index) for role, out in self._out.items()}

    def _signature_output_names(self) -> dict[int, str]:
        try:
            signatures = self._interpreter._get_full_signature_list()
        except AttributeError:
            return {}
        names = {}
        for signature in signatures.values():
            for name, index in signature.get("outputs", {}).items():
                names[int(index)] = name
        return names

    def _setup_raw_head(self, outputs: list[dict], info: ModelInfo) -> None:
        state_outputs = {o for o, _ in self._state_pairs}
        outputs = [d for d in outputs if d["index"] not in state_outputs]
        box_out = next(d for d in outputs if d["shape"][-1] == 4)
        score_out = next(d for d in outputs if d is not box_out)
        num_anchors = int(np.prod(box_out["shape"][:-1]))
        if info.anchors is None:
            raise EdgeError(f"{self.model_path}: raw SSD head ({num_anchors} anchors) but no anchor config; "
                            f"describe it in {self.model_path.with_suffix('.json')}")
        self._raw = RawHeadDecoder(info, int(score_out["shape"][-1]))
        if self._raw.num_anchors != num_anchors or int(np.prod(score_out["shape"][:-1])) != num_anchors:
            raise EdgeError(f"{self.model_path}: the anchor config gives {self._raw.num_anchors} anchors but the "
                            f"model outputs {list(box_out['shape'])} and {list(score_out['shape'])}")
        self._out = {"encodings": self._output(box_out), "logits": self._output(score_out)}
        self._tensor_fns = {role: self._interpreter.tensor(out.index) for role, out in self._out.items()}
        # Float copies of the outputs, dequantized in place for integer heads.
        self._encodings = np.zeros((num_anchors, 4), np.float32)
        self._logits = np.zeros((num_anchors, int(score_out["shape"][-1])), np.float32)

    # ---- per frame ----------------------------------------------------------------------------

    def preprocess(self, frame: np.ndarray, resized: np.ndarray | None = None) -> None:
        """``frame`` into the input tensor; ``resized``: ``self.buffer.resize(frame)`` made beforehand
        (the capture thread does it), leaving only colour order and encoding to do here."""
        if resized is None:
            self.buffer.write(frame)
        else:
            self.buffer.write_resized(resized, frame.shape)

    def invoke(self) -> None:
        self._interpreter.invoke()
        for out_index, in_index in self._state_pairs:
            np.copyto(self._interpreter.tensor(in_index)(), self._interpreter.tensor(out_index)())

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
        det, fns = self.detections, self._tensor_fns
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
            out = self._out[role]
            src = self._tensor_fns[role]().reshape(dst.shape)
            if out.dtype == np.float32:
                np.copyto(dst, src)
            else:
                scale, zero_point = out.quantization
                np.subtract(src, zero_point, out=dst, casting="unsafe")
                dst *= scale
        return self._raw.decode(self._encodings, self._logits, self.score_threshold,
                                self._yxyx, det._scores, det._class_ids)

    # ---- description --------------------------------------------------------------------------

    @property
    def interpreter(self):
        return self._interpreter

    def describe(self) -> str:
        return (f"{self.model_path.name}: {self.head} head, input {self.input_size[1]}x{self.input_size[0]} "
                f"{self.buffer.encoding.dtype} ({self.buffer.encoding.kind}), {len(self.labels)} labels, "
                f"runtime {self.runtime_info.describe()}")
