"""A drawing (pen strokes) to the 28x28 input the MNIST model sees, the way MNIST digits were made.

This docstring is the one description of the algorithm. It exists twice as code: here, for Python
clients who hold raw strokes, and in ``service/app/static/drawing.js``, which the web page runs. A test
(``tests/integration/test_browser.py``) runs both on the same strokes and requires the same array to 1e-6.

Input: ``strokes``, a list of strokes, each a list of ``(x, y)`` points in the drawing's own units
(canvas pixels, y down), and ``pen_width``, the stroke's width in those units. The pen is a disc:
a stroke is every point within ``pen_width / 2`` of its polyline (a single point is a dot).

1. **Crop.** The ink's bounding box is the points' box grown by the pen radius on every side.
2. **Scale.** One factor ``s = 20 / max(box width, box height)`` maps the box into a 20x20 square,
   keeping the aspect ratio (as NIST's digits were normalised into a 20x20 box).
3. **Rasterise, anti-aliased.** A pixel's value is its coverage by the scaled pen, approximated
   by the distance ``d`` from the pixel's centre to the nearest stroke segment:
   ``clip(r + 0.5 - d, 0, 1)`` with ``r = s * pen_width / 2``; a value in [0, 1], 1 = ink. Pixel
   ``(row i, column j)`` has its centre at ``(j + 0.5, i + 0.5)``.
4. **Centre by centre of mass.** The 20x20 rendering's centre of mass (value-weighted mean of
   pixel centres) is moved to the centre ``(14, 14)`` of a 28x28 field, and the strokes are
   rendered again there (a sub-pixel shift, rendered exactly rather than resampled).

Output: float32 (28, 28), row-major, values in [0, 1], white ink (1) on black (0): what the MNIST
model's ``preprocessing`` metadata describes. A drawing with no points gives all zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIELD = 28  # the output side, in pixels
BOX = 20  # the side of the square the ink is scaled into

Strokes = Sequence[Sequence[Sequence[float]]]


def strokes_to_mnist(strokes: Strokes, pen_width: float) -> np.ndarray:
    """The (28, 28) float32 MNIST input for ``strokes`` drawn with a pen ``pen_width`` wide.

    Parameters
    ----------
    strokes : sequence of strokes, each a sequence of (x, y) points
    pen_width : float
        The pen's diameter, in the points' units (> 0).
    """
    if not pen_width > 0:
        raise ValueError(f"pen_width must be positive, got {pen_width}")
    polylines = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes if len(s)]
    if not polylines:
        return np.zeros((FIELD, FIELD), dtype=np.float32)
    points = np.concatenate(polylines)
    radius = pen_width / 2.0
    low = points.min(axis=0) - radius
    size = points.max(axis=0) + radius - low
    scale = BOX / float(size.max())
    placed = [(p - low) * scale for p in polylines]  # the box's corner at (0, 0), its long side 20

    box = render(placed, radius * scale, BOX)
    total = float(box.sum())
    if total == 0.0:  # unreachable for a positive pen, kept so a division can never be by zero
        return np.zeros((FIELD, FIELD), dtype=np.float32)
    centres = np.arange(BOX) + 0.5
    mass_x = float((box.sum(axis=0) * centres).sum()) / total
    mass_y = float((box.sum(axis=1) * centres).sum()) / total
    shift = np.array([FIELD / 2.0 - mass_x, FIELD / 2.0 - mass_y])
    return render([p + shift for p in placed], radius * scale, FIELD).astype(np.float32)


def render(polylines: list[np.ndarray], radius: float, side: int) -> np.ndarray:
    """Anti-aliased coverage (side, side) float64 of pen ``radius`` along ``polylines`` (step 3)."""
    centres = np.arange(side, dtype=np.float64) + 0.5
    px, py = np.meshgrid(centres, centres)  # px[i, j] = j + 0.5, py[i, j] = i + 0.5
    nearest = np.full((side, side), np.inf)
    for line in polylines:
        starts = line if len(line) == 1 else line[:-1]
        ends = line if len(line) == 1 else line[1:]
        for (ax, ay), (bx, by) in zip(starts, ends, strict=True):
            nearest = np.minimum(nearest, segment_distance(px, py, ax, ay, bx, by))
    return np.clip(radius + 0.5 - nearest, 0.0, 1.0)


def segment_distance(px: np.ndarray, py: np.ndarray, ax: float, ay: float, bx: float, by: float) -> np.ndarray:
    """Distance from each point (px, py) to the segment from (ax, ay) to (bx, by) (a point if equal)."""
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    if length2 == 0.0:
        return np.hypot(px - ax, py - ay)
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))
