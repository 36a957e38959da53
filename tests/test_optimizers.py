"""Optimizer steps against hand-computed updates (and PyTorch where installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.optimizers import SGD, Adam, Momentum
from tests.conftest import require_torch


def steps(opt, grads_seq, w0=1.0):
    w = np.array([w0])
    params = {"w": w}
    for g in grads_seq:
        opt.step(params, {"w": np.array([g])})
    assert params["w"] is w  # updated in place
    return float(w[0])


def test_sgd_by_hand():
    assert steps(SGD(0.1), [0.5]) == pytest.approx(0.95)
    assert steps(SGD(0.1), [0.5, -1.0]) == pytest.approx(0.95 + 0.1)


def test_momentum_by_hand():
    # v1 = 0.5 -> w = 1 - 0.05; v2 = 0.9 * 0.5 + 0.5 = 0.95 -> w = 0.95 - 0.095
    assert steps(Momentum(0.1, 0.9), [0.5, 0.5]) == pytest.approx(0.855)
    # Nesterov: update = g + mu * v = 0.5 + 0.45
    assert steps(Momentum(0.1, 0.9, nesterov=True), [0.5]) == pytest.approx(1 - 0.095)


def test_adam_by_hand():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    g1, g2 = 0.5, -0.2
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
    w1 = 1.0 - lr / (1 - b1) * m1 / (math.sqrt(v1) / math.sqrt(1 - b2) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
    w2 = w1 - lr / (1 - b1**2) * m2 / (math.sqrt(v2) / math.sqrt(1 - b2**2) + eps)
    assert steps(Adam(lr), [g1]) == pytest.approx(w1, rel=1e-12)
    assert steps(Adam(lr), [g1, g2]) == pytest.approx(w2, rel=1e-12)


def test_state_is_kept_per_parameter_name():
    opt = Momentum(0.1, 0.9)
    a, b = np.array([1.0]), np.array([1.0])
    opt.step({"a": a, "b": b}, {"a": np.array([1.0]), "b": np.array([0.0])})
    opt.step({"a": a, "b": b}, {"a": np.array([0.0]), "b": np.array([1.0])})
    assert a[0] == pytest.approx(1 - 0.1 - 0.09)
    assert b[0] == pytest.approx(1 - 0.1)


def test_rejects_non_positive_learning_rate():
    with pytest.raises(ValueError):
        SGD(0)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_against_pytorch(name):
    torch = require_torch()
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    ours = {"sgd": SGD(0.1), "momentum": Momentum(0.1, 0.9), "nesterov": Momentum(0.1, 0.9, True),
            "adam": Adam(0.01)}[name]
    tw = torch.tensor(w0.copy(), requires_grad=True)
    theirs = {"sgd": lambda: torch.optim.SGD([tw], lr=0.1),
              "momentum": lambda: torch.optim.SGD([tw], lr=0.1, momentum=0.9),
              "nesterov": lambda: torch.optim.SGD([tw], lr=0.1, momentum=0.9, nesterov=True),
              "adam": lambda: torch.optim.Adam([tw], lr=0.01)}[name]()
    w = w0.copy()
    for g in grads:
        ours.step({"w": w}, {"w": g})
        tw.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: Adam(beta1=-0.1), lambda: Adam(beta2=1.0), lambda: Adam(beta1=float("nan")),
                                  lambda: Adam(eps=-1.0), lambda: Momentum(0.1, momentum=-0.5)])
def test_rejects_settings_outside_their_ranges(make):
    """Adam(beta2=1) divided by zero at its first step; a negative beta or momentum was taken."""
    with pytest.raises(ValueError):
        make()
