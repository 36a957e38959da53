"""Analytic (backprop) and numerical (central-difference) gradients, and the check between them.

The check runs on a float64 *copy* of the network (the caller's network is never touched) with
dropout switched off, so the loss is a deterministic function of the weights; BatchNorm stays in
training mode, so its batch-statistics backward is what gets checked.

Three modes, from exhaustive to cheap:

* ``full``: every coordinate of every tensor (tiny networks only: two forward passes each).
* ``sampled``: ``samples`` random coordinates per tensor.
* ``directional``: ``samples`` random unit directions ``v`` per tensor, comparing ``g . v`` with
  ``(L(w + h v) - L(w - h v)) / 2h``; this exercises every coordinate at once and scales to MNIST.

:func:`input_gradient_check` does the same for the gradient of a target output with respect to the
*input* (what explanations are made of, :mod:`model.attribution`), on the evaluation-mode copy
explanations differentiate.

Comparisons whose perturbation moves any ReLU unit across its kink are skipped and counted
(``skipped``): there the central difference averages two one-sided slopes and says nothing about
backprop. Sampled mode then takes another coordinate, directional mode another direction.

The error of one comparison is ``|a - n| / max(|a| + |n|, tiny)``; a tensor's error is the largest
over its comparisons, and the check passes when every tensor's error is at most ``tolerance``.
``tiny`` is the floor below which gradients are judged by absolute error. A central difference
carries roundoff of about ``eps * |L| / h`` (``eps`` = 2.2e-16 in float64), so a coordinate much
smaller than that cannot be judged relatively. By default the floor is derived from that estimate,
``tiny = 4 * eps * max(1, |L|) / (h * tolerance)``: a coordinate below it must agree to within
``tolerance * tiny`` absolute (about 1e-10 for a loss near 1 with the defaults), which is still
far tighter than any real backprop bug. The floor used is reported in the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.attribution import OUTPUTS, explaining_copy, input_gradient, target_output
from model.heads import loss_for_head
from model.layers import Dropout
from model.losses import Loss
from model.network import Sequential

MODES = ("full", "sampled", "directional")


@dataclass
class GradCheckResult:
    """Outcome of :func:`gradient_check`; ``errors`` and ``checked`` are keyed by tensor name."""

    mode: str
    epsilon: float
    tolerance: float
    tiny: float = 0.0
    loss: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Every tensor within tolerance, and every tensor actually compared at least once."""
        return self.max_error <= self.tolerance and all(self.checked.values())


def relative_error(a: np.ndarray | float, n: np.ndarray | float, tiny: float = 1e-12) -> np.ndarray:
    """``|a - n| / max(|a| + |n|, tiny)``, elementwise."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)


def roundoff_floor(loss_value: float, h: float, tolerance: float) -> float:
    """Gradient size below which a central difference of step ``h`` is dominated by roundoff."""
    return 4.0 * np.finfo(np.float64).eps * max(1.0, abs(loss_value)) / (h * tolerance)


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


def analytic_gradients(net: Sequential, loss: Loss, x: np.ndarray,
                       targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
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
    tiny: float | None = None,
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
    value, grads = analytic_gradients(work, loss, x, targets)
    if tiny is None:
        tiny = roundoff_floor(value, epsilon, tolerance)
    probe = _KinkAwareLoss(work, loss, x, targets)
    rng = np.random.default_rng(seed)
    result = GradCheckResult(mode=mode, epsilon=epsilon, tolerance=tolerance, tiny=tiny, loss=value)
    for name, param in work.named_params().items():
        g = grads[name].reshape(-1)
        if mode == "directional":
            a, n, skipped = _directional(probe, param, g, epsilon, samples, rng)
        else:
            order = np.arange(param.size) if mode == "full" else rng.permutation(param.size)
            want = param.size if mode == "full" else min(samples, param.size)
            a, n, skipped = _coordinates(probe, param, g, epsilon, order, want)
        result.errors[name] = float(relative_error(a, n, tiny).max()) if len(a) else 0.0
        result.checked[name] = len(a)
        result.skipped[name] = skipped
    return result


class TargetOutputSum:
    """The sum over rows of each row's target output (a loss-like ``forward(logits, targets)``).

    Rows are independent in evaluation mode, so its gradient's row i is d f_i / d x_i.
    """

    def __init__(self, head: str, output: str) -> None:
        self.head, self.output = head, output

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        return float(target_output(self.head, logits, targets, self.output)[0].sum())


def input_gradient_check(
    net: Sequential,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    output: str = "probability",
    mode: str = "full",
    epsilon: float = 1e-5,
    samples: int = 10,
    seed: int = 0,
    tolerance: float = 1e-6,
    tiny: float | None = None,
) -> GradCheckResult:
    """Compare d(target output)/d(input) by backprop with central differences in the input.

    Parameters as :func:`gradient_check`; ``targets`` are class indices (batch,), ``output`` is
    ``"probability"`` or ``"logit"``. The one tensor checked is named ``"input"``. The network is
    the float64 evaluation-mode copy explanations use; ``net`` itself is left untouched.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; known: {OUTPUTS}")
    if epsilon <= 0 or samples < 1:
        raise ValueError("epsilon must be positive and samples at least 1")
    work = explaining_copy(net)
    x = np.array(x, dtype=np.float64, order="C", copy=True)  # perturbed in place below
    targets = np.asarray(targets, dtype=np.int64)
    values, grads = input_gradient(work, x, targets, output)
    value = float(values.sum())
    if tiny is None:
        tiny = roundoff_floor(value, epsilon, tolerance)
    probe = _KinkAwareLoss(work, TargetOutputSum(work.head, output), x, targets)
    rng = np.random.default_rng(seed)
    result = GradCheckResult(mode=mode, epsilon=epsilon, tolerance=tolerance, tiny=tiny, loss=value)
    g = grads.reshape(-1)
    if mode == "directional":
        a, n, skipped = _directional(probe, x, g, epsilon, samples, rng)
    else:
        order = np.arange(x.size) if mode == "full" else rng.permutation(x.size)
        a, n, skipped = _coordinates(probe, x, g, epsilon, order, x.size if mode == "full" else min(samples, x.size))
    result.errors["input"] = float(relative_error(a, n, tiny).max()) if len(a) else 0.0
    result.checked["input"] = len(a)
    result.skipped["input"] = skipped
    return result


class _KinkAwareLoss:
    """The loss at the current weights, and whether any piecewise-linear unit changed side.

    A central difference across a kink measures the average of two one-sided slopes, not the
    gradient; such comparisons are skipped (and counted) rather than reported as errors.
    """

    def __init__(self, net: Sequential, loss: Loss, x: np.ndarray, targets: np.ndarray) -> None:
        self.net, self.loss, self.x, self.targets = net, loss, x, targets
        self.loss.forward(self.net.forward(self.x), self.targets)
        self.base = self._state()

    def _state(self) -> list[np.ndarray]:
        return [state.copy() for layer in self.net.layers if (state := layer.kink_state()) is not None]

    def __call__(self) -> tuple[float, bool]:
        value = self.loss.forward(self.net.forward(self.x), self.targets)
        crossed = any(not np.array_equal(a, b) for a, b in zip(self._state(), self.base, strict=True))
        return value, crossed

    def central_difference(self, flat: np.ndarray, original: np.ndarray | float, step: np.ndarray | float,
                           where: np.ndarray | int | slice) -> float | None:
        """``(L(w + step) - L(w - step)) / 2|step|`` along ``flat[where]``, or None across a kink.

        ``flat`` is restored to ``original`` at ``where`` afterwards.
        """
        flat[where] = original + step
        upper, crossed_up = self()
        flat[where] = original - step
        lower, crossed_down = self()
        flat[where] = original
        if crossed_up or crossed_down:
            return None
        return (upper - lower) / (2.0 * float(np.linalg.norm(step)))


def _coordinates(probe: _KinkAwareLoss, param: np.ndarray, g: np.ndarray, h: float, order: np.ndarray,
                 want: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Central differences along single coordinates, in ``order``, until ``want`` succeed."""
    flat = param.reshape(-1)
    a, n, skipped = [], [], 0
    for i in order:
        if len(a) == want:
            break
        slope = probe.central_difference(flat, flat[i], h, i)
        if slope is None:
            skipped += 1
            continue
        a.append(g[i])
        n.append(slope)
    return np.array(a), np.array(n), skipped


def _directional(probe: _KinkAwareLoss, param: np.ndarray, g: np.ndarray, h: float, samples: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Central differences along random unit directions (redrawn across kinks, within a bound)."""
    flat = param.reshape(-1)
    original = flat.copy()
    a, n, skipped = [], [], 0
    for _ in range(samples * 4):
        if len(a) == samples:
            break
        v = rng.standard_normal(flat.size)
        v /= np.linalg.norm(v)
        slope = probe.central_difference(flat, original, h * v, slice(None))
        if slope is None:
            skipped += 1
            continue
        a.append(g @ v)
        n.append(slope)
    return np.array(a), np.array(n), skipped
