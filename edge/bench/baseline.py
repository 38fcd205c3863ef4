"""The baseline ``edge bench`` compares against, *the usual pipeline*: per frame, as the common examples write it.

This is deliberately *not* how edgekit runs a model. It follows, step for step, the OpenCV
Raspberry Pi TFLite detection scripts that most tutorials copy (EdjeElectronics'
``TFLite_detection_webcam.py``, itself derived from the TensorFlow Lite object detection
example), per frame:

1. ``cv2.cvtColor(frame, COLOR_BGR2RGB)``: a new full-size RGB frame;
2. ``cv2.resize(frame_rgb, (w, h))``: a new model-size array;
3. ``np.expand_dims(..., axis=0)`` (and, for float models, ``(np.float32(x) - mean) / std``,
   two more model-size float arrays);
4. ``interpreter.set_tensor(input_index, input_data)``: a copy into the interpreter;
5. ``invoke()``;
6. ``interpreter.get_tensor(i)[0]`` for boxes, classes and scores: a copy of each;
7. a Python loop that filters by score and scales boxes to pixels, building a list of dicts.

It is written honestly, not made slow on purpose: no extra ``frame.copy()`` (some scripts do one),
no per-frame ``get_input_details()`` (the TF example does one), and the capture step is left to the
caller, so in ``edge bench`` it reads from the same source as our pipeline (a ``cap.read()`` that
returns a new frame every time, as in the examples, would add a frame's size per frame to it).
The output tensor order is given by the caller (``edge bench`` takes it from ``Detector.outputs``,
found by signature name, then shape) so both pipelines read the same tensors; the scripts hard-code it.
Only models with the ``TFLite_Detection_PostProcess`` op are supported: examples do not decode raw heads.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.detector.step import Frame
from edge.errors import EdgeError
from edge.backends.tflite import RuntimeInfo, load_interpreter

OUTPUT_ROLES = ("boxes", "classes", "scores")


class BaselinePipeline:
    """The usual pipeline: same model and threads as ours, the examples' per-frame code.

    ``output_indices`` maps ``boxes``/``classes``/``scores`` to the interpreter's output tensor
    indices. Results are a list of ``{"box": (x0, y0, x1, y1) pixels, "class_id", "score"}``.
    """

    def __init__(self, model_path: str | Path, *, output_indices: dict[str, int], score_threshold: float = 0.5,
                 num_threads: int | None = None, runtime: str | None = None,
                 mean: float = 127.5, std: float = 127.5) -> None:
        missing = [role for role in OUTPUT_ROLES if role not in output_indices]
        if missing:
            raise EdgeError(f"{model_path}: the usual-pipeline baseline needs TFLite_Detection_PostProcess "
                            f"outputs (missing {', '.join(missing)})")
        self.interpreter, self.runtime_info = load_interpreter(model_path, runtime, num_threads, allocate=True)
        self.runtime_info: RuntimeInfo
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        self.height = int(self.input_details[0]["shape"][1])
        self.width = int(self.input_details[0]["shape"][2])
        self.input_dtype = np.dtype(self.input_details[0]["dtype"])
        self.floating_model = self.input_dtype == np.float32
        self.input_scale, self.input_zero_point = self.input_details[0]["quantization"]
        self.input_mean, self.input_std = float(mean), float(std)
        self.min_conf_threshold = float(score_threshold)
        position = {d["index"]: i for i, d in enumerate(self.output_details)}
        self.boxes_idx = position[output_indices["boxes"]]
        self.classes_idx = position[output_indices["classes"]]
        self.scores_idx = position[output_indices["scores"]]
        self.imH, self.imW = 0, 0

    def preprocess(self, frame: Frame) -> None:
        frame = frame.image
        self.imH, self.imW = frame.shape[:2]
        frame_rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        frame_resized = cv2.resize(frame_rgb, (self.width, self.height))
        input_data = np.expand_dims(frame_resized, axis=0)
        if self.floating_model:
            input_data = (np.float32(input_data) - self.input_mean) / self.input_std
        elif self.input_dtype != np.uint8:  # int8 inputs: quantize as the TFLite docs show
            real = (np.float32(input_data) - self.input_mean) / self.input_std
            input_data = np.clip(np.round(real / self.input_scale + self.input_zero_point),
                                 -128, 127).astype(self.input_dtype)
        self.interpreter.set_tensor(self.input_details[0]["index"], input_data)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def postprocess(self) -> list[dict]:
        boxes = self.interpreter.get_tensor(self.output_details[self.boxes_idx]["index"])[0]
        classes = self.interpreter.get_tensor(self.output_details[self.classes_idx]["index"])[0]
        scores = self.interpreter.get_tensor(self.output_details[self.scores_idx]["index"])[0]
        imH, imW = self.imH, self.imW
        detections = []
        for i in range(len(scores)):
            if (scores[i] > self.min_conf_threshold) and (scores[i] <= 1.0):
                ymin = int(max(1, (boxes[i][0] * imH)))
                xmin = int(max(1, (boxes[i][1] * imW)))
                ymax = int(min(imH, (boxes[i][2] * imH)))
                xmax = int(min(imW, (boxes[i][3] * imW)))
                detections.append({"box": (xmin, ymin, xmax, ymax), "class_id": int(classes[i]),
                                   "score": float(scores[i])})
        return detections

    def detect(self, frame: np.ndarray) -> list[dict]:
        self.preprocess(Frame.of(frame))
        self.invoke()
        return self.postprocess()
