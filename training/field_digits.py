"""A shifted population of handwritten-looking digits: pen strokes drawn through ``training/drawing.py``.

What the served MNIST model meets in the field is not MNIST: digits drawn on a canvas, with a
marker much broader than a pencil, in letter shapes NIST's writers rarely used (a crossed 7, an
open-top 4, a 1 with a flag and a foot, a flat-topped 3), slanted both ways. This module makes
such a population deterministically from a seed, so a fine-tuning run can be measured on it and a
test can feed it to the server as "field traffic".

Each digit 0-9 has a few stroke templates (polylines in a box 1 wide and 1.4 tall, y down). A
sample picks a template, moves every point by one smooth random displacement (so strokes bend,
they do not break), applies a random slant, rotation and width, and draws it with a pen between
0.25 and 0.4 of the digit's height wide (MNIST's strokes are about 0.12 of it), through
:func:`training.drawing.strokes_to_mnist`: the 20x20 box and centre-of-mass placement of MNIST
itself, so the shift is in the strokes, not in the framing. Every one of a few hundred looked at
is plainly its digit; the served network (``mnist/2``) reads 80-83% of them, mostly 8s as 0s, 1s
as 2s or 8s and 5s as 8s (docs/training.md#retraining-on-feedback has the figures).
"""

from __future__ import annotations

import numpy as np

from training.drawing import strokes_to_mnist

HEIGHT = 1.4  # a template's height in its own units (its width is 1)
PEN = (0.25, 0.4)  # the pen's width as a share of the digit's height (MNIST's strokes: ~0.12)
SLANT = 0.5  # the largest shear, x moved by SLANT * (height - y), both ways
ROTATE = 18.0  # degrees, either way
WOBBLE = 0.1  # amplitude of the smooth displacement of the strokes, in template units

Stroke = list[tuple[float, float]]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, points: int = 14) -> Stroke:
    """Points on an ellipse from angle ``start`` to ``stop`` (degrees; 0 = right, 90 = down, y down)."""
    t = np.deg2rad(np.linspace(start, stop, points))
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in t]


def chain(*parts: Stroke) -> Stroke:
    """One stroke through ``parts`` in turn (the pen never lifts)."""
    return [point for part in parts for point in part]


def _templates() -> dict[int, list[list[Stroke]]]:
    """Stroke templates per digit: a list of styles, each a list of strokes."""
    c40 = (0.5 + 0.3 * float(np.cos(np.deg2rad(40))), 0.36 + 0.3 * float(np.sin(np.deg2rad(40))))
    return {
        0: [[arc(0.5, 0.7, 0.42, 0.65, -90, 275)],
            [chain(arc(0.5, 0.7, 0.36, 0.66, -100, 265), [(0.62, 0.1)])]],
        1: [[[(0.5, 0.05), (0.5, 1.35)]],
            [[(0.25, 0.35), (0.55, 0.05), (0.55, 1.35)]],  # with a flag
            [[(0.25, 0.35), (0.55, 0.05), (0.55, 1.35)], [(0.25, 1.35), (0.85, 1.35)]]],  # flag and foot
        2: [[chain(arc(0.5, 0.4, 0.38, 0.35, 200, 360), [(0.1, 1.35), (0.95, 1.35)])],
            [chain(arc(0.5, 0.4, 0.38, 0.35, 190, 390), [(0.1, 1.3), (0.95, 1.3)])]],
        3: [[chain(arc(0.45, 0.37, 0.38, 0.32, 200, 450), arc(0.45, 1.0, 0.42, 0.36, -90, 160))],
            [chain([(0.1, 0.05), (0.85, 0.05), (0.4, 0.6)], arc(0.45, 0.98, 0.42, 0.38, -85, 160))]],  # flat top
        4: [[[(0.65, 0.05), (0.08, 0.95), (0.95, 0.95)], [(0.68, 0.45), (0.68, 1.35)]],
            [[(0.2, 0.05), (0.12, 0.8), (0.92, 0.8)], [(0.74, 0.05), (0.74, 1.35)]]],  # open top
        5: [[chain([(0.85, 0.05), (0.22, 0.05), (0.16, 0.62)], arc(0.47, 0.95, 0.42, 0.38, -125, 150))],
            [chain([(0.22, 0.05), (0.16, 0.62)], arc(0.47, 0.95, 0.42, 0.38, -125, 150)),
             [(0.22, 0.05), (0.88, 0.05)]]],
        6: [[chain(arc(0.9, 0.95, 0.8, 0.9, 240, 180), arc(0.48, 0.98, 0.38, 0.36, 180, 540))],
            [chain([(0.7, 0.05), (0.15, 0.95)], arc(0.5, 1.0, 0.36, 0.34, 190, 540))]],
        7: [[[(0.08, 0.05), (0.92, 0.05), (0.35, 1.35)]],
            [[(0.08, 0.05), (0.92, 0.05), (0.35, 1.35)], [(0.3, 0.7), (0.85, 0.7)]],  # crossed
            [[(0.08, 0.25), (0.1, 0.05), (0.92, 0.05), (0.5, 1.35)]]],
        8: [[arc(0.5, 0.37, 0.32, 0.31, 90, 450), arc(0.5, 1.0, 0.4, 0.35, -90, 270)],
            [chain(arc(0.5, 0.36, 0.3, 0.3, 40, 320), arc(0.5, 1.0, 0.4, 0.35, 220, -90), [c40])]],  # one stroke
        9: [[arc(0.48, 0.4, 0.36, 0.34, 0, 360), [(0.84, 0.4), (0.8, 1.35)]],
            [chain(arc(0.48, 0.42, 0.36, 0.36, 10, 370), arc(0.2, 0.42, 0.64, 0.93, 0, 80))]],
    }


TEMPLATES = _templates()


def draw_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One random rendering of ``digit`` as float32 (784,) in [0, 1] (white ink on black).

    Parameters
    ----------
    digit : int
        0 to 9.
    rng : np.random.Generator
        The only source of randomness: a style, a smooth displacement, slant, rotation, width and pen.
    """
    styles = TEMPLATES[digit]
    strokes = styles[int(rng.integers(len(styles)))]
    # one smooth displacement field for the whole digit: two random low-frequency sines per axis
    freq = rng.uniform(1.0, 3.0, size=(2, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(2, 2))
    amp = rng.uniform(-WOBBLE, WOBBLE, size=2)
    slant = rng.uniform(-SLANT, SLANT)
    angle = np.deg2rad(rng.uniform(-ROTATE, ROTATE))
    width = rng.uniform(0.9, 1.5)
    cos, sin = np.cos(angle), np.sin(angle)
    drawn = []
    for stroke in strokes:
        p = np.asarray(stroke, dtype=np.float64)
        x, y = p[:, 0].copy(), p[:, 1].copy()
        x += amp[0] * np.sin(freq[0, 0] * y + phase[0, 0]) * np.sin(freq[0, 1] * x + phase[0, 1])
        y += amp[1] * np.sin(freq[1, 0] * x + phase[1, 0]) * np.sin(freq[1, 1] * y + phase[1, 1])
        x = (x - 0.5) * width + slant * (HEIGHT - y)
        y = y - HEIGHT / 2
        drawn.append(np.stack([cos * x - sin * y, sin * x + cos * y], axis=1))
    pen = rng.uniform(*PEN) * HEIGHT
    return strokes_to_mnist(drawn, pen_width=pen).reshape(-1)


def make_field_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` drawn digits and their classes, the same for the same ``seed``.

    Returns
    -------
    x : ndarray of shape (n, 784), float32 in [0, 1]
        MNIST-style inputs (row-major 28x28, white ink on black), what the MNIST model's
        ``preprocessing`` metadata describes.
    y : ndarray of shape (n,), int64
        The digit drawn, 0-9, balanced (``n // 10`` or one more of each), in a shuffled order.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    x = np.empty((n, 784), dtype=np.float32)
    for i, digit in enumerate(y):
        x[i] = draw_digit(int(digit), rng)
    return x, y
