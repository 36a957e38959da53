"""Augmenting MNIST training batches: random affine and elastic distortions.

A distortion takes a batch of flattened square images and the training's ``np.random.Generator``,
and returns a new batch of the same shape and dtype (the input is never modified).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Distortion:
    """Random affine and elastic distortions, the classic route to better MLPs on MNIST (Simard
    et al. 2003; Ciresan et al. 2010), resampled bilinearly with zero outside the image.

    Per image: a rotation up to ``rotate`` degrees, independent x and y scalings within
    ``1 +- scale``, a translation up to ``shift`` pixels, and Simard's elastic displacement: per
    axis, uniform noise in [-1, 1] per pixel, smoothed by a Gaussian of ``sigma`` pixels (zero
    beyond the image), times ``alpha``.
    """

    rotate: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    alpha: float = 0.0
    sigma: float = 4.0
    side: int = 28

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, s = len(batch), self.side
        f32 = np.float32
        centre = (s - 1) / 2.0
        ys, xs = np.meshgrid(np.arange(s, dtype=f32) - centre, np.arange(s, dtype=f32) - centre, indexing="ij")
        angle = np.deg2rad(rng.uniform(-self.rotate, self.rotate, n)).astype(f32)[:, None, None]
        sx = rng.uniform(1 - self.scale, 1 + self.scale, n).astype(f32)[:, None, None]
        sy = rng.uniform(1 - self.scale, 1 + self.scale, n).astype(f32)[:, None, None]
        tx = rng.uniform(-self.shift, self.shift, n).astype(f32)[:, None, None]
        ty = rng.uniform(-self.shift, self.shift, n).astype(f32)[:, None, None]
        cos, sin = np.cos(angle), np.sin(angle)
        # Where each output pixel samples the input: the inverse of rotate-then-scale, then shifted.
        src_x = (cos * xs + sin * ys) / sx + (centre + tx)
        src_y = (cos * ys - sin * xs) / sy + (centre + ty)
        if self.alpha > 0:
            for src in (src_x, src_y):
                noise = rng.random((n, s, s), dtype=f32)
                noise *= 2 * self.alpha
                noise -= self.alpha
                src += blur(noise, gaussian_matrix(s, self.sigma))
        return bilinear(batch.reshape(n, s, s), src_y, src_x).reshape(n, s * s)


@functools.cache
def gaussian_matrix(side: int, sigma: float) -> np.ndarray:
    """(side, side) float32 matrix ``G`` with ``G @ v`` = ``v`` blurred by a Gaussian (radius 2 sigma, zero padding)."""
    radius = int(2 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offsets = np.arange(side)[None, :] - np.arange(side)[:, None]
    inside = np.abs(offsets) <= radius
    return np.where(inside, taps[np.clip(offsets + radius, 0, 2 * radius)], 0.0).astype(np.float32)


def blur(fields: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """``smooth @ f @ smooth.T`` for every field ``f`` of (n, s, s), as two large matrix products
    (a separable blur; one GEMM each way beats n small ones)."""
    n, s, _ = fields.shape
    rows = (fields.reshape(n * s, s) @ smooth.T).reshape(n, s, s)
    cols = smooth @ rows.transpose(1, 0, 2).reshape(s, n * s)
    return cols.reshape(s, n, s).transpose(1, 0, 2)


BORDER = 8  # zero pixels around each image when sampling: distortions this mild never reach past them


def bilinear(images: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample ``images`` (n, h, w) at real coordinates ``y``, ``x`` (n, h, w); zero outside.

    Each position of a zero-padded copy holds its 2x2 neighbourhood (16 bytes), so one gather
    fetches all four corners of a pixel: four separate gathers cost twice as much, and the
    gathers are most of a distortion's time. ``y`` and ``x`` are overwritten (scratch space here).
    """
    n, h, w = images.shape
    tall, wide = h + 2 * BORDER, w + 2 * BORDER
    b = BORDER
    corners = np.zeros((n, tall, wide, 4), dtype=images.dtype)  # top, top right, bottom, bottom right
    corners[:, b:b + h, b:b + w, 0] = images
    corners[:, b:b + h, b - 1:b + w - 1, 1] = images
    corners[:, b - 1:b + h - 1, b:b + w, 2] = images
    corners[:, b - 1:b + h - 1, b - 1:b + w - 1, 3] = images
    y += BORDER
    x += BORDER
    np.clip(y, 0, tall - 2, out=y)  # anything further out lands in the zero border
    np.clip(x, 0, wide - 2, out=x)
    y0, x0 = np.floor(y), np.floor(x)
    y -= y0  # now the fractions
    x -= x0
    index = y0.astype(np.intp)
    index *= wide
    index += x0.astype(np.intp)
    index += (np.arange(n, dtype=np.intp) * (tall * wide))[:, None, None]
    quads = corners.view(np.dtype((np.void, 4 * corners.itemsize))).reshape(-1)  # a pixel's four as one item
    picked = np.take(quads, index).view(images.dtype).reshape(n, h, w, 4)
    top, top_right, bottom, bottom_right = (picked[..., i] for i in range(4))
    top = top + (top_right - top) * x
    bottom = bottom + (bottom_right - bottom) * x
    return top + (bottom - top) * y
