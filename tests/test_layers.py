"""Every layer's backward pass against central differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from model.gradcheck import numerical_gradient, relative_error
from model.layers import BatchNorm1d, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, sigmoid, softmax
from tests.conftest import require_torch

F64 = np.float64


def make_layer(kind: str, rng: np.random.Generator):
    return {
        "dense": lambda: Dense(6, 4, rng=rng, dtype=F64),
        "dense_xavier": lambda: Dense(6, 4, init="xavier", rng=rng, dtype=F64),
        "dense_uniform": lambda: Dense(6, 4, init="uniform", rng=rng, dtype=F64),
        "sigmoid": Sigmoid,
        "tanh": Tanh,
        "relu": ReLU,
        "leaky_relu": lambda: LeakyReLU(0.1),
        "softmax": Softmax,
        "batchnorm_train": lambda: BatchNorm1d(6, dtype=F64),
        "dropout_eval": lambda: Dropout(0.5, rng=rng),
    }[kind]()


KINDS = ["dense", "dense_xavier", "dense_uniform", "sigmoid", "tanh", "relu", "leaky_relu", "softmax",
         "batchnorm_train", "dropout_eval"]


def scalar_loss(layer, x, weights):
    """L = sum(forward(x) * weights): its gradient w.r.t. the output is exactly ``weights``."""
    return float(np.sum(layer.forward(x) * weights))


@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_numerical_gradient(kind):
    rng = np.random.default_rng(1)
    layer = make_layer(kind, rng)
    if kind == "dropout_eval":
        layer.training = False
    x = rng.standard_normal((5, 6))
    # Keep ReLU inputs away from the kink so central differences never straddle it.
    x[np.abs(x) < 1e-2] = 0.5
    out = layer.forward(x)
    weights = rng.standard_normal(out.shape)
    grad_out = weights.copy()
    grad_in = layer.backward(grad_out)
    np.testing.assert_array_equal(grad_out, weights)  # backward must not mutate its argument

    f = lambda: scalar_loss(layer, x, weights)  # noqa: E731
    num_in = numerical_gradient(f, x)
    assert relative_error(grad_in, num_in).max() < 1e-6
    for key, param in layer.params.items():
        num = numerical_gradient(f, param)
        assert relative_error(layer.grads[key], num).max() < 1e-6, key


def test_dropout_training_mask_and_scale():
    rng = np.random.default_rng(0)
    layer = Dropout(0.3, rng=rng)
    x = np.ones((200, 100), dtype=np.float32)
    out = layer.forward(x)
    kept = out != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    grad = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(grad, out)  # same mask, same scale
    layer.training = False
    np.testing.assert_array_equal(layer.forward(x), x)


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_batchnorm_running_statistics_and_inference():
    rng = np.random.default_rng(0)
    bn = BatchNorm1d(3, momentum=0.1, dtype=F64)
    x = rng.normal(5.0, 2.0, size=(64, 3))
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=0), 1, rtol=1e-3)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * x.mean(axis=0))
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1))
    bn.training = False
    expected = (x - bn.buffers["running_mean"]) / np.sqrt(bn.buffers["running_var"] + bn.eps)
    np.testing.assert_allclose(bn.forward(x), expected)


def test_batchnorm_refuses_a_training_batch_of_one_as_pytorch_does():
    """One sample has variance 0: its 'unbiased' variance pulled running_var toward 0, and the served
    network then divided by sqrt(eps). PyTorch raises; so does this layer, and leaves the statistics."""
    bn = BatchNorm1d(3, dtype=F64)
    with pytest.raises(ValueError, match="more than one sample"):
        bn.forward(np.ones((1, 3)))
    np.testing.assert_array_equal(bn.buffers["running_var"], np.ones(3))
    bn.training = False
    assert bn.forward(np.ones((1, 3))).shape == (1, 3)  # in evaluation one sample is fine
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        torch.nn.BatchNorm1d(3).train()(torch.ones(1, 3))


def test_softmax_and_sigmoid_are_stable_for_extreme_inputs():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = softmax(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]]))
        s = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(p[0], [1, 0, 0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(s, [0, 0.5, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    rng = np.random.default_rng(0)
    layer = Dense(4, 3, rng=rng, dtype=dtype)
    x = rng.standard_normal((2, 4)).astype(dtype)
    assert layer.forward(x).dtype == dtype
    assert ReLU().forward(x).dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_serves_what_it_trains_and_an_overflowed_unit_is_zero(dtype):
    """infer is max(x, 0) as forward is (up to the sign of zero); a unit overflowed to -inf is 0 (PyTorch's
    answer), where x times its mask made it NaN, and one such unit made every answer of the network NaN."""
    x = np.random.default_rng(4).standard_normal((7, 5)).astype(dtype)
    np.testing.assert_array_equal(ReLU().infer(x), ReLU().forward(x))
    assert ReLU().infer(x).dtype == dtype
    edge = np.array([[-np.inf, np.inf, -1.0, 0.0, 2.0]], dtype)
    np.testing.assert_array_equal(ReLU().infer(edge), [[0.0, np.inf, 0.0, 0.0, 2.0]])


@pytest.mark.parametrize("kind", ["dense", "sigmoid", "tanh", "relu", "leaky_relu", "softmax", "batchnorm_train"])
def test_against_pytorch(kind):
    torch = require_torch()
    rng = np.random.default_rng(3)
    layer = make_layer(kind, rng)
    x = rng.standard_normal((5, 6))
    weights = rng.standard_normal((5, 4 if kind.startswith("dense") else 6))
    out = layer.forward(x)
    grad_in = layer.backward(weights)
    tx = torch.tensor(x, requires_grad=True)
    if kind == "dense":
        W = torch.tensor(layer.params["W"], requires_grad=True)
        b = torch.tensor(layer.params["b"], requires_grad=True)
        tout = tx @ W + b
    elif kind == "batchnorm_train":
        tout = torch.nn.functional.batch_norm(tx, None, None, training=True, eps=layer.eps)
    else:
        tout = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
                "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.1),
                "softmax": lambda t: torch.softmax(t, dim=1)}[kind](tx)
    (tout * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_in, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    if kind == "dense":
        np.testing.assert_allclose(layer.grads["W"], W.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(layer.grads["b"], b.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("kind", ["relu", "leaky_relu"])
def test_kinks_follow_pytorch_at_exactly_zero(kind):
    """At the kink, where central differences cannot decide, the convention is PyTorch's (and the
    docstrings'): ReLU's gradient at exactly 0 is 0, leaky ReLU's is its negative slope."""
    torch = require_torch()
    layer = make_layer(kind, np.random.default_rng(0))
    x = np.array([[0.0, -0.0, 1.0, -1.0, 0.0, 2.5]])
    weights = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    layer.forward(x)
    grad_in = layer.backward(weights)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.relu(tx) if kind == "relu" else torch.nn.functional.leaky_relu(tx, 0.1)
    (tout * torch.tensor(weights)).sum().backward()
    np.testing.assert_array_equal(grad_in, tx.grad.numpy())
    slope = 0.0 if kind == "relu" else 0.1
    np.testing.assert_array_equal(grad_in[0, [0, 1, 4]], slope * weights[0, [0, 1, 4]])


@pytest.mark.parametrize("kind", [*KINDS, "dropout_train"])
def test_infer_is_forward_in_eval_mode_and_stores_nothing(kind):
    """The serving path: same numbers as an eval-mode forward, bit for bit, whatever the mode, and no
    layer state touched (so concurrent requests can share one network without a lock)."""
    rng = np.random.default_rng(2)
    layer = make_layer("dropout_eval" if kind == "dropout_train" else kind, rng)
    if kind == "batchnorm_train":  # non-trivial running statistics
        for _ in range(3):
            layer.forward(rng.standard_normal((8, 6)) * 3 + 1)
    x = rng.standard_normal((5, 6))
    x_before = x.copy()
    layer.training = False
    layer.forward(rng.standard_normal((3, 6)))  # caches what backward needs, so infer would find them
    layer.training = True
    state_before = dict(vars(layer))  # every attribute, by identity: infer may neither set nor rebind one
    values_before = {k: v.copy() for k, v in state_before.items() if isinstance(v, np.ndarray)}
    buffers_before = {k: v.copy() for k, v in layer.buffers.items()}
    inferred = layer.infer(x)
    np.testing.assert_array_equal(x, x_before)
    for k, v in buffers_before.items():
        np.testing.assert_array_equal(layer.buffers[k], v)
    assert set(vars(layer)) == set(state_before)
    for k, v in vars(layer).items():
        assert v is state_before[k], f"infer rebound {k}"
        if k in values_before:
            np.testing.assert_array_equal(v, values_before[k], err_msg=f"infer wrote into {k}")
    layer.training = False
    np.testing.assert_array_equal(inferred, layer.forward(x))


def test_network_infer_matches_predict_and_keeps_the_mode():
    from model.heads import head
    from model.network import mlp

    rng = np.random.default_rng(3)
    net = mlp([6, 5, 5, 3], dropout=0.5, rng=rng, dtype=F64).train()
    x = rng.standard_normal((4, 6))
    logits = net.infer(x)
    assert net.training  # infer reads no mode and changes none
    np.testing.assert_array_equal(net.predict_proba(x), head("softmax").activation(logits))
    np.testing.assert_array_equal(logits, net.eval().forward(x))


def test_every_layer_kind_says_its_array_shapes_without_making_them():
    """``Layer.shapes(spec)`` is what a built layer holds (the loader checks a file against it before
    building anything), and a setting out of range is refused where the layer is made."""
    from model.layers import LAYER_TYPES, layer_from_spec, layer_shapes

    specs = [Dense(7, 3).spec(), BatchNorm1d(4).spec(), *({"type": kind} for kind in ("sigmoid", "tanh", "relu")),
             {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "dropout", "p": 0.3}, {"type": "softmax"}]
    assert {s["type"] for s in specs} == set(LAYER_TYPES) - {"layer"}
    for spec in specs:
        layer = layer_from_spec(spec)
        params, buffers = layer_shapes(spec)
        assert params == {k: v.shape for k, v in layer.params.items()}, spec
        assert buffers == {k: v.shape for k, v in layer.buffers.items()}, spec
    for bad in ({"type": "dense", "in_features": 0, "out_features": 3}, {"type": "dense", "in_features": 2.5,
                "out_features": 3}, {"type": "dense", "in_features": True, "out_features": 3},
                {"type": "batchnorm1d", "num_features": 4, "eps": -1.0}, {"type": "batchnorm1d", "num_features": 4,
                "momentum": 2.0}, {"type": "leaky_relu", "negative_slope": float("nan")},
                {"type": "dropout", "p": float("nan")}, {"type": "leaky_relu", "negative_slope": 10**400},
                {"type": "dropout", "p": 1.0}):
        with pytest.raises(ValueError):
            layer_from_spec(bad)
    # NumPy's scalars are numbers like any other
    assert Dropout(np.float32(0.25)).p == 0.25 and BatchNorm1d(np.int64(3), momentum=np.float32(0.5)).momentum == 0.5
