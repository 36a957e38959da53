"""The classic teaching experiments this project grew from, re-run with this library.

Each experiment returns a :class:`Result` with the published figure and ours. Where the classic
code feeds a constant 1 as a third input, our Dense layer's bias plays that role (the same
arithmetic: the bias is the weight of the constant input).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.gradcheck import loss_closure, numerical_gradient
from model.layers import Dense, ReLU, Sigmoid
from model.losses import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from model.network import Sequential, mlp
from model.optimizers import OPTIMIZERS, SGD
from training import datasets
from training.trainer import accuracy, fit

log = logging.getLogger(__name__)

XOR_X = datasets.xor().x.astype(np.float64)  # the classic experiments run in float64
XOR_Y = datasets.xor().y.astype(np.float64)
COPY_X1_Y = np.array([0, 0, 1, 1], dtype=np.float64)
# "Within half a point": every number we compare with a published one (an output probability or an
# accuracy) must be within 0.005 of it. The one tolerance of the table, named in its "check" column.
HALF_A_POINT = 0.005


@dataclass
class Result:
    name: str
    published: str
    ours: str
    ok: bool
    values: list[float]
    check: str  # what "ok" means for this row, as the table prints it


def _fmt(values: np.ndarray, digits: int = 4) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in np.ravel(values))


def _per_sample(net: Sequential, loss, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int) -> np.ndarray:
    fit(net, loss, SGD(lr), x, y, epochs=epochs, batch_size=1, rng=np.random.default_rng(seed), shuffle=False)
    return net.predict_proba(x).ravel()


def single_layer(target: np.ndarray, seed: int = 0) -> np.ndarray:
    """One sigmoid unit on (x1, x2, 1), delta rule (squared error), per sample, lr 0.9, 10,000 epochs."""
    rng = np.random.default_rng(seed)
    net = Sequential([Dense(2, 1, init="uniform", rng=rng, dtype=np.float64), Sigmoid()], head="identity")
    return _per_sample(net, MeanSquaredError(), XOR_X, target, 10_000, 0.9, seed)


def xor_341(cross_entropy: bool, seed: int = 0) -> np.ndarray:
    """XOR with 4 sigmoid hidden units, per-sample backprop, lr 0.9; squared-error or cross-entropy delta."""
    rng = np.random.default_rng(seed)
    layers = [Dense(2, 4, init="uniform", rng=rng, dtype=np.float64), Sigmoid(),
              Dense(4, 1, init="uniform", rng=rng, dtype=np.float64)]
    if cross_entropy:
        net, loss, epochs = Sequential(layers, head="sigmoid"), SigmoidBinaryCrossEntropy(), 5_000
    else:
        net, loss, epochs = Sequential([*layers, Sigmoid()], head="identity"), MeanSquaredError(), 10_000
    return _per_sample(net, loss, XOR_X, XOR_Y, epochs, 0.9, seed)


def xor_numerical(seed: int = 0, steps: int = 20_001, lr: float = 0.01) -> np.ndarray:
    """XOR 2-6-1 trained by gradient descent on central-difference gradients only (no backprop)."""
    rng = np.random.default_rng(seed)
    net = Sequential([Dense(2, 6, init="he", rng=rng, dtype=np.float64), ReLU(),
                      Dense(6, 1, init="he", rng=rng, dtype=np.float64)], head="sigmoid")
    loss = SigmoidBinaryCrossEntropy()
    # The textbook sums the cross-entropy over the four samples (not the mean): same minimum,
    # four times the step; kept so that lr 0.01 means what it meant there.
    f = loss_closure(net, loss, XOR_X, XOR_Y)
    params = net.named_params()
    for _ in range(steps):
        grads = {name: 4.0 * numerical_gradient(f, p, h=1e-4) for name, p in params.items()}
        for name, p in params.items():
            p -= lr * grads[name]
    return net.predict_proba(XOR_X).ravel()


def digits_classic(seed: int = 0, epochs: int = 10_000) -> np.ndarray:
    """25-20-20-20-5 ReLU + softmax on the five glyphs, per-sample SGD lr 0.01. Returns p(true class)."""
    glyphs, _, _ = datasets.digit_glyphs()
    x, y = glyphs.astype(np.float64), np.arange(5)
    rng = np.random.default_rng(seed)
    net = mlp([25, 20, 20, 20, 5], activation="relu", init="he", rng=rng, dtype=np.float64)
    fit(net, SoftmaxCrossEntropy(), SGD(0.01), x, y, epochs=epochs, batch_size=1, rng=rng, shuffle=False)
    return net.predict_proba(x)[np.arange(5), y]


def mnist_mlp(ds: datasets.Dataset, hidden: list[int], *, activation: str, optimizer: str, lr: float,
              epochs: int | None = None, iterations: int | None = None, dropout: float = 0.0,
              init: str = "he", seed: int = 0) -> tuple[float, float]:
    """Train an MLP on MNIST; returns (train accuracy, test accuracy)."""
    rng = np.random.default_rng(seed)
    net = mlp([784, *hidden, 10], activation=activation, init=init, dropout=dropout, rng=rng)
    opt = OPTIMIZERS[optimizer](lr=lr)
    n_epochs = epochs if epochs is not None else -(-iterations * 100 // len(ds.x))
    fit(net, SoftmaxCrossEntropy(), opt, ds.x, ds.y, epochs=n_epochs, batch_size=100, rng=rng, max_steps=iterations)
    xte, yte = ds.eval_sets["test"]
    return accuracy(net, ds.x, ds.y), accuracy(net, xte, yte)


def within_half_a_point(name: str, published: str, values: np.ndarray, expected: np.ndarray,
                        digits: int = 3, ours: str | None = None) -> Result:
    """Every value within HALF_A_POINT of its published counterpart; ``ours`` overrides how the
    values are printed."""
    ok = bool(np.all(np.abs(np.asarray(values) - expected) <= HALF_A_POINT))
    return Result(name, published, ours if ours is not None else _fmt(values, digits), ok,
                  [float(v) for v in np.ravel(values)], f"each within {HALF_A_POINT}")


def quick_experiments() -> list[Callable[[], Result]]:
    def copy_x1() -> Result:
        return within_half_a_point("single sigmoid unit, delta rule, y = x1", "0.010, 0.008, 0.993, 0.992",
                                   single_layer(COPY_X1_Y), np.array([0.010, 0.008, 0.993, 0.992]))

    def single_xor() -> Result:
        return within_half_a_point("single sigmoid unit on XOR (cannot separate)", "0.53, 0.50, 0.47, 0.44",
                                   single_layer(XOR_Y), np.array([0.53, 0.50, 0.47, 0.44]), digits=2)

    def xor_mse() -> Result:
        return within_half_a_point("XOR 3-4-1 sigmoid, squared-error delta, 10,000 epochs",
                                   "0.008, 0.990, 0.990, 0.014", xor_341(False), np.array([0.008, 0.990, 0.990, 0.014]))

    def xor_ce() -> Result:
        return within_half_a_point("XOR 3-4-1 sigmoid, cross-entropy delta, 5,000 epochs",
                                   "0.0001, 0.9993, 0.9998, 0.0011", xor_341(True),
                                   np.array([0.0001, 0.9993, 0.9998, 0.0011]), digits=4)

    def xor_num() -> Result:
        # The material gives no numbers here, only that the outputs are right: that is the check.
        values = xor_numerical()
        ok = bool(np.array_equal(values > 0.5, XOR_Y > 0.5))
        return Result("XOR 2-6-1, numerical gradients only, 20,001 steps", "correct logic outputs",
                      _fmt(values, 3), ok, list(map(float, values)), "the same 0/1 outputs")

    def digits() -> Result:
        p = digits_classic()
        return Result("5x5 digits 25-20-20-20-5 ReLU, per-sample SGD, 10,000 epochs", "all 5 correct, p > 0.9999",
                      f"min p = {p.min():.5f}", bool(p.min() > 0.9999), list(map(float, p)), "every p > 0.9999")

    return [copy_x1, single_xor, xor_mse, xor_ce, xor_num, digits]


def mnist_experiments(data_dir: str | Path | None, download: bool = True) -> list[Callable[[], Result]]:
    """The MNIST experiments; MNIST is read here, so that missing files are said before any experiment
    runs (raises DatasetError), not minutes later with the quick results lost."""
    mnist = datasets.mnist(data_dir, download=download)

    def ds() -> datasets.Dataset:
        return mnist

    def acc(name: str, published: dict[str, float], **kwargs) -> Result:
        train, test = mnist_mlp(ds(), **kwargs)
        ours = {"train": train, "test": test}
        return within_half_a_point(name, ", ".join(f"{k} {v:.4f}" for k, v in published.items()),
                                   np.array([ours[k] for k in published]), np.array(list(published.values())),
                                   ours=", ".join(f"{k} {ours[k]:.4f}" for k in published))

    return [
        lambda: acc("MNIST 784-20-10 sigmoid, SGD 0.1, 10,000 iterations", {"train": 0.9418, "test": 0.9389},
                    hidden=[20], activation="sigmoid", optimizer="sgd", lr=0.1, iterations=10_000, init="xavier"),
        lambda: acc("MNIST 784-256-256-10 ReLU, Adam, He, 5 epochs", {"test": 0.9775},
                    hidden=[256, 256], activation="relu", optimizer="adam", lr=1e-3, epochs=5),
        lambda: acc("same + dropout 0.3, 10 epochs", {"test": 0.9788},
                    hidden=[256, 256], activation="relu", optimizer="adam", lr=1e-3, epochs=10, dropout=0.3),
        lambda: acc("MNIST 8 x 512 ReLU, Adam, 5 epochs (over-deep)", {"test": 0.9714},
                    hidden=[512] * 8, activation="relu", optimizer="adam", lr=1e-3, epochs=5),
    ]


TABLE_HEADER = "| experiment | published | ours | check | met |"


def format_table(results: list[Result]) -> str:
    rows = [TABLE_HEADER, "| --- | --- | --- | --- | --- |"]
    rows += [f"| {r.name} | {r.published} | {r.ours} | {r.check} | {'yes' if r.ok else 'NO'} |" for r in results]
    return "\n".join(rows)
