"""Layers with explicit forward and backward passes.

Every layer follows one contract:

* ``params`` maps a short name (``"W"``, ``"b"``, ``"gamma"`` ...) to an array the optimizer
  updates in place; ``grads`` holds arrays of the same shapes under the same keys.
* ``buffers`` holds state that is saved with the weights but not trained (BatchNorm's running
  statistics).
* ``forward(x)`` caches only what ``backward`` needs; ``backward(grad_out)`` fills ``grads`` and
  returns the gradient with respect to the input, never mutating ``grad_out``.
* ``infer(x)`` is the evaluation-mode forward pass with no side effects: it caches nothing and
  reads no mode, so one network serves concurrent requests without a lock.
* ``training`` switches Dropout and BatchNorm between their training and inference behaviour.
* ``spec()`` returns the JSON-able description that :func:`layer_from_spec` rebuilds the layer from.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

from model.initializers import initialize

Shapes = dict[str, tuple[int, ...]]

Array = np.ndarray


LAYER_TYPES: dict[str, type[Layer]] = {}  # kind -> class, filled by each class as it is defined


def size_of(value: Any, name: str) -> int:
    """``value`` as a size (an integer >= 1, not a bool); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def finite(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` (any real number but a bool, NumPy's too) as a finite float in [low, high]; a ValueError
    naming ``name`` otherwise (NaN, and an integer too large for a float, included)."""
    try:
        number = float(value) if isinstance(value, Real) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}"[:200])
    return number


class Layer:
    """Base class: a layer without parameters whose backward is the identity.

    A subclass with its own ``kind`` registers itself in ``LAYER_TYPES``, so defining the class is
    all it takes to make a new layer type loadable from a weights file.
    """

    kind = "layer"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            LAYER_TYPES[cls.kind] = cls

    @classmethod
    def from_spec(cls, spec: dict[str, Any], rng: np.random.Generator | None, dtype: np.dtype) -> Layer:
        """Rebuild from :meth:`spec`'s output (less ``type``); layers with weights or randomness
        take ``rng`` and ``dtype`` too."""
        return cls(**spec)

    @classmethod
    def shapes(cls, spec: dict[str, Any]) -> tuple[Shapes, Shapes]:
        """The shapes of the ``params`` and ``buffers`` a layer of ``spec`` (less ``type``) holds, without
        making them: a weights file's arrays are checked against its architecture before any is made."""
        return {}, {}

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.training = True

    def forward(self, x: Array) -> Array:  # pragma: no cover - overridden
        raise NotImplementedError

    def infer(self, x: Array) -> Array:  # pragma: no cover - overridden
        """Evaluation-mode output for x, equal to ``forward`` with ``training`` off; stores nothing."""
        raise NotImplementedError

    def backward(self, grad_out: Array) -> Array:  # pragma: no cover - overridden
        raise NotImplementedError

    def backward_params(self, grad_out: Array) -> None:
        """Fill ``grads`` only, when nobody needs the input gradient (the first layer in training)."""
        self.backward(grad_out)

    def backward_input(self, grad_out: Array) -> Array:
        """The input gradient only, when nobody needs ``grads`` (explanations: d output / d input).

        Equal to what :meth:`backward` returns; layers whose parameter gradients cost real work
        (Dense: a matmul as large as the forward pass) skip them.
        """
        return self.backward(grad_out)

    def kink_state(self) -> Array | None:
        """For piecewise-linear layers, which side of each kink the last forward's inputs were on.

        The gradient check compares it before and after a perturbation: a change means the
        central difference straddled a kink. Smooth layers return None.
        """
        return None

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind}

    def astype(self, dtype: np.dtype) -> None:
        """Convert parameters, gradients and buffers to ``dtype`` in place of the old arrays."""
        for store in (self.params, self.grads, self.buffers):
            for key, value in store.items():
                store[key] = np.ascontiguousarray(value, dtype=dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output rows.
    init : str
        Weight initializer name (see :mod:`model.initializers`); biases start at zero.
    rng : numpy.random.Generator, optional
        Source of randomness for the initial weights.
    dtype : numpy dtype
        Parameter dtype (float32 for training and serving, float64 for gradient checks).
    """

    kind = "dense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        init: str = "he",
        rng: np.random.Generator | None = None,
        dtype: np.dtype = np.float32,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.in_features = size_of(in_features, "in_features")
        self.out_features = size_of(out_features, "out_features")
        self.init = init
        self.params["W"] = initialize(init, (self.in_features, self.out_features), rng, dtype)
        self.params["b"] = np.zeros(self.out_features, dtype=dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x: Array | None = None

    def forward(self, x: Array) -> Array:
        """x : ndarray of shape (batch, in_features) -> ndarray of shape (batch, out_features)."""
        self._x = x
        out = x @ self.params["W"]
        out += self.params["b"]
        return out

    def infer(self, x: Array) -> Array:
        out = x @ self.params["W"]
        out += self.params["b"]
        return out

    def backward(self, grad_out: Array) -> Array:
        """grad_out : (batch, out_features) -> grad_in : (batch, in_features)."""
        self.backward_params(grad_out)
        return grad_out @ self.params["W"].T

    def backward_input(self, grad_out: Array) -> Array:
        return grad_out @ self.params["W"].T

    def backward_params(self, grad_out: Array) -> None:
        # Write into the preallocated gradient arrays: no new buffers on the hot path.
        np.matmul(self._x.T, grad_out, out=self.grads["W"])
        np.sum(grad_out, axis=0, out=self.grads["b"])

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "in_features": self.in_features,
                "out_features": self.out_features, "init": self.init}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], rng: np.random.Generator | None, dtype: np.dtype) -> Dense:
        return cls(rng=rng, dtype=dtype, **spec)

    @classmethod
    def shapes(cls, spec: dict[str, Any]) -> tuple[Shapes, Shapes]:
        n_in, n_out = size_of(spec.get("in_features"), "in_features"), size_of(spec.get("out_features"), "out_features")
        return {"W": (n_in, n_out), "b": (n_out,)}, {}


def sigmoid(x: Array) -> Array:
    """Logistic function, stable for large |x|: ``1 / (1 + e)`` for x >= 0 and ``e / (1 + e)`` below,
    with ``e = exp(-|x|) <= 1`` (never overflows); whole-array operations, no boolean indexing."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


class Sigmoid(Layer):
    """Logistic function ``1 / (1 + exp(-x))``, computed without overflow for large |x|."""

    kind = "sigmoid"

    def forward(self, x: Array) -> Array:
        self._out = sigmoid(x)
        return self._out

    def infer(self, x: Array) -> Array:
        return sigmoid(x)

    def backward(self, grad_out: Array) -> Array:
        out = self._out
        return grad_out * out * (1.0 - out)


class Tanh(Layer):
    """Hyperbolic tangent."""

    kind = "tanh"

    def forward(self, x: Array) -> Array:
        self._out = np.tanh(x)
        return self._out

    def infer(self, x: Array) -> Array:
        return np.tanh(x)

    def backward(self, grad_out: Array) -> Array:
        out = self._out
        return grad_out * (1.0 - out * out)


class ReLU(Layer):
    """Rectified linear unit ``max(x, 0)``; the gradient at exactly 0 is taken as 0."""

    kind = "relu"

    def forward(self, x: Array) -> Array:
        # x times its mask: cheaper than maximum once the mask is made for backward (-inf gives NaN,
        # which only a diverged training run meets)
        self._mask = x > 0
        return np.multiply(x, self._mask, dtype=x.dtype)

    def infer(self, x: Array) -> Array:
        # maximum, not x times its mask: a unit overflowed to -inf gives 0 (as PyTorch), not NaN, so an
        # extreme but accepted input cannot make every answer NaN; and one sample costs 1.7 us, not 4.6
        return np.maximum(x, np.zeros((), x.dtype))

    def backward(self, grad_out: Array) -> Array:
        return np.multiply(grad_out, self._mask, dtype=grad_out.dtype)

    def kink_state(self) -> Array:
        return self._mask


class LeakyReLU(Layer):
    """``x`` for positive inputs, ``negative_slope * x`` otherwise."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = finite(negative_slope, "negative_slope")

    def forward(self, x: Array) -> Array:
        self._scale = self._scales(x)
        return x * self._scale

    def infer(self, x: Array) -> Array:
        return x * self._scales(x)

    def _scales(self, x: Array) -> Array:
        return np.where(x > 0, 1.0, self.negative_slope).astype(x.dtype, copy=False)

    def backward(self, grad_out: Array) -> Array:
        return grad_out * self._scale

    def kink_state(self) -> Array:
        return self._scale == 1.0

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "negative_slope": self.negative_slope}


def softmax(x: Array) -> Array:
    """Row-wise softmax of x : (batch, classes), shifted by the row max so exp never overflows."""
    shifted = x - x.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class Softmax(Layer):
    """Row-wise softmax, stable by subtracting the row max.

    Training normally fuses softmax into :class:`model.losses.SoftmaxCrossEntropy`; this layer
    exists for networks that end in probabilities with another loss, and its backward is the
    full Jacobian-vector product ``s * (g - sum(g * s))``.
    """

    kind = "softmax"

    def forward(self, x: Array) -> Array:
        self._out = softmax(x)
        return self._out

    def infer(self, x: Array) -> Array:
        return softmax(x)

    def backward(self, grad_out: Array) -> Array:
        s = self._out
        inner = np.sum(grad_out * s, axis=1, keepdims=True)
        return s * (grad_out - inner)


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the rest by
    ``1 / (1 - p)``, so inference is the identity and needs no rescaling."""

    kind = "dropout"

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        p = finite(p, "dropout probability p", 0.0, 1.0)
        if p == 1.0:
            raise ValueError("dropout probability p must be below 1 (it would drop every unit)")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng()
        self._mask: Array | None = None

    def forward(self, x: Array) -> Array:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64)
        self._mask = (keep >= self.p).astype(x.dtype)
        self._mask *= 1.0 / (1.0 - self.p)
        return x * self._mask

    def infer(self, x: Array) -> Array:
        return x  # inverted dropout: inference is the identity

    def backward(self, grad_out: Array) -> Array:
        if self._mask is None:
            return grad_out
        return grad_out * self._mask

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "p": self.p}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], rng: np.random.Generator | None, dtype: np.dtype) -> Dropout:
        return cls(rng=rng, **spec)


class BatchNorm1d(Layer):
    """Batch normalisation over the batch axis of (batch, features) inputs.

    In training the batch mean and (biased) variance normalise the input and update the running
    statistics with ``momentum`` (PyTorch's convention: ``running = (1 - m) * running + m * batch``,
    the running variance unbiased); in inference the running statistics are used, and the backward
    pass of an evaluation-mode forward is that of the fixed affine map they define (what an
    explanation differentiates: the served function of the input).
    """

    kind = "batchnorm1d"

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 dtype: np.dtype = np.float32) -> None:
        super().__init__()
        self.num_features = size_of(num_features, "num_features")
        self.momentum = finite(momentum, "momentum", 0.0, 1.0)
        self.eps = finite(eps, "eps", 0.0)
        if self.eps == 0.0:
            raise ValueError("eps must be positive (it keeps the division by the standard deviation finite)")
        self.params["gamma"] = np.ones(self.num_features, dtype=dtype)
        self.params["beta"] = np.zeros(self.num_features, dtype=dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)

    def forward(self, x: Array) -> Array:
        if not self.training:
            # the statistics are constants here: cache what the affine map's backward needs
            inv_std = 1.0 / np.sqrt(self.buffers["running_var"] + self.eps)
            self._x_hat, self._inv_std, self._frozen = (x - self.buffers["running_mean"]) * inv_std, inv_std, True
            return self.infer(x)
        self._frozen = False
        gamma, beta = self.params["gamma"], self.params["beta"]
        batch = x.shape[0]
        if batch < 2:  # as PyTorch refuses: one sample has variance 0, which would pull running_var to 0
            raise ValueError(f"BatchNorm1d needs more than one sample per batch in training, got {batch}")
        mean = x.mean(axis=0)
        centered = x - mean
        var = np.mean(centered * centered, axis=0)
        inv_std = 1.0 / np.sqrt(var + self.eps)
        x_hat = centered * inv_std
        m = self.momentum
        unbiased = var * (batch / max(batch - 1, 1))
        self.buffers["running_mean"] *= 1.0 - m
        self.buffers["running_mean"] += m * mean
        self.buffers["running_var"] *= 1.0 - m
        self.buffers["running_var"] += m * unbiased
        self._x_hat, self._inv_std = x_hat, inv_std
        return x_hat * gamma + beta

    def infer(self, x: Array) -> Array:
        scale = self.params["gamma"] / np.sqrt(self.buffers["running_var"] + self.eps)
        return (x - self.buffers["running_mean"]) * scale + self.params["beta"]

    def backward(self, grad_out: Array) -> Array:
        x_hat, inv_std = self._x_hat, self._inv_std
        np.sum(grad_out * x_hat, axis=0, out=self.grads["gamma"])
        np.sum(grad_out, axis=0, out=self.grads["beta"])
        g_hat = grad_out * self.params["gamma"]
        if self._frozen:  # evaluation mode: y = gamma * (x - running_mean) * inv_std + beta
            return g_hat * inv_std
        # Standard compact form of d(loss)/dx for y = gamma * x_hat + beta.
        mean_g = g_hat.mean(axis=0)
        mean_gx = np.mean(g_hat * x_hat, axis=0)
        return (g_hat - mean_g - x_hat * mean_gx) * inv_std

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "num_features": self.num_features,
                "momentum": self.momentum, "eps": self.eps}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], rng: np.random.Generator | None, dtype: np.dtype) -> BatchNorm1d:
        return cls(dtype=dtype, **spec)

    @classmethod
    def shapes(cls, spec: dict[str, Any]) -> tuple[Shapes, Shapes]:
        n = size_of(spec.get("num_features"), "num_features")
        return {"gamma": (n,), "beta": (n,)}, {"running_mean": (n,), "running_var": (n,)}


ACTIVATIONS: dict[str, type[Layer]] = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "leaky_relu": LeakyReLU}

def layer_from_spec(spec: dict[str, Any], rng: np.random.Generator | None = None,
                    dtype: np.dtype = np.float32) -> Layer:
    """Build a layer from the dict that :meth:`Layer.spec` returned."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; known: {sorted(LAYER_TYPES)}")
    try:
        return LAYER_TYPES[kind].from_spec(spec, rng=rng, dtype=dtype)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {kind!r}: {exc}") from None


def layer_shapes(spec: dict[str, Any]) -> tuple[Shapes, Shapes]:
    """The shapes of the arrays the layer :func:`layer_from_spec` would build holds, none of them made."""
    if not isinstance(spec, dict):
        raise ValueError(f"a layer must be a mapping, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; known: {sorted(LAYER_TYPES)}")
    return LAYER_TYPES[kind].shapes({k: v for k, v in spec.items() if k != "type"})
