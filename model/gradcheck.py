"""Analytic (backprop) and numerical (central-difference) gradients, and the check between them.

The check runs on a float64 *copy* of the network (the caller's network is never touched) with
dropout switched off, so the loss is a deterministic function of the weights; BatchNorm stays in
training mode, so its batch-statistics backward is what gets checked.

Three modes, from exhaustive to cheap:

* ``full``: every coordinate of every tensor (tiny networks only: two forward passes each).
* ``sampled``: ``samples`` random coordinates per tensor.
* ``directional``: ``samples`` random unit directions ``v`` per tensor, comparing ``g . v`` with
  ``(L(w + h v) - L(w - h v)) / 2h``; this exercises every coordinate at once and scales to MNIST.

The error of one comparison is ``|a - n| / max(|a| + |n|, tiny)``; a tensor's error is the largest
over its comparisons, and the check passes when every tensor's error is at most ``tolerance``.
``tiny`` (default 1e-5) is the floor below which gradients are judged by absolute error: a
central difference carries ~1e-12 of roundoff, so a coordinate of 1e-7 beside others of 1e-2
(a bias feeding BatchNorm, say) cannot be judged relatively. With the defaults a coordinate below
the floor must agree to 1e-11 absolute, which still fails a 1% error in a gradient of 1e-7.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.layers import Dropout
from model.losses import Loss, loss_for_head
from model.network import Sequential

MODES = ("full", "sampled", "directional")


@dataclass
class GradCheckResult:
    """Outcome of :func:`gradient_check`; ``errors`` and ``checked`` are keyed by tensor name."""

    mode: str
    epsilon: float
    tolerance: float
    errors: dict[str, float] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


def relative_error(a: np.ndarray | float, n: np.ndarray | float, tiny: float = 1e-12) -> np.ndarray:
    """``|a - n| / max(|a| + |n|, tiny)``, elementwise."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)


def numerical_gradient(f: Callable[[], float], array: np.ndarray, h: float = 1e-5,
                       indices: np.ndarray | None = None) -> np.ndarray:
    """Central differences of ``f()`` w.r.t. entries of ``array`` (perturbed in place, restored).

    Returns the gradient at ``indices`` (flat indices) or, if None, the full gradient with the
    shape of ``array``.
    """
    flat = array.reshape(-1)  # a view: writes reach the array ``f`` reads
    full = indices is None
    if full:
        indices = np.arange(flat.size)
    out = np.empty(len(indices), dtype=np.float64)
    for j, i in enumerate(indices):
        original = flat[i]
        flat[i] = original + h
        upper = f()
        flat[i] = original - h
        lower = f()
        flat[i] = original
        out[j] = (upper - lower) / (2.0 * h)
    return out.reshape(array.shape) if full else out


def loss_closure(net: Sequential, loss: Loss, x: np.ndarray, targets: np.ndarray) -> Callable[[], float]:
    """A function of no arguments: the loss of ``net`` on ``(x, targets)`` at the current weights."""
    return lambda: loss.forward(net.forward(x), targets)


def analytic_gradients(net: Sequential, loss: Loss, x: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Loss value and copies of d(loss)/d(param) for every parameter, by backpropagation."""
    value = loss.forward(net.forward(x), targets)
    net.backward(loss.backward())
    return value, {k: g.copy() for k, g in net.named_grads().items()}


def checkable_copy(net: Sequential) -> Sequential:
    """Float64 copy in training mode with dropout off (deterministic, BatchNorm on batch stats)."""
    work = net.copy(np.float64).train()
    for layer in work.layers:
        if isinstance(layer, Dropout):
            layer.training = False
    return work


def gradient_check(
    net: Sequential,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    loss: Loss | None = None,
    mode: str = "full",
    epsilon: float = 1e-5,
    samples: int = 10,
    seed: int = 0,
    tolerance: float = 1e-6,
    tiny: float = 1e-5,
) -> GradCheckResult:
    """Compare backprop with central differences for every parameter tensor of ``net``.

    Parameters
    ----------
    net : Sequential
        Checked through a float64 copy; ``net`` itself is left untouched.
    x : ndarray of shape (batch, in_features)
    targets : ndarray
        Whatever ``loss`` takes (class indices for the softmax cross-entropy).
    loss : Loss, optional
        Defaults to the loss that pairs with ``net.head``.
    mode : {"full", "sampled", "directional"}
    epsilon : float
        Step ``h`` of the central difference.
    samples : int
        Coordinates (``sampled``) or directions (``directional``) per tensor.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    if epsilon <= 0 or samples < 1:
        raise ValueError("epsilon must be positive and samples at least 1")
    loss = loss if loss is not None else loss_for_head(net.head)
    work = checkable_copy(net)
    x = np.ascontiguousarray(x, dtype=np.float64)
    _, grads = analytic_gradients(work, loss, x, targets)
    f = loss_closure(work, loss, x, targets)
    rng = np.random.default_rng(seed)
    result = GradCheckResult(mode=mode, epsilon=epsilon, tolerance=tolerance)
    for name, param in work.named_params().items():
        g = grads[name].reshape(-1)
        if mode == "directional":
            a, n = _directional(f, param, g, epsilon, samples, rng)
        else:
            if mode == "full" or samples >= param.size:
                idx = np.arange(param.size)
            else:
                idx = rng.choice(param.size, size=samples, replace=False)
            a, n = g[idx], numerical_gradient(f, param, epsilon, idx)
        result.errors[name] = float(relative_error(a, n, tiny).max())
        result.checked[name] = int(len(a))
    return result


def _directional(f: Callable[[], float], param: np.ndarray, g: np.ndarray, h: float, samples: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    flat = param.reshape(-1)
    original = flat.copy()
    a = np.empty(samples)
    n = np.empty(samples)
    for j in range(samples):
        v = rng.standard_normal(flat.size)
        v /= np.linalg.norm(v)
        a[j] = g @ v
        np.add(original, h * v, out=flat)
        upper = f()
        np.subtract(original, h * v, out=flat)
        lower = f()
        n[j] = (upper - lower) / (2.0 * h)
    np.copyto(flat, original)
    return a, n
