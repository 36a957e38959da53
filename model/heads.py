"""Output heads: one table of what a network's head means. The network, the losses' pairing, the
gradient check and training all read it.

| head     | outputs (from logits z)     | paired loss (fused, on z)  | class of one sample             |
| -------- | --------------------------- | -------------------------- | ------------------------------- |
| softmax  | row-wise softmax(z)         | SoftmaxCrossEntropy        | argmax                          |
| sigmoid  | sigmoid(z), independently   | SigmoidBinaryCrossEntropy  | argmax; one output: p > 0.5     |
| identity | z itself                    | MeanSquaredError           | argmax; one output: z > 0.5     |

Deciding on logits (training's running accuracy skips the head) gives the same classes: argmax is
unchanged by a monotone head, and a sigmoid's p > 0.5 is z > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.layers import sigmoid, softmax
from model.losses import Loss, MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy


@dataclass(frozen=True)
class Head:
    name: str
    activation: Callable[[np.ndarray], np.ndarray]  # logits -> outputs
    loss: type[Loss]
    logit_threshold: float  # a one-output network's class is 1 when its logit exceeds this

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        """Class indices (batch,) from head outputs (batch, k)."""
        return threshold_or_argmax(outputs, 0.5)

    def decide_logits(self, logits: np.ndarray) -> np.ndarray:
        """The same classes from logits, without applying the head."""
        return threshold_or_argmax(logits, self.logit_threshold)


def threshold_or_argmax(scores: np.ndarray, threshold: float) -> np.ndarray:
    if scores.shape[1] == 1:
        return (scores[:, 0] > threshold).astype(np.int64)
    return scores.argmax(axis=1)


HEADS: dict[str, Head] = {
    "softmax": Head("softmax", softmax, SoftmaxCrossEntropy, 0.5),
    "sigmoid": Head("sigmoid", sigmoid, SigmoidBinaryCrossEntropy, 0.0),
    "identity": Head("identity", lambda z: z, MeanSquaredError, 0.5),
}


def head(name: str) -> Head:
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known: {sorted(HEADS)}") from None


def loss_for_head(name: str) -> Loss:
    """The loss that pairs with a network head (softmax -> CE, sigmoid -> BCE, identity -> MSE)."""
    return head(name).loss()
