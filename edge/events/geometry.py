"""Where anchors lie relative to zone polygons and line segments, for every track slot at once.

:class:`Polygons` tests ``[max_tracks, zones]`` anchor points against each zone's polygon (the
even-odd rule); :class:`Segments` says which side of each directed line ``[max_tracks, lines]``
points are on, and whether the path from an earlier point cut the segment between its ends.
Coordinates are pixels (:class:`~edge.events.zones.Zones` resolves the config to them).

Memory: the shapes are tiled once, at construction, into preallocated ``[max_tracks, regions]``
(polygons ``[max_tracks, zones, vertices]``) arrays, and every call works in place in them: numpy
(2.x) copies a broadcast or 2-D strided operand of a ufunc into a temporary, so each operand here
is a same-shape contiguous array.
"""

from __future__ import annotations

import numpy as np


def _tiled(values, shape) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(values, shape), np.float64)


class Polygons:
    """Zone polygons (``[points, 2]`` pixel arrays) tiled for ``m`` track slots.

    Polygons are padded to the longest by repeating their last vertex (a zero-length edge never
    straddles a horizontal, so it adds nothing to the crossing count).
    """

    def __init__(self, polygons: list[np.ndarray], m: int) -> None:
        nz = len(polygons)
        v = max([len(p) for p in polygons] + [1])
        xi, yi = np.zeros((nz, v)), np.zeros((nz, v))
        for z, pts in enumerate(polygons):
            xi[z, : len(pts)], yi[z, : len(pts)] = pts[:, 0], pts[:, 1]
            xi[z, len(pts):], yi[z, len(pts):] = pts[-1, 0], pts[-1, 1]
        xj, yj = np.roll(xi, 1, axis=1), np.roll(yi, 1, axis=1)  # each vertex's previous one
        dy = yj - yi
        slope = np.divide(xj - xi, dy, out=np.zeros_like(dy), where=dy != 0)
        shape3 = (m, nz, v)
        self._xi, self._yi = _tiled(xi, shape3), _tiled(yi, shape3)
        self._yj, self._slope = _tiled(yj, shape3), _tiled(slope, shape3)
        self._px, self._py, self._f = (np.zeros(shape3) for _ in range(3))
        self._b1, self._b2 = np.zeros(shape3, bool), np.zeros(shape3, bool)

    def contains(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        """``out[slot, zone]``: whether point ``(x, y)`` (``[m, zones, 1]`` views) is inside the zone's
        polygon. Even-odd rule: a ray from the point to the right crosses the polygon's edges an
        odd number of times iff the point is inside."""
        py, px, f, b1, b2 = self._py, self._px, self._f, self._b1, self._b2
        np.copyto(py, y)
        np.copyto(px, x)
        np.greater(self._yi, py, out=b1)
        np.greater(self._yj, py, out=b2)
        np.not_equal(b1, b2, out=b1)  # the edge straddles the point's horizontal
        np.subtract(py, self._yi, out=f)
        np.multiply(f, self._slope, out=f)
        np.add(f, self._xi, out=f)  # x where the edge meets that horizontal
        np.less(px, f, out=b2)  # ... right of the point
        np.logical_and(b1, b2, out=b1)
        np.logical_xor.reduce(b1, axis=2, out=out)


class Segments:
    """Directed line segments A -> B (``[2, 2]`` pixel arrays) tiled for ``m`` track slots: A,
    B - A and |B - A|^2 per line. After :meth:`sides_and_cuts`, :attr:`cuts` says per (slot, line)
    whether the path given cut the segment."""

    def __init__(self, segments: list[np.ndarray], m: int) -> None:
        nl = len(segments)
        seg = np.array(segments, np.float64).reshape(nl, 2, 2)
        shape2 = (m, nl)
        self._ax, self._ay = _tiled(seg[:, 0, 0], shape2), _tiled(seg[:, 0, 1], shape2)
        self._dx = _tiled(seg[:, 1, 0] - seg[:, 0, 0], shape2)
        self._dy = _tiled(seg[:, 1, 1] - seg[:, 0, 1], shape2)
        self._len2 = self._dx ** 2 + self._dy ** 2
        self._f = [np.zeros(shape2) for _ in range(3)]
        self._b = [np.zeros(shape2, bool) for _ in range(2)]
        self.cuts = np.zeros(shape2, bool)

    def sides_and_cuts(self, x: np.ndarray, y: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                       out: np.ndarray) -> None:
        """``out``: the side of each line point ``(x, y)`` is on (+1 right of A->B on screen, -1 left,
        0 on the line); :attr:`cuts`: whether the path from ``(x0, y0)`` to ``(x, y)`` cuts the
        segment between its ends. All ``[m, lines]``."""
        f1, f2, f3 = self._f
        b2, b3 = self._b
        on_path = self.cuts
        lx, ly, lastx, lasty = x, y, x0, y0
        ax, ay, dx, dy = self._ax, self._ay, self._dx, self._dy
        # cross(AB, P - A): with y pointing down, > 0 is the right-hand side walking from A to B
        np.subtract(ly, ay, out=f1)
        np.multiply(f1, dx, out=f1)
        np.subtract(lx, ax, out=f2)
        np.multiply(f2, dy, out=f2)
        np.subtract(f1, f2, out=f1)
        out.fill(0)
        np.greater(f1, 0.0, out=b2)
        np.copyto(out, 1, where=b2)
        np.less(f1, 0.0, out=b2)
        np.copyto(out, -1, where=b2)
        # the same for the last anchor on the confirmed side
        np.subtract(lasty, ay, out=f2)
        np.multiply(f2, dx, out=f2)
        np.subtract(lastx, ax, out=f3)
        np.multiply(f3, dy, out=f3)
        np.subtract(f2, f3, out=f2)
        # the path last -> now meets the line at t = c_last / (c_last - c_now) along it
        np.subtract(f2, f1, out=f3)
        np.not_equal(f3, 0.0, out=on_path)
        np.divide(f2, f3, out=f2, where=on_path)
        # where along AB (0..1) that meeting point lies: dot(P - A, AB) / |AB|^2
        np.subtract(lx, lastx, out=f3)
        np.multiply(f3, f2, out=f3)
        np.add(f3, lastx, out=f3)
        np.subtract(f3, ax, out=f3)
        np.multiply(f3, dx, out=f3)
        np.subtract(ly, lasty, out=f1)
        np.multiply(f1, f2, out=f1)
        np.add(f1, lasty, out=f1)
        np.subtract(f1, ay, out=f1)
        np.multiply(f1, dy, out=f1)
        np.add(f3, f1, out=f3)
        np.divide(f3, self._len2, out=f3)
        np.greater_equal(f3, 0.0, out=b2)
        np.less_equal(f3, 1.0, out=b3)
        np.logical_and(on_path, b2, out=on_path)
        np.logical_and(on_path, b3, out=on_path)
