"""The drawing preprocessing (training/drawing.py) on its own; its JavaScript twin is compared with it
in a real browser (tests/integration/test_browser.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import served_weights
from training.drawing import BOX, FIELD, strokes_to_mnist

ONE = [[[140, 30], [138, 250]]]
SEVEN = [[[60, 50], [210, 50], [120, 250]]]


def mass_centre(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:FIELD, 0:FIELD] + 0.5
    return float((image * xs).sum() / image.sum()), float((image * ys).sum() / image.sum())


def test_output_is_28x28_float32_in_unit_range():
    image = strokes_to_mnist(SEVEN, 18)
    assert image.shape == (FIELD, FIELD) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0


@pytest.mark.parametrize("strokes", [[], [[]], [[], []]])
def test_no_ink_is_all_zeros(strokes):
    assert not strokes_to_mnist(strokes, 18).any()


def test_ink_is_centred_by_mass():
    for strokes in (ONE, SEVEN, [[[10, 10], [60, 12]]]):
        assert np.allclose(mass_centre(strokes_to_mnist(strokes, 18)), (14.0, 14.0), atol=0.5)


@pytest.mark.parametrize(("offset", "zoom"), [((0, 0), 2.0), ((-35.5, 80.25), 1.0), ((100, -20), 0.5)])
def test_where_and_how_large_the_digit_was_drawn_does_not_matter(offset, zoom):
    """Crop and scale make the input independent of the drawing's position and size (pen scaled alike)."""
    moved = [[[x * zoom + offset[0], y * zoom + offset[1]] for x, y in s] for s in SEVEN]
    np.testing.assert_allclose(strokes_to_mnist(moved, 18 * zoom), strokes_to_mnist(SEVEN, 18), atol=1e-6)


def test_the_longer_side_fills_the_box_and_keeps_the_aspect_ratio():
    image = strokes_to_mnist(ONE, 18)  # tall and thin: 20 px high, a few wide
    rows, cols = np.nonzero(image > 0)
    assert rows.max() - rows.min() + 1 in (BOX, BOX + 1)  # +1: a sub-pixel shift straddles a row
    assert cols.max() - cols.min() + 1 <= 5


def test_a_dot_is_a_disc():
    image = strokes_to_mnist([[[5, 5]]], 4)
    assert np.allclose(image, image.T) and np.allclose(image, image[::-1, ::-1])
    assert image[13:15, 13:15].min() == 1.0


@pytest.mark.parametrize("width", [0, -1, float("nan")])
def test_pen_width_must_be_positive(width):
    with pytest.raises(ValueError, match="pen_width"):
        strokes_to_mnist(ONE, width)


def test_a_drawn_digit_is_read_by_the_shipped_model(model_repository):
    from model.io import load_model

    net = load_model(served_weights("mnist")).network
    four = [[[112, 40], [86, 120], [78, 162], [204, 160]], [[172, 70], [170, 160], [166, 248]]]
    for digit, strokes in (("1", ONE), ("7", SEVEN), ("4", four)):
        assert str(net.predict_proba(strokes_to_mnist(strokes, 18).reshape(1, -1)).argmax()) == digit
