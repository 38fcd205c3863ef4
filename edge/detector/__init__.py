"""One model on one frame: :class:`~edge.detector.buffer.FrameBuffer` (resize and encode into the engine's input),
a backend, decoding into preallocated :class:`~edge.contract.detections.Detections`, and the timed frame step."""
