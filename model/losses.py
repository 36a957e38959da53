"""Losses. Each has ``forward(outputs, targets) -> float`` and ``backward() -> d(loss)/d(outputs)``.

All three are *means over the batch* of a per-sample loss, so gradients carry a ``1 / batch``
factor and the learning rate does not depend on the batch size.

The cross-entropies are fused with their output function and take *logits*: the gradient is the
famous ``(p - t) / batch``, and the loss is computed with log-sum-exp / softplus, so no ``log(0)``
or overflow ever reaches the caller.
"""

from __future__ import annotations

import numpy as np

from model.layers import sigmoid


class Loss:
    """Base class. Which loss pairs with which network head is ``model/heads.py``'s table."""

    def forward(self, outputs: np.ndarray, targets: np.ndarray) -> float:  # pragma: no cover
        raise NotImplementedError

    def backward(self) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    __call__ = forward


class MeanSquaredError(Loss):
    """``mean over batch of 0.5 * sum_j (y_j - t_j)^2``.

    outputs, targets : ndarray of shape (batch, outputs); a 1-D target is read as one column.
    The 0.5 makes the gradient the plain error ``(y - t) / batch`` of the classic delta rule.
    """

    def forward(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        targets = np.asarray(targets, dtype=outputs.dtype).reshape(outputs.shape)
        self._diff = outputs - targets
        return float(0.5 * np.sum(self._diff * self._diff) / outputs.shape[0])

    def backward(self) -> np.ndarray:
        return self._diff / self._diff.shape[0]


class SigmoidBinaryCrossEntropy(Loss):
    """Binary cross-entropy on sigmoid outputs, fused: takes logits z of shape (batch, k).

    Per element ``-(t log p + (1 - t) log(1 - p))`` with ``p = sigmoid(z)``, computed as
    ``softplus(z) - t z`` (stable for any z); summed over the k outputs, mean over the batch.
    """

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        targets = np.asarray(targets, dtype=logits.dtype).reshape(logits.shape)
        self._logits, self._targets = logits, targets  # backward's sigmoid is not paid by a forward alone
        softplus = np.logaddexp(0.0, logits)
        return float((softplus - targets * logits).sum() / logits.shape[0])

    def backward(self) -> np.ndarray:
        return (sigmoid(self._logits) - self._targets) / self._logits.shape[0]


class SoftmaxCrossEntropy(Loss):
    """Categorical cross-entropy on softmax outputs, fused: takes logits z of shape (batch, classes).

    ``targets`` are class indices of shape (batch,) or target distributions (one-hot) of shape
    (batch, classes). Loss is the mean over the batch of ``logsumexp(z) - sum_j t_j z_j``.
    """

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        batch = logits.shape[0]
        targets = np.asarray(targets)
        if targets.ndim == 1:
            onehot = np.zeros_like(logits)
            onehot[np.arange(batch), targets.astype(np.intp)] = 1.0
        else:
            onehot = targets.astype(logits.dtype, copy=False)
        rows = np.arange(batch)
        top = logits.argmax(axis=1)
        shifted = logits - logits[rows, top][:, None]
        exps = np.exp(shifted)
        # log(sum exp) = log1p(sum of the non-max terms): exact even when one class has p ~ 1,
        # which keeps numerical gradient checks of confident (trained) networks meaningful.
        exps[rows, top] = 0.0
        rest = exps.sum(axis=1)
        log_norm = np.log1p(rest)
        exps[rows, top] = 1.0
        exps /= (1.0 + rest)[:, None]
        self._probs = exps
        self._onehot = onehot
        per_sample = log_norm * onehot.sum(axis=1) - np.sum(onehot * shifted, axis=1)
        return float(per_sample.sum() / batch)

    def backward(self) -> np.ndarray:
        grad = self._probs - self._onehot
        grad /= grad.shape[0]
        return grad


LOSSES: dict[str, type[Loss]] = {
    "mse": MeanSquaredError,
    "binary_cross_entropy": SigmoidBinaryCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
}

