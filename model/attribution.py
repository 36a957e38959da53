"""Input attributions from the network's own backward pass: which input values moved an output.

Every method differentiates one scalar per sample, the *target output*: the target class's logit,
or its probability (the network's head applied, what a prediction reports). The gradient comes from
the layers' :meth:`~model.layers.Layer.backward_input` on a float64 copy of the network in
evaluation mode (dropout off, BatchNorm on its running statistics), so the served network is never
touched and the function differentiated is exactly the one served. Samples are independent in
evaluation mode, so the many points a method needs (integration steps, noisy copies) run as one
batch, in chunks of at most ``chunk_rows`` rows.

Methods (Captum's names in brackets, the oracle of ``tests/test_attribution.py``):

* ``gradient``: d f / d x, signed.
* ``saliency``: |d f / d x| (``Saliency(abs=True)``).
* ``gradient_x_input``: x * d f / d x (``InputXGradient``).
* ``integrated_gradients``: (x - x') * integral over a in [0, 1] of d f / d x at x' + a (x - x'),
  by ``steps``-point Gauss-Legendre quadrature (``IntegratedGradients``' default rule), with the
  convergence delta ``sum(attributions) - (f(x) - f(x'))`` per sample (completeness: zero for the
  exact integral).
* ``smoothgrad``: the mean gradient over ``samples`` copies of x with Gaussian noise of standard
  deviation ``noise`` (Smilkov et al. 2017; ``NoiseTunnel(Saliency(abs=False), "smoothgrad")``),
  the noise drawn from ``np.random.default_rng(seed)``: the same request gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.heads import head as head_named
from model.network import Sequential

METHODS = ("saliency", "gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")
OUTPUTS = ("probability", "logit")
CHUNK_ROWS = 4096  # rows per forward/backward batch: bounds the memory of one explanation


@dataclass(frozen=True)
class Attribution:
    """What :func:`attribute` returns, per sample of the (batch, features) input."""

    method: str
    output: str
    attributions: np.ndarray  # (batch, features) float64
    values: np.ndarray  # (batch,) the target output f(x)
    convergence_delta: np.ndarray | None = None  # (batch,), integrated gradients only


def explaining_copy(net: Sequential) -> Sequential:
    """A float64 copy in evaluation mode: the served function, differentiable without touching ``net``."""
    return net.copy(np.float64).eval()


def target_output(head: str, logits: np.ndarray, targets: np.ndarray,
                  output: str) -> tuple[np.ndarray, np.ndarray]:
    """The target output of each row and its gradient with respect to the logits.

    Parameters
    ----------
    head : the network's head ("softmax", "sigmoid" or "identity")
    logits : ndarray of shape (rows, outputs)
    targets : ndarray of shape (rows,), class indices
    output : "logit" or "probability"

    Returns
    -------
    values : (rows,) and d values / d logits : (rows, outputs)

    A one-output network has two classes: class 1 is its output and class 0 the complement
    (``1 - p`` for a probability, ``-z`` for a logit), as :meth:`model.heads.Head.decide` reads it.
    """
    rows = np.arange(len(logits))
    if logits.shape[1] == 1:
        sign = np.where(targets == 1, 1.0, -1.0)
        z = logits[:, 0]
        if output == "logit" or head == "identity":
            value, slope = sign * z, sign
        else:
            p = head_named(head).activation(logits)[:, 0]
            value, slope = np.where(targets == 1, p, 1.0 - p), sign * p * (1.0 - p)
        return value, slope[:, None] * np.ones_like(logits)
    grad = np.zeros_like(logits)
    if output == "logit" or head == "identity":
        grad[rows, targets] = 1.0
        return logits[rows, targets].copy(), grad
    probs = head_named(head).activation(logits)
    p = probs[rows, targets]
    if head == "softmax":  # d p_k / d z = p_k (e_k - p); 1 - p_k summed from the others (p_k near 1)
        grad = -p[:, None] * probs
        others = probs.copy()
        others[rows, targets] = 0.0
        grad[rows, targets] = p * others.sum(axis=1)  # not 1 - p: that cancels when p is near 1
    else:  # sigmoid outputs are independent: d p_k / d z_k = p_k (1 - p_k)
        grad[rows, targets] = p * (1.0 - p)
    return p.copy(), grad


def input_gradient(work: Sequential, x: np.ndarray, targets: np.ndarray, output: str,
                   chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(f(x) : (rows,), d f / d x : (rows, features)) by one forward and one backward pass per chunk.

    ``work`` is the network to differentiate (an :func:`explaining_copy`; its forward caches change).
    """
    values = np.empty(len(x))
    grads = np.empty_like(x)
    for start in range(0, len(x), chunk_rows):
        part = slice(start, start + chunk_rows)
        value, d_logits = target_output(work.head, work.forward(x[part]), targets[part], output)
        values[part] = value
        grads[part] = work.backward_input(d_logits)
    return values, grads


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(points in (0, 1), weights summing to 1) of the ``steps``-point Gauss-Legendre rule."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1.0) / 2.0, weights / 2.0


def attribute(net: Sequential, x: np.ndarray, targets: np.ndarray, *, method: str, output: str = "probability",
              baseline: float | np.ndarray = 0.0, steps: int = 64, noise: float = 0.15, samples: int = 32,
              seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> Attribution:
    """Attributions of each sample's target output to its input values.

    Parameters
    ----------
    net : Sequential
        Explained through a float64 evaluation-mode copy; ``net`` itself is left untouched.
    x : ndarray of shape (batch, features)
    targets : ndarray of shape (batch,), the class index to explain per sample
    method : one of :data:`METHODS`
    output : one of :data:`OUTPUTS`
    baseline : float or ndarray of shape (features,) or (batch, features)
        Integrated gradients' starting point x'.
    steps : int
        Integrated gradients' quadrature points.
    noise, samples, seed
        SmoothGrad's noise standard deviation (in input units), noisy copies per sample, and seed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; known: {OUTPUTS}")
    work = explaining_copy(net)
    x = np.ascontiguousarray(x, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    batch, features = x.shape
    values, grads = input_gradient(work, x, targets, output, chunk_rows)
    if method == "gradient":
        return Attribution(method, output, grads, values)
    if method == "saliency":
        return Attribution(method, output, np.abs(grads), values)
    if method == "gradient_x_input":
        return Attribution(method, output, grads * x, values)
    if method == "smoothgrad":
        if samples < 1 or noise < 0:
            raise ValueError("smoothgrad needs samples >= 1 and noise >= 0")
        rng = np.random.default_rng(seed)
        noisy = np.repeat(x, samples, axis=0) + rng.normal(0.0, noise, (batch * samples, features))
        _, g = input_gradient(work, noisy, np.repeat(targets, samples), output, chunk_rows)
        return Attribution(method, output, g.reshape(batch, samples, features).mean(axis=1), values)
    if steps < 1:
        raise ValueError("integrated gradients needs steps >= 1")
    start = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    alphas, weights = gauss_legendre(steps)
    path = start[:, None, :] + alphas[None, :, None] * (x - start)[:, None, :]  # (batch, steps, features)
    _, g = input_gradient(work, path.reshape(batch * steps, features), np.repeat(targets, steps), output,
                          chunk_rows)
    attributions = (x - start) * np.einsum("s,bsf->bf", weights, g.reshape(batch, steps, features))
    start_values, _ = input_gradient(work, np.ascontiguousarray(start), targets, output, chunk_rows)
    delta = attributions.sum(axis=1) - (values - start_values)
    return Attribution(method, output, attributions, values, delta)


def rows_needed(method: str, batch: int, steps: int, samples: int) -> int:
    """Forward-and-backward rows an explanation runs (what its cost scales with)."""
    per_sample = {"integrated_gradients": steps + 2, "smoothgrad": samples + 1}.get(method, 1)
    return batch * per_sample
