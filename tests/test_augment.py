"""MNIST batch augmentation (training/augment.py): each distortion stays inside its stated range."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import Distortion, bilinear, gaussian_matrix
from training.augment import blur as blur_fields
from training.recipes import MNIST_DISTORTION, RECIPES


def lone_pixels(n: int, row: int = 14, col: int = 14) -> np.ndarray:
    img = np.zeros((n, 28, 28), dtype=np.float32)
    img[:, row, col] = 1.0
    return img.reshape(n, -1)


def mass_offsets(batch: np.ndarray, row: float = 14, col: float = 14) -> tuple[np.ndarray, np.ndarray]:
    img = batch.reshape(len(batch), 28, 28)
    ys, xs = np.mgrid[0:28, 0:28]
    total = img.sum(axis=(1, 2))
    return (img * ys).sum(axis=(1, 2)) / total - row, (img * xs).sum(axis=(1, 2)) / total - col


def test_no_distortion_is_the_identity_and_the_input_is_untouched():
    batch = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    before = batch.copy()
    out = Distortion()(batch, np.random.default_rng(1))
    np.testing.assert_array_equal(out, batch)
    np.testing.assert_array_equal(batch, before)
    assert out.dtype == np.float32 and out.shape == batch.shape


def test_bilinear_whole_pixel_moves_are_exact_with_zero_fill():
    img = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    ys, xs = np.mgrid[0:28, 0:28].astype(np.float32)
    out = bilinear(img, np.broadcast_to(ys + 1, img.shape).copy(), np.broadcast_to(xs - 2, img.shape).copy())
    np.testing.assert_array_equal(out[:, :-1, 2:], img[:, 1:, :-2])
    assert not out[:, -1, :].any() and not out[:, :, :2].any()


def naive_bilinear(images: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear sampling, one pixel at a time, zero outside: the textbook formula."""
    n, h, w = images.shape
    out = np.zeros_like(images)

    def at(k, r, c):
        return images[k, r, c] if 0 <= r < h and 0 <= c < w else 0.0

    for k, i, j in np.ndindex(n, h, w):
        r0, c0 = int(np.floor(y[k, i, j])), int(np.floor(x[k, i, j]))
        fy, fx = y[k, i, j] - r0, x[k, i, j] - c0
        top = at(k, r0, c0) + (at(k, r0, c0 + 1) - at(k, r0, c0)) * fx
        bottom = at(k, r0 + 1, c0) + (at(k, r0 + 1, c0 + 1) - at(k, r0 + 1, c0)) * fx
        out[k, i, j] = top + (bottom - top) * fy
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_equals_the_textbook_formula_everywhere(dtype):
    """Fractional positions inside, across the edges and far outside the image, in both dtypes."""
    rng = np.random.default_rng(1)
    img = rng.random((3, 28, 28)).astype(dtype)
    y, x = (rng.uniform(-4, 31, (3, 28, 28)).astype(dtype) for _ in range(2))
    expected = naive_bilinear(img, y, x)
    out = bilinear(img, y.copy(), x.copy())
    assert out.dtype == dtype
    # The fractions are taken after the coordinates move by the border (8 pixels), so they carry the
    # roundoff of numbers up to ~40: 40 eps, times a pixel difference of at most 1.
    np.testing.assert_allclose(out, expected, rtol=0, atol=64 * np.finfo(dtype).eps)


@pytest.mark.parametrize("shift", [1.0, 2.5])
def test_shifts_cover_their_range_and_no_more(shift):
    dy, dx = mass_offsets(Distortion(shift=shift)(lone_pixels(2000), np.random.default_rng(0)))
    for d in (dy, dx):
        assert np.all(np.abs(d) <= shift + 1e-4)
        assert d.min() < -0.9 * shift and d.max() > 0.9 * shift


@pytest.mark.parametrize("degrees", [5.0, 15.0])
def test_rotations_cover_their_range_and_no_more(degrees):
    bar = np.zeros((1000, 28, 28), dtype=np.float32)
    bar[:, 13:15, 4:24] = 1.0  # a horizontal bar through the centre
    out = Distortion(rotate=degrees)(bar.reshape(1000, -1), np.random.default_rng(0)).reshape(1000, 28, 28)
    ys, xs = np.mgrid[0:28, 0:28] - 13.5
    mass = out.sum(axis=(1, 2))
    cov_xy = (out * xs * ys).sum(axis=(1, 2)) / mass
    var_x, var_y = (out * xs * xs).sum(axis=(1, 2)) / mass, (out * ys * ys).sum(axis=(1, 2)) / mass
    angle = np.degrees(0.5 * np.arctan2(2 * cov_xy, var_x - var_y))
    assert np.all(np.abs(angle) <= degrees + 0.5)
    assert angle.min() < -0.8 * degrees and angle.max() > 0.8 * degrees


def test_scaling_stays_within_its_range():
    bar = np.zeros((500, 28, 28), dtype=np.float32)
    bar[:, 13:15, 4:24] = 1.0
    out = Distortion(scale=0.1)(bar.reshape(500, -1), np.random.default_rng(0)).reshape(500, 28, 28)
    width = (out.sum(axis=1) > 0.5).sum(axis=1)  # columns with ink
    assert width.min() >= 20 * 0.9 - 1 and width.max() <= 20 * 1.1 + 1 and width.min() < width.max()


def test_elastic_displacements_are_smooth_and_small():
    """With only the elastic part on, neighbouring pixels move together and by about a pixel."""
    d = Distortion(alpha=16.0, sigma=4.0)
    xs = np.mgrid[0:28, 0:28][1].astype(np.float32)
    # Sample an image whose value at (y, x) is x: the output then reads the displaced x coordinate.
    ramp = np.broadcast_to(xs, (300, 28, 28)).reshape(300, -1).copy()
    moved = d(ramp, np.random.default_rng(0)).reshape(300, 28, 28)[:, 4:-4, 4:-4]  # away from the edges
    dx = moved - xs[4:-4, 4:-4]
    assert 0.3 < np.abs(dx).mean() < 1.5 and np.abs(dx).max() < 4.0
    assert np.abs(np.diff(dx, axis=2)).max() < 0.8  # smooth: a neighbour moves almost alike
    blur = gaussian_matrix(28, 4.0)
    np.testing.assert_allclose(blur[14].sum(), 1.0, rtol=1e-6)  # away from the edges it averages
    fields = np.random.default_rng(1).random((5, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(blur_fields(fields, blur), blur @ fields @ blur.T, rtol=1e-5, atol=1e-6)


def test_distorted_images_stay_images(mnist_data):
    batch = mnist_data.x[:256]
    out = MNIST_DISTORTION(batch, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    ink_ratio = out.sum(axis=1) / batch.sum(axis=1)
    assert np.all((ink_ratio > 0.6) & (ink_ratio < 1.6))  # distorted, not erased or smeared
    assert not np.array_equal(out, batch)


def test_the_mnist_recipe_records_the_distortion_it_trains_with():
    recipe = RECIPES["mnist"]
    assert recipe.augmenter is MNIST_DISTORTION and recipe.config()["augment"] == repr(MNIST_DISTORTION)
