"""What an inference engine offers the detector: the one seam between edgekit and LiteRT, ONNX Runtime, ...

A :class:`Backend` is loaded and allocated in its constructor. The detector asks it for

- the model's inputs and outputs as :class:`TensorSpec` (engine-neutral: shape, dtype, quantization),
- a *view function* per tensor (:meth:`Backend.view`): called where needed, it returns an array the
  caller may read or write in place; the array must not be kept across :meth:`Backend.invoke` (LiteRT
  refuses to run while a view of its buffers is alive, and an engine may move them),
- :meth:`Backend.invoke`, which also carries recurrent state (outputs fed back as the next inputs),
- names by which a signature labels its outputs, the model's operator kinds, memory figures, and a
  name and version for reports.

Nothing above this seam knows which engine runs: the head kind and the output roles are worked out
from the specs by the pure functions of :mod:`edge.contract.heads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge.contract.heads import image_input, recurrent_state_pairs


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``index`` is the engine's handle; ``quantization`` is (scale, zero point),
    ``(0.0, 0)`` for float or unquantized tensors."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: tuple[float, int] = (0.0, 0)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize if self.shape else np.dtype(self.dtype).itemsize


#: How the start-up lines name a device (``BackendInfo.device``).
DEVICE_LABELS = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}


@dataclass(frozen=True)
class BackendInfo:
    """The engine that runs a model, for the start-up line and reports.

    ``warnings``: things that went other than asked (a requested provider missing, so a fallback
    runs), said once at start; ``fallback`` is the short form of the same for the start line.
    """

    name: str  # e.g. "litert", "tflite-runtime", "onnxruntime"
    version: str
    num_threads: int
    note: str | None = None  # something the user should see (a slow runtime)
    device: str = "cpu"
    warnings: tuple[str, ...] = ()
    fallback: str | None = None  # e.g. "cuda not available": shown beside the device

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def device_label(self) -> str:
        return DEVICE_LABELS.get(self.device, self.device)

    def describe(self) -> str:
        where = "" if self.on_cpu and not self.fallback else f" on {self.device}"
        if self.fallback:
            where += f" ({self.fallback})"
        return f"{self.name} {self.version}{where}, {self.num_threads} thread(s)"


class Backend:
    """Base of every engine. Subclasses set ``inputs``, ``outputs``, ``info``, ``operators`` and implement
    :meth:`view`, :meth:`_run` and :meth:`memory`; state pairs and ``invoke`` come from here."""

    model_path: Path
    info: BackendInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    operators: list[str]  # operator kinds in the model (builtin names or custom codes)

    def _setup_state(self) -> None:
        """Find the image input and the recurrent-state pairs; zero the state (engines keep old memory)."""
        self.image = image_input(self.inputs, self.model_path)
        self.state_pairs: list[tuple[TensorSpec, TensorSpec]] = recurrent_state_pairs(
            self.inputs, self.outputs, self.image, self.model_path)
        self._state_views = [(self.view(out), self.view(inp)) for out, inp in self.state_pairs]
        self.reset_state()

    def reset_state(self) -> None:
        for _, state_in in self._state_views:
            state_in().fill(0)

    def view(self, spec: TensorSpec) -> Callable[[], np.ndarray]:
        raise NotImplementedError

    def invoke(self) -> None:
        """Run the model once on what its inputs hold; recurrent outputs become the next inputs."""
        self._run()
        for state_out, state_in in self._state_views:
            np.copyto(state_in(), state_out())

    def _run(self) -> None:
        raise NotImplementedError

    def signature_output_names(self) -> dict[int, str]:
        """``{output index: name}`` from the model's signature, where it has one."""
        return {}

    def model_info(self):
        """The :class:`~edge.contract.modelinfo.ModelInfo` the model carries (metadata or sidecar), or None."""
        return None

    @property
    def has_postprocess(self) -> bool:
        """The model ends in a post-process op (boxes, classes, scores, count come out decoded)."""
        return False

    def memory(self) -> dict:
        """Memory figures in bytes; at least ``tensor_bytes`` (every tensor's size, weights included)."""
        raise NotImplementedError

    @property
    def detection_outputs(self) -> list[TensorSpec]:
        """The outputs that are not recurrent state."""
        state = {out.index for out, _ in self.state_pairs}
        return [o for o in self.outputs if o.index not in state]
