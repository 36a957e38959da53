"""Loss values against hand-computed ones, and their gradients against central differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.gradcheck import numerical_gradient, relative_error
from model.heads import loss_for_head
from model.layers import softmax
from model.losses import Distillation, MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from tests.conftest import require_torch


def test_mse_value_and_gradient_by_hand():
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = np.array([[0.0, 2.0], [3.0, 0.0]])
    loss = MeanSquaredError()
    assert loss.forward(y, t) == pytest.approx(0.5 * (1 + 16) / 2)  # mean over batch of 0.5 * sum sq
    np.testing.assert_allclose(loss.backward(), (y - t) / 2)


def test_softmax_cross_entropy_by_hand():
    loss = SoftmaxCrossEntropy()
    assert loss.forward(np.array([[0.0, 0.0]]), np.array([0])) == pytest.approx(math.log(2))
    logits = np.array([[1.0, 2.0, 3.0]])
    expected = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))
    assert loss.forward(logits, np.array([0])) == pytest.approx(expected, rel=1e-12)
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(loss.backward(), p - [[1, 0, 0]], rtol=1e-12)


def test_softmax_cross_entropy_one_hot_equals_indices():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 3))
    idx = np.array([0, 2, 1, 2])
    a, b = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    assert a.forward(logits, idx) == pytest.approx(b.forward(logits, np.eye(3)[idx]), rel=1e-14)
    np.testing.assert_allclose(a.backward(), b.backward())


def test_binary_cross_entropy_by_hand():
    loss = SigmoidBinaryCrossEntropy()
    assert loss.forward(np.array([[0.0]]), np.array([1.0])) == pytest.approx(math.log(2))
    z, t = 0.3, 0.0
    p = 1 / (1 + math.exp(-z))
    assert loss.forward(np.array([[z]]), np.array([t])) == pytest.approx(-math.log(1 - p), rel=1e-12)
    assert loss.backward()[0, 0] == pytest.approx(p - t)


@pytest.mark.parametrize("loss_cls", [SoftmaxCrossEntropy, SigmoidBinaryCrossEntropy])
def test_no_overflow_or_log_zero_for_extreme_logits(loss_cls):
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    targets = np.array([1, 0]) if loss_cls is SoftmaxCrossEntropy else np.array([[0.0, 1.0], [1.0, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss_cls().forward(logits, targets)
    assert np.isfinite(value) and value == pytest.approx(2000.0)


@pytest.mark.parametrize("loss_cls,targets", [
    (MeanSquaredError, lambda rng: rng.standard_normal((4, 3))),
    (SigmoidBinaryCrossEntropy, lambda rng: rng.integers(0, 2, (4, 3)).astype(float)),
    (SoftmaxCrossEntropy, lambda rng: rng.integers(0, 3, 4)),
    (SoftmaxCrossEntropy, lambda rng: rng.dirichlet(np.ones(3), 4)),
    (SoftmaxCrossEntropy, lambda rng: rng.random((4, 3))),  # rows that do not sum to 1: the gradient still holds
])
def test_loss_gradient_matches_numerical(loss_cls, targets):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 3)) * 3
    t = targets(rng)
    loss = loss_cls()
    loss.forward(z, t)
    analytic = loss.backward().copy()
    numeric = numerical_gradient(lambda: loss_cls().forward(z, t), z)
    assert relative_error(analytic, numeric).max() < 1e-6


def test_loss_for_head():
    assert isinstance(loss_for_head("softmax"), SoftmaxCrossEntropy)
    assert isinstance(loss_for_head("sigmoid"), SigmoidBinaryCrossEntropy)
    assert isinstance(loss_for_head("identity"), MeanSquaredError)
    with pytest.raises(ValueError):
        loss_for_head("nope")


@pytest.mark.parametrize("kind", ["mse", "sigmoid_bce", "softmax_ce_indices", "softmax_ce_onehot"])
def test_against_pytorch(kind):
    torch = require_torch()
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 1 if kind == "sigmoid_bce" else 3)) * 3
    t_logits = torch.tensor(logits, requires_grad=True)
    if kind == "mse":
        targets = rng.standard_normal(logits.shape)
        loss = MeanSquaredError()  # ours is 0.5 * sum / batch (the delta rule's convention), not a mean
        theirs = 0.5 * torch.nn.functional.mse_loss(t_logits, torch.tensor(targets), reduction="sum") / len(logits)
    elif kind == "sigmoid_bce":
        targets = rng.integers(0, 2, size=logits.shape).astype(np.float64)
        loss = SigmoidBinaryCrossEntropy()
        theirs = torch.nn.functional.binary_cross_entropy_with_logits(t_logits, torch.tensor(targets))
    else:
        classes = rng.integers(0, 3, size=6)
        targets = classes if kind == "softmax_ce_indices" else np.eye(3)[classes]
        loss = SoftmaxCrossEntropy()
        theirs = torch.nn.functional.cross_entropy(t_logits, torch.tensor(classes))
    ours = loss.forward(logits, targets)
    grad = loss.backward()
    theirs.backward()
    assert math.isclose(ours, theirs.item(), rel_tol=1e-12)
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), rtol=1e-10, atol=1e-14)


def distillation_case(seed: int = 0, batch: int = 5, classes: int = 4):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, classes)) * 3
    labels = rng.integers(0, classes, batch)
    teacher = rng.standard_normal((batch, classes)) * 5
    return z, labels, teacher


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_distillation_gradient_matches_numerical(temperature, weight):
    z, labels, teacher = distillation_case()
    loss = Distillation(temperature, weight)
    loss.forward(z, (labels, teacher))
    analytic = loss.backward().copy()
    numeric = numerical_gradient(lambda: Distillation(temperature, weight).forward(z, (labels, teacher)), z)
    assert relative_error(analytic, numeric).max() < 1e-6


def test_distillation_without_the_teacher_is_cross_entropy():
    z, labels, teacher = distillation_case()
    loss, plain = Distillation(4.0, 0.0), SoftmaxCrossEntropy()
    assert loss.forward(z, (labels, teacher)) == plain.forward(z, labels)
    np.testing.assert_array_equal(loss.backward(), plain.backward())


def test_distillation_at_temperature_one_is_cross_entropy_on_mixed_targets():
    """(1 - w) CE(y, z) + w CE(q, z) = CE((1 - w) y + w q, z): cross-entropy is linear in its target
    (less w H(q), the teacher's entropy, in the KL divergence)."""
    z, labels, teacher = distillation_case()
    w = 0.3
    mixed = (1 - w) * np.eye(4)[labels] + w * softmax(teacher.copy())
    q = softmax(teacher.copy())
    entropy = -np.sum(q * np.log(q)) / len(q)
    loss, plain = Distillation(1.0, w), SoftmaxCrossEntropy()
    assert loss.forward(z, (labels, teacher)) == pytest.approx(plain.forward(z, mixed) - w * entropy, rel=1e-12)
    np.testing.assert_allclose(loss.backward(), plain.backward(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("temperature,weight", [(1.0, 0.5), (4.0, 0.5), (3.0, 0.9)])
def test_distillation_against_torch(temperature, weight):
    """Hinton et al.'s loss as PyTorch users write it: KL divergence of the softened outputs, times T^2."""
    torch = require_torch()
    import torch.nn.functional as F

    z, labels, teacher = distillation_case(seed=3)
    zt = torch.tensor(z, requires_grad=True)
    soft = torch.softmax(torch.tensor(teacher) / temperature, dim=1)
    kl = F.kl_div(F.log_softmax(zt / temperature, dim=1), soft, reduction="batchmean")
    expected = (1 - weight) * F.cross_entropy(zt, torch.tensor(labels)) + weight * temperature ** 2 * kl
    expected.backward()
    loss = Distillation(temperature, weight)
    assert loss.forward(z, (labels, teacher)) == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"weight": -0.1}, {"weight": 1.5}])
def test_distillation_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Distillation(**kwargs)


@pytest.mark.parametrize("bad", [[-1, 2], [0, 3], [0.0, 2.7]])
def test_class_indices_are_whole_numbers_in_range(bad):
    """-1 trained as the last class and 2.7 as class 2 (PyTorch refuses both)."""
    with pytest.raises(ValueError, match="class indices"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array(bad))
    SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array([0.0, 2.0]))  # whole floats are indices still


def test_targets_of_another_shape_are_refused():
    """Indices shaped (batch, 1) broadcast against the logits as if distributions: the loss was 2.985
    for labels whose loss is 0.890, with no error (PyTorch refuses them)."""
    logits = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"targets must be class indices of shape \(4,\) or distributions"):
        SoftmaxCrossEntropy().forward(logits, np.array([[0], [2], [1], [2]]))
