"""Box coding of the TF OD API ``faster_rcnn_box_coder``, shared by training and the runtime.

Encodings are ``(ty, tx, th, tw)`` relative to an anchor ``(ycenter, xcenter, h, w)``; boxes are
normalised corners ``(ymin, xmin, ymax, xmax)``. Scales default to the OD API's 10, 10, 5, 5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_EPSILON = 1e-8


@dataclass(frozen=True)
class BoxCoderScales:
    y: float = 10.0
    x: float = 10.0
    h: float = 5.0
    w: float = 5.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "BoxCoderScales":
        return cls(**data) if data else cls()

    def to_dict(self) -> dict:
        return asdict(self)


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray, scales: BoxCoderScales = BoxCoderScales()) -> np.ndarray:
    """Corner boxes ``[N, 4]`` (yxyx, normalised) matched to ``anchors`` ``[N, 4]`` -> encodings."""
    ymin, xmin, ymax, xmax = np.moveaxis(np.asarray(boxes, dtype=np.float32), -1, 0)
    ya, xa, ha, wa = np.moveaxis(np.asarray(anchors, dtype=np.float32), -1, 0)
    h = np.maximum(ymax - ymin, _EPSILON)
    w = np.maximum(xmax - xmin, _EPSILON)
    ha = np.maximum(ha, _EPSILON)
    wa = np.maximum(wa, _EPSILON)
    ty = ((ymin + ymax) / 2 - ya) / ha * scales.y
    tx = ((xmin + xmax) / 2 - xa) / wa * scales.x
    th = np.log(h / ha) * scales.h
    tw = np.log(w / wa) * scales.w
    return np.stack([ty, tx, th, tw], axis=-1)


class BoxDecoder:
    """Decodes ``[A, 4]`` encodings into corner boxes with no per-call allocation.

    The anchors and every intermediate array are made once; :meth:`decode` writes into ``out``.
    """

    def __init__(self, anchors: np.ndarray, scales: BoxCoderScales = BoxCoderScales()) -> None:
        anchors = np.asarray(anchors, dtype=np.float32)
        self.num_anchors = anchors.shape[0]
        self._ya, self._xa = anchors[:, 0].copy(), anchors[:, 1].copy()
        self._ha, self._wa = anchors[:, 2].copy(), anchors[:, 3].copy()
        self._scales = scales
        self._yc = np.empty(self.num_anchors, np.float32)
        self._xc = np.empty(self.num_anchors, np.float32)
        self._half_h = np.empty(self.num_anchors, np.float32)
        self._half_w = np.empty(self.num_anchors, np.float32)

    def decode(self, encodings: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``encodings`` ``[A, 4]`` (ty, tx, th, tw) -> ``out`` ``[A, 4]`` (ymin, xmin, ymax, xmax)."""
        s = self._scales
        np.multiply(encodings[:, 0], self._ha, out=self._yc)
        self._yc /= s.y
        self._yc += self._ya
        np.multiply(encodings[:, 1], self._wa, out=self._xc)
        self._xc /= s.x
        self._xc += self._xa
        np.divide(encodings[:, 2], s.h, out=self._half_h)
        np.exp(self._half_h, out=self._half_h)
        self._half_h *= self._ha
        self._half_h *= 0.5
        np.divide(encodings[:, 3], s.w, out=self._half_w)
        np.exp(self._half_w, out=self._half_w)
        self._half_w *= self._wa
        self._half_w *= 0.5
        np.subtract(self._yc, self._half_h, out=out[:, 0])
        np.subtract(self._xc, self._half_w, out=out[:, 1])
        np.add(self._yc, self._half_h, out=out[:, 2])
        np.add(self._xc, self._half_w, out=out[:, 3])
        return out


def decode_boxes(encodings: np.ndarray, anchors: np.ndarray, scales: BoxCoderScales = BoxCoderScales()) -> np.ndarray:
    """Convenience form of :class:`BoxDecoder` for one-off use (training checks, tests)."""
    encodings = np.asarray(encodings, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(encodings)
    return BoxDecoder(anchors, scales).decode(encodings, out)
