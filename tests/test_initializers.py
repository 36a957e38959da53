"""Initializers: the scales the textbook formulas promise, explicit randomness, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from model.initializers import initialize


@pytest.mark.parametrize("name,std", [("xavier", lambda fan_in: 1 / np.sqrt(fan_in)),
                                      ("he", lambda fan_in: np.sqrt(2 / fan_in))])
def test_normal_initializers_have_the_right_scale(name, std):
    w = initialize(name, (400, 300), np.random.default_rng(0), np.float64)
    assert abs(w.mean()) < 0.01 * std(400) * 10
    assert w.std() == pytest.approx(std(400), rel=0.01)


def test_uniform_is_within_minus_one_one():
    w = initialize("uniform", (200, 200), np.random.default_rng(0))
    assert w.min() >= -1 and w.max() < 1 and w.std() == pytest.approx(1 / np.sqrt(3), rel=0.01)


def test_dtype_contiguity_and_seed():
    a = initialize("he", (5, 4), np.random.default_rng(7), np.float32)
    b = initialize("he", (5, 4), np.random.default_rng(7), np.float32)
    assert a.dtype == np.float32 and a.flags.c_contiguous
    assert a.tobytes() == b.tobytes()
    assert not initialize("zeros", (3, 2), np.random.default_rng(0)).any()


def test_unknown_initializer():
    with pytest.raises(ValueError, match="unknown initializer"):
        initialize("glorot_magic", (2, 2), np.random.default_rng(0))
