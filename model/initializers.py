"""Weight initializers.

* ``uniform``: U(-1, 1), as in the classic XOR examples.
* ``xavier``: ``randn / sqrt(fan_in)`` (Glorot's scaling for sigmoid/tanh nets, in the form the
  textbook uses).
* ``he``: ``randn / sqrt(fan_in / 2)`` for ReLU nets.
* ``zeros``: all zero (biases; a deliberately bad choice for weights).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Shape = tuple[int, ...]


def uniform(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=shape)


def xavier(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) / np.sqrt(shape[0])


def he(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) / np.sqrt(shape[0] / 2.0)


def zeros(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(shape)


INITIALIZERS: dict[str, Callable[[Shape, np.random.Generator], np.ndarray]] = {
    "uniform": uniform, "xavier": xavier, "he": he, "zeros": zeros,
}


def initialize(name: str, shape: Shape, rng: np.random.Generator,
               dtype: np.dtype = np.float32) -> np.ndarray:
    """Return a new C-contiguous array of ``shape`` drawn by the initializer ``name``.

    ``shape[0]`` is the fan-in (a Dense weight is stored as (in_features, out_features)).
    """
    try:
        init = INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}; known: {sorted(INITIALIZERS)}") from None
    return np.ascontiguousarray(init(shape, rng), dtype=dtype)
