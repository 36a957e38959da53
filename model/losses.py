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
            index = targets.astype(np.intp)
            # as PyTorch: -1 is no "last class", nor 2.7 class 2
            if len(index) and (index.min() < 0 or index.max() >= logits.shape[1] or not np.array_equal(index, targets)):
                raise ValueError(f"class indices must be whole numbers in [0, {logits.shape[1]}), got "
                                 f"{targets[:8].tolist()}...")
            onehot = np.zeros_like(logits)
            onehot[np.arange(batch), index] = 1.0
        elif targets.shape == logits.shape:
            onehot = targets.astype(logits.dtype, copy=False)
        else:  # (batch, 1) indices broadcast silently against the logits: a wrong loss, no error
            raise ValueError(f"targets must be class indices of shape ({batch},) or distributions of shape "
                             f"{logits.shape}, got shape {targets.shape}")
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
        # d/dz of log_norm * sum(t) - t . z: the forward's own terms, so targets that do not sum to 1
        # (label smoothing written by hand, a caller's soft labels) get their true gradient too
        mass = self._onehot.sum(axis=1, keepdims=True)
        grad = self._probs * mass - self._onehot
        grad /= grad.shape[0]
        return grad


class Distillation(Loss):
    """Knowledge distillation (Hinton, Vinyals and Dean, 2015), fused on the student's logits z.

    ``targets`` is a pair ``(labels, teacher_logits)``: class indices (batch,) and the teacher's
    logits (batch, classes). Per sample,
    ``(1 - weight) * CE(labels, z) + weight * T^2 * KL(softmax(t / T) || softmax(z / T))``.
    The KL divergence is the cross-entropy ``CE(softmax(t / T), z / T)`` less the teacher's entropy,
    a constant, so it is 0 when the student matches the teacher and has the cross-entropy's
    gradient; ``T^2`` keeps that gradient on the hard term's scale whatever the temperature (it is
    ``T (softmax(z / T) - softmax(t / T))``).
    """

    def __init__(self, temperature: float = 4.0, weight: float = 0.5) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        self.temperature, self.weight = float(temperature), float(weight)
        self._hard, self._soft = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()

    def forward(self, logits: np.ndarray, targets: tuple[np.ndarray, np.ndarray]) -> float:
        labels, teacher_logits = targets
        t = self.temperature
        log_targets = np.asarray(teacher_logits, dtype=logits.dtype) / t  # log-softmax, shifted to be stable
        log_targets -= log_targets.max(axis=1, keepdims=True)
        log_targets -= np.log(np.exp(log_targets).sum(axis=1, keepdims=True))
        soft_targets = np.exp(log_targets)
        entropy = -float(np.sum(soft_targets * log_targets)) / len(log_targets)
        hard = self._hard.forward(logits, labels)
        kl = self._soft.forward(logits / t, soft_targets) - entropy
        return (1.0 - self.weight) * hard + self.weight * t * t * kl

    def backward(self) -> np.ndarray:
        grad = self._soft.backward()
        grad *= self.weight * self.temperature  # T^2 times d(z / T)/dz
        grad += (1.0 - self.weight) * self._hard.backward()
        return grad


LOSSES: dict[str, type[Loss]] = {
    "mse": MeanSquaredError,
    "binary_cross_entropy": SigmoidBinaryCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
}

