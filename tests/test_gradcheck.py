"""The gradient check passes on correct networks and catches a deliberately broken backward pass."""

from __future__ import annotations

import numpy as np
import pytest

from model.gradcheck import gradient_check
from model.layers import BatchNorm1d, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from model.losses import MeanSquaredError
from model.network import Sequential
from tests.conftest import served_weights


def mixed_net(rng, dense_cls=Dense, sigmoid_cls=Sigmoid, bn_cls=BatchNorm1d, head="softmax", out=3):
    return Sequential([Dense(5, 7, rng=rng), Tanh(), bn_cls(7), LeakyReLU(0.1), dense_cls(7, 6, rng=rng),
                       sigmoid_cls(), Dropout(0.3, rng=rng), dense_cls(6, 4, rng=rng), ReLU(), Dense(4, out, rng=rng)],
                      head=head)


def batch(rng, n=8, classes=3):
    return rng.standard_normal((n, 5)), rng.integers(0, classes, n)


@pytest.mark.parametrize("mode", ["full", "sampled", "directional"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_network_passes_tight_tolerance(mode, seed):
    rng = np.random.default_rng(seed)
    net = mixed_net(rng)
    x, t = batch(rng)
    result = gradient_check(net, x, t, mode=mode, samples=12, tolerance=1e-6)
    assert result.passed, result.errors
    assert set(result.errors) == set(net.named_params())


@pytest.mark.parametrize("head,targets", [("sigmoid", lambda r: r.integers(0, 2, (8, 2)).astype(float)),
                                          ("identity", lambda r: r.standard_normal((8, 2)))])
def test_other_heads(head, targets):
    rng = np.random.default_rng(0)
    net = mixed_net(rng, head=head, out=2)
    x, _ = batch(rng)
    loss = MeanSquaredError() if head == "identity" else None
    assert gradient_check(net, x, targets(rng), loss=loss, mode="full").passed


def test_network_is_not_touched():
    rng = np.random.default_rng(0)
    net = mixed_net(rng)
    before = {k: v.copy() for k, v in net.state().items()}
    x, t = batch(rng)
    gradient_check(net, x, t, mode="full")
    for k, v in net.state().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, before[k])


# -- mutants: each breaks one backward pass in a plausible way ----------------------------------
class DenseForgetsBias(Dense):
    def backward(self, grad_out):
        out = super().backward(grad_out)
        self.grads["b"][...] = 0.0
        return out


class DenseScaledWeightGrad(Dense):
    def backward(self, grad_out):
        out = super().backward(grad_out)
        self.grads["W"] *= 1.01  # off by one percent
        return out


class DenseWrongInputGrad(Dense):
    def backward(self, grad_out):
        super().backward(grad_out)
        return grad_out @ np.abs(self.params["W"]).T


class SigmoidWrongDerivative(Sigmoid):
    def backward(self, grad_out):
        return grad_out * self._out  # forgot the (1 - out) factor


class BatchNormNoMeanTerm(BatchNorm1d):
    def backward(self, grad_out):
        x_hat, inv_std = self._x_hat, self._inv_std
        np.sum(grad_out * x_hat, axis=0, out=self.grads["gamma"])
        np.sum(grad_out, axis=0, out=self.grads["beta"])
        g_hat = grad_out * self.params["gamma"]
        return (g_hat - x_hat * np.mean(g_hat * x_hat, axis=0)) * inv_std  # dropped "- mean(g_hat)"


MUTANTS = {
    "dense forgets bias": dict(dense_cls=DenseForgetsBias),
    "dense weight grad 1% off": dict(dense_cls=DenseScaledWeightGrad),
    "dense wrong input grad": dict(dense_cls=DenseWrongInputGrad),
    "sigmoid wrong derivative": dict(sigmoid_cls=SigmoidWrongDerivative),
    "batchnorm missing mean term": dict(bn_cls=BatchNormNoMeanTerm),
}


@pytest.mark.parametrize("mode", ["full", "sampled", "directional"])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_broken_backward_is_caught(mutant, mode):
    rng = np.random.default_rng(0)
    net = mixed_net(rng, **MUTANTS[mutant])
    x, t = batch(rng)
    result = gradient_check(net, x, t, mode=mode, samples=12)
    assert not result.passed, f"{mutant} slipped through {mode}: {result.errors}"
    assert result.max_error > 1e-3


def test_scales_to_mnist_size():
    rng = np.random.default_rng(0)
    net = Sequential([Dense(784, 256, rng=rng), ReLU(), Dense(256, 256, rng=rng), ReLU(), Dense(256, 10, rng=rng)])
    x, t = rng.random((16, 784)), rng.integers(0, 10, 16)
    for mode in ("sampled", "directional"):
        result = gradient_check(net, x, t, mode=mode, samples=5)
        assert result.passed, result.errors
        assert sum(result.checked.values()) == 30


def test_rejects_unknown_mode():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        gradient_check(mixed_net(rng), *batch(rng), mode="psychic")


@pytest.mark.parametrize("activation", [ReLU, lambda: LeakyReLU(0.1)], ids=["relu", "leaky_relu"])
def test_kink_crossings_are_skipped_not_reported(activation):
    # One unit sits 1e-7 from its kink: every step of 1e-5 that moves it crosses.
    net = Sequential([Dense(2, 2, rng=np.random.default_rng(0), dtype=np.float64), activation(),
                      Dense(2, 2, rng=np.random.default_rng(1), dtype=np.float64)])
    net.layers[0].params["W"][...] = [[1.0, 0.5], [0.0, 0.5]]
    net.layers[0].params["b"][...] = [-1.0 + 1e-7, 0.3]
    x, t = np.array([[1.0, 1.0]]), np.array([1])
    result = gradient_check(net, x, t, mode="full")
    assert result.passed, result.errors
    assert result.skipped["0.b"] >= 1 and result.skipped["0.W"] >= 1
    assert result.checked["0.b"] + result.skipped["0.b"] == 2


def test_floor_follows_the_loss_and_still_catches_real_errors():
    from model.gradcheck import relative_error, roundoff_floor

    floor = roundoff_floor(1.0, 1e-5, 1e-6)
    assert 1e-5 < floor < 1e-3
    assert roundoff_floor(100.0, 1e-5, 1e-6) == pytest.approx(100 * floor)
    # a 1% error in a gradient of 1e-3 (above the floor) fails; roundoff of 1e-12 passes
    assert relative_error(1e-3, 1.01e-3, floor) > 1e-6
    assert relative_error(1e-7, 1e-7 + 1e-12, floor) < 1e-6


def test_trained_mnist_passes_with_real_images(mnist_data, model_repository):
    from model.io import load_model

    net = load_model(served_weights("mnist")).network
    x, y = mnist_data.eval_sets["test"]
    for mode in ("sampled", "directional"):
        result = gradient_check(net, x[:16], y[:16], mode=mode, samples=10)
        assert result.passed, (mode, result.errors)
