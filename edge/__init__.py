"""edgekit's board-side runtime: SSD detection on small boards with low, steady memory.

Imports numpy, OpenCV and a TFLite runtime only -- never TensorFlow.
"""

from edge.buffer import FrameBuffer
from edge.detections import Detections
from edge.detector import Detector
from edge.errors import EdgeError

__all__ = ["Detector", "Detections", "FrameBuffer", "EdgeError"]
