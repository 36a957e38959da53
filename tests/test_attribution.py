"""Explanations (model/attribution.py): the input gradient against central differences for every
layer type and the three shipped models, the methods' identities, integrated gradients'
completeness, and Captum on the same network rebuilt in PyTorch as the oracle.

Tolerances, and why:

* input gradient vs central differences: relative error 1e-6 (the parameter check's policy), with
  the roundoff floor of :func:`model.gradcheck.roundoff_floor`; backprop bugs show up above 1e-3;
* Captum vs this library: both float64, the same quadrature and the same inputs, so only summation
  order differs: ``rtol=1e-9`` with ``atol=1e-12`` times the largest attribution. For a target
  probability p near 1 the gradient p (e_k - p) is ill-conditioned (relative error about
  eps / (1 - p) in a float64 evaluation that computes 1 - p, as PyTorch does; this library sums
  the other classes instead), so such a row's tolerance is ``4 eps / (1 - p)`` relative and of the
  row's largest attribution (where that exceeds 1e-9). Integrated
  gradients differ by more, because Captum rounds the quadrature weights to float32
  (``torch.tensor(step_sizes).float()`` in ``IntegratedGradients``: up to 2**-24 relative each);
  so each attribution must agree within ``2 * 2**-24 * |x - x'| * sum_s w_s |g_s|`` (the bound
  that rounding allows, from our own path gradients ``g_s``) plus 1e-9 relative, and the
  convergence deltas within the sum of those bounds;
* integrated gradients' completeness at the default 64 steps: ``|delta| <= 0.02`` of a probability
  (measured: at most 0.012 over 64 MNIST test images, median 0.0024; XOR's tanh network 4e-10).
  ReLU kinks along the path make the integrand piecewise smooth, so Gauss-Legendre converges
  about as 1/steps there, not exponentially: 512 steps must be at least 10x closer than 8.
"""

from __future__ import annotations

import numpy as np
import pytest

from model.attribution import METHODS, attribute, explaining_copy, gauss_legendre, input_gradient, target_output
from model.gradcheck import input_gradient_check
from model.io import load_model
from model.layers import BatchNorm1d, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from model.network import Sequential
from tests.conftest import require_torch, served_weights
from training.datasets import digits, xor

SHIPPED = ("xor", "digits", "mnist")
# Sundararajan et al. (2017) ask that the attributions sum to the output's change within 5%, and
# suggest 20 to 300 steps for it; at the default 64 the shipped models measure 0.021 at most
# (mnist), and more steps converge (the test below).
DEFAULT_STEPS_COMPLETENESS = 0.05


def shipped(name: str) -> Sequential:
    return load_model(served_weights(name)).network


def real_inputs(name: str, mnist_data, n: int = 4) -> np.ndarray:
    if name == "xor":
        return xor().x.astype(np.float64)
    if name == "digits":
        return digits().eval_sets["noisy"][0][:n].astype(np.float64)
    return mnist_data.eval_sets["test"][0][:n].astype(np.float64)


def every_layer_net(rng, head="softmax", out=3, dense_cls=Dense, bn_cls=BatchNorm1d, softmax_layer=False):
    """Every layer type: Dense, Tanh, BatchNorm1d (evaluation mode, non-trivial running statistics),
    LeakyReLU, Sigmoid, Dropout, ReLU (and a Softmax layer before an identity head)."""
    bn = bn_cls(7)
    bn.buffers["running_mean"][...] = rng.standard_normal(7).astype(np.float32)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 7).astype(np.float32)
    bn.params["gamma"][...] = rng.uniform(0.5, 1.5, 7).astype(np.float32)
    bn.params["beta"][...] = rng.standard_normal(7).astype(np.float32)
    layers = [Dense(5, 7, rng=rng), Tanh(), bn, LeakyReLU(0.1), dense_cls(7, 6, rng=rng), Sigmoid(),
              Dropout(0.3, rng=rng), Dense(6, 4, rng=rng), ReLU(), Dense(4, out, rng=rng)]
    if softmax_layer:
        layers.append(Softmax())
    return Sequential(layers, head=head).eval()


# -- the input gradient against central differences ---------------------------------------------------
@pytest.mark.parametrize("output", ["probability", "logit"])
@pytest.mark.parametrize("variant", ["softmax head", "sigmoid head", "softmax layer + identity head",
                                     "one sigmoid output"])
@pytest.mark.parametrize("seed", [0, 1])
def test_input_gradient_of_every_layer_type(variant, output, seed):
    rng = np.random.default_rng(seed)
    net = {"softmax head": lambda: every_layer_net(rng),
           "sigmoid head": lambda: every_layer_net(rng, head="sigmoid"),
           "softmax layer + identity head": lambda: every_layer_net(rng, head="identity", softmax_layer=True),
           "one sigmoid output": lambda: every_layer_net(rng, head="sigmoid", out=1)}[variant]()
    x = rng.standard_normal((6, 5))
    targets = rng.integers(0, 2 if variant == "one sigmoid output" else 3, 6)
    result = input_gradient_check(net, x, targets, output=output, mode="full", tolerance=1e-6)
    assert result.passed, result
    assert result.checked["input"] + result.skipped["input"] == x.size


class DenseWrongInputGrad(Dense):
    def backward_input(self, grad_out):
        return grad_out @ np.abs(self.params["W"]).T


class BatchNormIgnoresScale(BatchNorm1d):
    def backward(self, grad_out):
        super().backward(grad_out)
        return grad_out * self._inv_std  # forgot gamma


@pytest.mark.parametrize("mutant", [dict(dense_cls=DenseWrongInputGrad), dict(bn_cls=BatchNormIgnoresScale)],
                         ids=["dense wrong input grad", "batchnorm forgets gamma"])
def test_a_broken_input_gradient_is_caught(mutant):
    rng = np.random.default_rng(0)
    net = every_layer_net(rng, **mutant)
    x, targets = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    result = input_gradient_check(net, x, targets, mode="full")
    assert not result.passed and result.max_error > 1e-3


@pytest.mark.parametrize("output", ["probability", "logit"])
@pytest.mark.parametrize("name,mode", [("xor", "full"), ("digits", "full"), ("mnist", "sampled"),
                                       ("mnist", "directional")])
def test_input_gradient_of_the_shipped_models(name, mode, output, mnist_data):
    net = shipped(name)
    x = real_inputs(name, mnist_data)
    targets = net.predict_proba(x.astype(np.float32)).argmax(axis=1)
    result = input_gradient_check(net, x, targets, output=output, mode=mode, samples=30, seed=1)
    assert result.passed, result
    assert result.checked["input"] >= (x.size if mode == "full" else 30) - result.skipped["input"] > 0


# -- the methods ---------------------------------------------------------------------------------------
def test_target_output_is_the_head_output():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    targets = np.array([0, 3, 1, 2, 3])
    p, _ = target_output("softmax", logits, targets, "probability")
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, soft[np.arange(5), targets], rtol=1e-14)
    z, grad = target_output("softmax", logits, targets, "logit")
    np.testing.assert_array_equal(z, logits[np.arange(5), targets])
    np.testing.assert_array_equal(grad.sum(axis=1), np.ones(5))


def test_methods_relate_as_defined(mnist_data):
    net = shipped("mnist")
    x = real_inputs("mnist", mnist_data)
    t = np.array([7, 2, 1, 0])
    grad = attribute(net, x, t, method="gradient").attributions
    np.testing.assert_array_equal(attribute(net, x, t, method="saliency").attributions, np.abs(grad))
    np.testing.assert_array_equal(attribute(net, x, t, method="gradient_x_input").attributions, grad * x)
    np.testing.assert_allclose(attribute(net, x, t, method="smoothgrad", noise=0.0, samples=3).attributions, grad,
                               rtol=1e-12, atol=1e-15)
    one = attribute(net, x, t, method="smoothgrad", seed=5, samples=8).attributions
    np.testing.assert_array_equal(one, attribute(net, x, t, method="smoothgrad", seed=5, samples=8).attributions)
    assert not np.array_equal(one, attribute(net, x, t, method="smoothgrad", seed=6, samples=8).attributions)


def test_integrated_gradients_is_exact_for_a_linear_model():
    rng = np.random.default_rng(0)
    net = Sequential([Dense(6, 3, rng=rng)], head="identity")
    x, baseline = rng.random((4, 6)), rng.random(6)
    result = attribute(net, x, np.array([0, 1, 2, 0]), method="integrated_gradients", output="logit",
                       baseline=baseline, steps=1)
    w = net.layers[0].params["W"].astype(np.float64)
    np.testing.assert_allclose(result.attributions, (x - baseline) * w[:, [0, 1, 2, 0]].T, rtol=1e-12)
    np.testing.assert_allclose(result.convergence_delta, 0.0, atol=1e-12)


def test_gauss_legendre_integrates_polynomials_exactly():
    points, weights = gauss_legendre(5)
    assert np.isclose(weights.sum(), 1.0) and ((points > 0) & (points < 1)).all()
    assert np.isclose(weights @ points**9, 1 / 10, rtol=1e-13)


@pytest.mark.parametrize("name", SHIPPED)
def test_integrated_gradients_is_complete_at_default_steps_and_converges(name, mnist_data):
    net = shipped(name)
    x = real_inputs(name, mnist_data, n=8)
    t = net.predict_proba(x.astype(np.float32)).argmax(axis=1)
    deltas = {steps: np.abs(attribute(net, x, t, method="integrated_gradients", steps=steps).convergence_delta)
              for steps in (8, 64, 512)}
    print(f"\n{name}: max |IG convergence delta| by steps: " +
          ", ".join(f"{s}: {d.max():.2e}" for s, d in deltas.items()))
    assert deltas[64].max() <= DEFAULT_STEPS_COMPLETENESS
    assert deltas[512].max() <= deltas[64].max() + 1e-12
    assert deltas[512].max() <= max(deltas[8].max() / 10, 1e-9)  # more steps converge


@pytest.mark.parametrize("method", METHODS)
def test_the_explained_network_is_not_touched(method, mnist_data):
    net = shipped("mnist")
    x = real_inputs("mnist", mnist_data)
    before = {k: v.copy() for k, v in net.state().items()}
    logits = net.infer(x.astype(np.float32))
    attribute(net, x, np.array([7, 2, 1, 0]), method=method, steps=8, samples=4)
    assert not net.training
    for k, v in net.state().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, before[k])
    np.testing.assert_array_equal(net.infer(x.astype(np.float32)), logits)


# -- Captum as the oracle ------------------------------------------------------------------------------
def torch_network(torch, net: Sequential):
    """The same network in PyTorch (float64, evaluation mode), from the weights file's arrays."""
    nn = torch.nn
    modules = []
    for layer in net.layers:
        if isinstance(layer, Dense):
            linear = nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer.params["W"].T.astype(np.float64)))
                linear.bias.copy_(torch.from_numpy(layer.params["b"].astype(np.float64)))
            modules.append(linear)
        elif isinstance(layer, ReLU):
            modules.append(nn.ReLU())
        elif isinstance(layer, Tanh):
            modules.append(nn.Tanh())
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.p))
        else:  # pragma: no cover - the shipped models use only these
            raise AssertionError(f"no PyTorch twin for {layer!r}")
    return nn.Sequential(*modules).eval()


def captum_forward(torch, net: Sequential, output: str):
    model = torch_network(torch, net)
    return (lambda x: torch.softmax(model(x), dim=1)) if output == "probability" else model


def assert_agrees(ours, theirs, rtol=1e-9):
    """``rtol`` may be per row, shape (batch, 1). A row whose rtol is raised by its conditioning gets it
    as an absolute tolerance on the row's scale too: the error enters in d f / d logits and spreads
    through the backward matmuls to every pixel alike."""
    rtol = np.broadcast_to(np.asarray(rtol, dtype=np.float64), (len(theirs), 1))
    row_scale = np.abs(theirs).max(axis=1, keepdims=True)
    atol = 1e-12 * np.abs(theirs).max() + np.where(rtol > 1e-9, rtol * row_scale, 0.0)
    close = np.abs(ours - theirs) <= rtol * np.abs(theirs) + atol
    assert close.all(), f"{(~close).sum()} of {close.size} differ; worst: {np.abs(ours - theirs).max():.3g}"


def conditioning_rtol(net, x, t, output) -> np.ndarray | float:
    if output == "logit":
        return 1e-9
    p = net.copy(np.float64).predict_proba(x)[np.arange(len(x)), t]
    return np.maximum(1e-9, 4 * np.finfo(np.float64).eps / (1 - p))[:, None]


@pytest.mark.parametrize("output", ["probability", "logit"])
@pytest.mark.parametrize("name", SHIPPED)
def test_against_captum(name, output, mnist_data):
    torch = require_torch()
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    net = shipped(name)
    x = real_inputs(name, mnist_data)
    t = net.predict_proba(x.astype(np.float32)).argmax(axis=1)
    forward = captum_forward(torch, net, output)
    inputs, target = torch.from_numpy(x), torch.from_numpy(t)

    rtol = conditioning_rtol(net, x, t, output)
    saliency = Saliency(forward).attribute(inputs, target=target, abs=True).numpy()
    assert_agrees(attribute(net, x, t, method="saliency", output=output).attributions, saliency, rtol)
    ixg = InputXGradient(forward).attribute(inputs.clone(), target=target).detach().numpy()
    assert_agrees(attribute(net, x, t, method="gradient_x_input", output=output).attributions, ixg, rtol)

    baseline = 0.25 if name == "mnist" else 0.0
    ig, delta = IntegratedGradients(forward).attribute(inputs, baselines=baseline, target=target, n_steps=64,
                                                       method="gausslegendre", return_convergence_delta=True)
    ours = attribute(net, x, t, method="integrated_gradients", output=output, steps=64, baseline=baseline)
    ig = ig.detach().numpy()
    bound = float32_weights_bound(net, x, t, output, baseline, 64)
    assert (np.abs(ours.attributions - ig) <= bound + rtol * np.abs(ig) + 1e-15).all()
    assert (np.abs(ours.convergence_delta - delta.detach().numpy()) <= bound.sum(axis=1) + 1e-12).all()


def float32_weights_bound(net, x, t, output, baseline, steps) -> np.ndarray:
    """How far IG may move when each quadrature weight is rounded to float32, per attribution."""
    points, weights = gauss_legendre(steps)
    path = baseline + points[None, :, None] * (x - baseline)[:, None, :]
    _, g = input_gradient(explaining_copy(net), path.reshape(-1, x.shape[1]), np.repeat(t, steps), output)
    return 2 * 2.0**-24 * np.abs(x - baseline) * np.einsum("s,bsf->bf", weights, np.abs(g).reshape(path.shape))


def test_smoothgrad_against_captum_on_the_same_noise(mnist_data):
    """SmoothGrad is the mean gradient over noisy copies: Captum's Saliency(abs=False) on exactly the
    copies this library draws (NoiseTunnel would draw its own from torch's generator)."""
    torch = require_torch()
    from captum.attr import Saliency

    net = shipped("mnist")
    x = real_inputs("mnist", mnist_data, n=2)
    t = np.array([7, 2])
    samples, noise, seed = 6, 0.2, 11
    noisy = np.repeat(x, samples, axis=0) + np.random.default_rng(seed).normal(0.0, noise, (2 * samples, 784))
    grads = Saliency(captum_forward(torch, net, "probability")).attribute(
        torch.from_numpy(noisy), target=torch.from_numpy(np.repeat(t, samples)), abs=False).numpy()
    ours = attribute(net, x, t, method="smoothgrad", noise=noise, samples=samples, seed=seed).attributions
    # 1e-7: a mean over noisy copies whose target probabilities may be near 1 (the conditioning above)
    assert_agrees(ours, grads.reshape(2, samples, 784).mean(axis=1), 1e-7)
