"""The parts of ``edge run``'s resident memory for a model and a :class:`Setup`, one :class:`Component` each.

Every component is either derived from the model file and the setup (sizes of tensors, frames and
buffers that the code allocates and touches) or a figure measured once per runtime version and
machine and stored in ``edge/plan/baseline.json`` (``edge plan --measure-baseline`` regenerates it).
Resident memory is what counts, so only what is *touched* is counted: ``np.empty`` and ``np.zeros``
buffers that nothing writes (the FrameBuffer's resize buffer when the capture thread resizes, ring
slots a lossless source never reaches) are allocated but not resident.

Steady state, per process:

- ``baseline``: Python, numpy, OpenCV, the edge modules ``edge run`` imports and the runtime module
  (measured), and the runtime's first-use cost: kernel code paged in by the first interpreter
  (measured as the first interpreter's RSS minus a second one's in the same process);
- ``weights``: the model file. LiteRT maps it (measured: the mapping's resident pages equal the file
  size), and every page is read while XNNPACK packs the weights, so the whole file is resident;
- ``arena``: :func:`edge.plan.arena.plan_arena` (TFLite's greedy-by-size plan) plus variables;
- ``xnnpack``: XNNPACK's packed copies of the weights of the ops it runs (``ratio`` x their bytes;
  the ratio comes from two models, see :func:`edge.plan.baseline.fit_interpreter`) and its
  indirection buffers (one pointer per kernel tap per output row step of every convolution it
  runs, from the op shapes);
- ``interpreter overhead``: per-interpreter structures (operators, the post-process op's vectors),
  measured with the ratio.

Per camera: the synthetic source's background and frame, the capture ring (``RING_SLOTS`` resize
buffers, all written when the ring is presized; frames: the slots a source reaches, 2 for a lossless
source such as synthetic or a file, 3 for a live camera), the FrameBuffer's staging buffer (models
whose input needs an affine encoding), the detector's output buffers, and with a video or preview
sink the annotation canvas, the preview's frame copy and JPEG and the video writer's buffers.
Measured fixed costs: the pipeline's first use (OpenCV and numpy code, numpy.random, threads) and
each further camera's (threads and their allocator arenas), each sink's.

:mod:`edge.plan.predict` adds them up, with the freed source-build memory glibc keeps resident
(:mod:`edge.plan.allocator`); the measured figures come from :mod:`edge.plan.baseline`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from edge.contract.tflite_file import POSTPROCESS_OP
from edge.errors import EdgeError
from edge.plan.arena import ArenaPlan
from edge.plan.graph import Graph

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
POINTER = struct.calcsize("P")
SINKS = ("json", "video", "preview")
THREADS_AUTO = "auto"
XNNPACK_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
SYNTHETIC_BAND_VALUES = 1 << 20  # edge.live.synthetic builds its background in bands of ~1M float64 values
LOSSLESS_RING_FRAMES = 2  # held by the detector + being written: a lossless reader waits for the detector
LIVE_RING_FRAMES = 3  # + the newest, not yet taken


@dataclass
class Setup:
    width: int = 640
    height: int = 480
    cameras: int = 1
    threads: int | str = THREADS_AUTO
    sinks: tuple[str, ...] = ()
    live: bool = False  # a camera or stream (3 ring frames) rather than synthetic/files (2)
    cores: int = 0  # usable cores on the board (0: this machine's), for --threads auto
    detectors: int = 1  # copies of the model: one camera's frames in turn, or sharing the cameras (--detectors K)
    detectors_auto: bool = False  # edge run --detectors auto: the tuner may try two (see may_take_two_detectors)

    @property
    def reads_inline(self) -> bool:
        """``edge run --capture auto`` reads a lone source that is not live on the loop's thread on one
        usable core (:func:`edge.live.inline_capture.choose_capture`): no ring, one resize buffer."""
        return self.cameras == 1 and not self.live and (self.cores or _usable_cores()) == 1

    @property
    def may_take_two_detectors(self) -> bool:
        """``edge run --threads auto`` on one source and several cores also tries two detectors taking
        the frames in turn (:func:`edge.detector.threads.layout_candidates`), and keeps them when faster."""
        return (self.detectors_auto and self.threads == THREADS_AUTO and self.cameras == 1 and self.detectors == 1
                and not self.reads_inline and (self.cores or _usable_cores()) > 1)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3


@dataclass
class Component:
    name: str
    bytes: int
    group: str  # baseline | interpreter | camera | sink | transient
    note: str = ""
    per_camera: bool = False


# ---- model-side figures -------------------------------------------------------------------------

def page_round(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def xnnpack_ops(graph: Graph) -> list:
    """The ops XNNPACK runs: every builtin here (the stock models' custom post-process op stays in
    TFLite). An approximation: a few builtins with unusual shapes stay in TFLite too."""
    return [op for op in graph.operators if not op.custom]


def indirection_bytes(graph: Graph, pointer: int = POINTER) -> int:
    """XNNPACK's indirection buffers: for a convolution other than 1x1/stride 1 (run as igemm) one
    pointer per output pixel and kernel tap; for a depthwise convolution one per kernel tap per row
    step (``kh * kw + (ow - 1) * min(stride_w, kw) * kh`` per output row)."""
    total = 0
    for op in xnnpack_ops(graph):
        if op.name not in XNNPACK_CONV_OPS or len(op.inputs) < 2 or not op.outputs:
            continue
        filt, out = graph.tensors[op.inputs[1]].shape, graph.tensors[op.outputs[0]].shape
        if len(filt) != 4 or len(out) != 4:
            continue
        kh, kw, oh, ow = filt[1], filt[2], out[1], out[2]
        sw, sh = op.options.get("stride_w", 1), op.options.get("stride_h", 1)
        dw = op.options.get("dilation_w", 1)
        if op.name == "CONV_2D":
            if (kh, kw, sw, sh) != (1, 1, 1, 1):
                total += oh * ow * kh * kw * pointer
        else:
            step_w = kw if dw > 1 else min(sw, kw)
            total += oh * (kh * kw + (ow - 1) * step_w * kh) * pointer
    return total


def delegated_weight_bytes(graph: Graph) -> int:
    return graph.weights_of(xnnpack_ops(graph))


def interpreter_parts(graph: Graph, plan: ArenaPlan, coefficients: dict) -> list[Component]:
    """What one interpreter of ``graph`` adds (without the runtime's first-use cost)."""
    ratio = float(coefficients["xnnpack_packed_ratio"])
    weights = delegated_weight_bytes(graph)
    indirection = indirection_bytes(graph)
    return [
        Component("weights (model file, mapped)", page_round(graph.file_bytes), "interpreter",
                  f"{graph.file_bytes:,} B file; LiteRT maps it and XNNPACK reads every weight, so all pages are "
                  f"resident; {graph.weight_bytes:,} B of it are weights"),
        Component("arena", plan.size + plan.persistent, "interpreter",
                  f"greedy-by-size plan of {len(plan.allocations)} tensors ({plan.planned_bytes:,} B without reuse; "
                  f"peak live {plan.peak_live:,} B)" + (f"; variables {plan.persistent:,} B" if plan.persistent else "")),
        Component("xnnpack packed weights", round(ratio * weights), "interpreter",
                  f"{ratio:.3f} x {weights:,} B of weights of the ops it runs"),
        Component("xnnpack indirection buffers", indirection, "interpreter",
                  f"{POINTER}-byte pointers per kernel tap of its convolutions"),
        Component("interpreter overhead", int(coefficients["interpreter_overhead_bytes"]), "interpreter",
                  "operators and kernel state (measured)"),
    ]


# ---- the detector and the camera-side buffers ---------------------------------------------------

@dataclass
class _Spec:
    index: int
    name: str
    shape: tuple
    dtype: object
    quantization: tuple = (0.0, 0)


def detector_facts(graph: Graph) -> dict:
    """The image input, head kind and input encoding as ``edge run`` would find them, from the file."""
    import numpy as np

    from edge.contract.heads import anchor_count, classify_head, image_input, raw_head_roles
    from edge.contract.modelinfo import HEAD_POSTPROCESS
    from edge.contract.tflite_file import load_model_info

    def spec(index: int) -> _Spec:
        t = graph.tensors[index]
        dtype = np.dtype(t.dtype) if t.dtype in ("float32", "uint8", "int8", "int32", "int64", "float16") else t.dtype
        return _Spec(index, t.name, t.shape, dtype, graph.quantization.get(index, (0.0, 0)))

    facts: dict = {"detector": False}
    inputs = [spec(i) for i in graph.inputs if i >= 0]
    outputs = [spec(i) for i in graph.outputs if i >= 0]
    try:
        image = image_input(inputs, graph.path)
        info = None
        try:
            info = load_model_info(graph.path)
        except EdgeError:
            pass
        kind = classify_head(outputs, POSTPROCESS_OP in graph.op_names, info.head if info else None, graph.path)
    except EdgeError as exc:
        facts["reason"] = str(exc).split(": ", 1)[-1]
        return facts
    facts.update(detector=True, head=kind, input_height=int(image.shape[1]), input_width=int(image.shape[2]),
                 input_dtype=str(image.dtype))
    encoding = "raw"
    try:
        from edge.contract.modelinfo import Normalization
        from edge.detector.buffer import InputEncoding

        encoding = InputEncoding.for_tensor(image.dtype, image.quantization,
                                            (info.normalization if info else None) or Normalization()).kind
    except EdgeError as exc:
        facts["reason"] = str(exc)
    facts["encoding"] = encoding
    facts["resize"] = (info.resize if info and info.resize else "stretch")
    capacity = 0
    raw_floats = 0
    if kind == HEAD_POSTPROCESS:
        boxes = [o for o in outputs if len(o.shape) == 3 and o.shape[-1] == 4]
        capacity = int(boxes[0].shape[1]) if boxes else 100
    else:
        roles = raw_head_roles(outputs)
        anchors = anchor_count(roles["encodings"])
        classes = int(roles["logits"].shape[-1])
        capacity = int(info.max_detections) if info and info.max_detections else 100
        raw_floats = anchors * (4 + classes)
    facts["capacity"] = capacity
    facts["raw_head_floats"] = raw_floats
    return facts


def resize_fit(facts: dict, width: int, height: int) -> tuple[int, int]:
    """(h, w) of a frame resized into the model input (the letterbox keeps the aspect ratio)."""
    mh, mw = facts["input_height"], facts["input_width"]
    if facts.get("resize") == "letterbox":
        scale = min(mw / width, mh / height)
        return max(1, min(mh, round(height * scale))), max(1, min(mw, round(width * scale)))
    return mh, mw


def synthetic_band_peak(width: int, height: int) -> int:
    """The float64 arrays alive at once while ``SyntheticSource`` builds its background in bands of
    about a million values: each band makes its noise and noise + gradient while the previous
    band's sum is still referenced, so the peak is the largest ``previous + 2 x current``."""
    band = max(1, SYNTHETIC_BAND_VALUES // max(1, width * 3))
    row = width * 3 * 8
    peak, previous = 0, 0
    for y0 in range(0, height, band):
        current = (min(height, y0 + band) - y0) * row
        peak = max(peak, previous + 2 * current)
        previous = current
    return peak


def camera_parts(facts: dict, setup: Setup, coefficients: dict) -> list[Component]:
    """Per-camera buffers (one camera's worth; the caller multiplies)."""
    from edge.live.turns import ring_slots

    # One source with several detectors (edge run --detectors K): each holds a frame and may park one.
    in_turn = setup.detectors if setup.cameras == 1 else 1
    ring = ring_slots(2 if setup.may_take_two_detectors else in_turn)  # the ring is sized for what may run
    frame = setup.frame_bytes
    parts = [Component("synthetic source (background + frame)", 2 * frame, "camera",
                       f"2 x {setup.width}x{setup.height}x3; a camera or file source holds its decoder's frames instead",
                       per_camera=True)]
    inline = setup.reads_inline
    if inline:
        parts.append(Component("capture ring frames", 0, "camera",
                               "none: read on the loop's thread (one usable core), the frame is the source's own",
                               per_camera=True))
    else:
        ring_frames = (LIVE_RING_FRAMES if setup.live else LOSSLESS_RING_FRAMES) + 2 * (in_turn - 1)
        parts.append(Component("capture ring frames", ring_frames * frame, "camera",
                               f"{ring} slots allocated, {ring_frames} reached by a "
                               f"{'live' if setup.live else 'lossless'} source"
                               + (f" and {in_turn} detectors taking its frames in turn" if in_turn > 1 else ""),
                               per_camera=True))
    if facts.get("detector"):
        fh, fw = resize_fit(facts, setup.width, setup.height)
        slots = 1 if inline else ring
        parts.append(Component("capture ring resize buffers", slots * fh * fw * 3, "camera",
                               f"{slots} x {fw}x{fh}x3, written when " +
                               ("the capture is presized" if inline else "the ring is presized"), per_camera=True))
        staging = facts["input_height"] * facts["input_width"] * 3 if facts.get("encoding") == "affine" else 0
        parts.append(Component("FrameBuffer staging", staging, "camera",
                               "uint8 RGB before the affine encoding" if staging else
                               f"none: {facts.get('encoding')} input is written straight into the tensor "
                               "(its resize buffer is allocated but never touched)", per_camera=True))
        detections = facts["capacity"] * (16 + 16 + 4 + 8 + 1) + 4 * facts["raw_head_floats"] * 2
        parts.append(Component("detector outputs", detections, "camera",
                               "Detections" + (" and the raw head's float copies" if facts["raw_head_floats"] else ""),
                               per_camera=True))
    if any(s in setup.sinks for s in ("video", "preview")):
        parts.append(Component("annotation canvas", frame, "camera", f"{setup.width}x{setup.height}x3",
                               per_camera=True))
    return parts


def sink_parts(setup: Setup, coefficients: dict) -> list[Component]:
    parts = []
    n = setup.cameras
    for sink in setup.sinks:
        c = coefficients.get("sinks", {}).get(sink)
        if c is None:
            raise EdgeError(f"--sinks {sink}: not in the measured baseline; run edge plan --measure-baseline")
        extra = 0
        note = ""
        if sink == "preview":
            extra = setup.frame_bytes
            note = "the exchange's frame copy, "
        per_camera = extra + c["per_pixel"] * setup.pixels + c["camera_fixed"]
        total = c["first_fixed"] - c["camera_fixed"] + n * per_camera
        parts.append(Component(f"{sink} sink", round(total), "sink",
                               f"{note}{c['per_pixel']:.2f} B/pixel (encoder buffers{', JPEG' if sink == 'preview' else ''}) "
                               f"+ {c['camera_fixed'] / 2**20:.1f} MiB per camera (threads, codec state) "
                               f"+ {(c['first_fixed'] - c['camera_fixed']) / 2**20:.1f} MiB once (code, measured)"))
    return parts


def _usable_cores() -> int:
    from edge.provenance import usable_cores

    return usable_cores()
