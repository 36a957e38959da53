"""The mini-batch training loop, evaluation, and a per-epoch history."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.heads import head
from model.losses import Loss
from model.network import Sequential
from model.optimizers import Optimizer
from training.batches import Augment, Batch, Teacher, ahead, make_batches, one_blas_thread
from training.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch records: ``{"epoch", "loss", "train_accuracy", "<set>_accuracy", "seconds", "eval_seconds", "lr"}``
    (``seconds`` trains, ``eval_seconds`` evaluates the watched sets after it)."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}

    def series(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]


def predict_labels(net: Sequential, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """Class indices predicted by ``net`` (argmax, or probability > 0.5 for one output)."""
    outs = [net.predict_proba(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return head(net.head).decide(np.concatenate(outs) if outs else np.empty((0, 1)))


def accuracy(net: Sequential, x: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``x`` whose predicted class index equals ``labels``."""
    return float(np.mean(predict_labels(net, x) == np.asarray(labels).reshape(-1)))


def cosine_schedule(base_lr: float, epochs: int, floor: float = 0.0) -> Callable[[int], float]:
    """Learning rate for epoch ``e`` (0-based): cosine decay from ``base_lr`` to ``floor``."""
    def lr(e: int) -> float:
        return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * e / max(epochs, 1)))
    return lr


def fit(
    net: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    augment: Augment | None = None,
    teacher: Teacher | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    shuffle: bool = True,
    progress: bool = False,
    max_steps: int | None = None,
) -> History:
    """Train ``net`` in place with mini-batches; returns the per-epoch history.

    Parameters
    ----------
    x : ndarray of shape (n, features)
    targets : ndarray
        What ``loss`` takes, row-aligned with ``x`` (class indices, or one-hot / real targets).
    labels : ndarray of shape (n,), optional
        Class indices for the training accuracy; defaults to ``targets`` when they are 1-D.
    eval_sets : {name: (x, labels)}
        Evaluated after each epoch, reported as ``<name>_accuracy``.
    augment : callable(batch, rng) -> batch, optional
        Applied to each training batch (never to evaluation data), with a generator of its own
        spawned from ``rng``, on a second thread one batch ahead while the step runs on one BLAS
        thread (``training/batches.py``).
    teacher : callable(batch) -> logits, optional
        Distillation: each batch's loss targets become ``(targets, teacher(augmented batch))``,
        made with the batch; ``loss`` must take them (:class:`model.losses.Distillation`).
    max_steps : int, optional
        Stop after this many optimizer steps (for iteration-count recipes); the last partial
        epoch is still recorded.
    """
    eval_sets = eval_sets or {}
    labels = labels if labels is not None else (targets if np.ndim(targets) == 1 else None)
    n = len(x)
    history = History()
    steps = 0
    augment_rng = rng.spawn(1)[0] if augment is not None else None
    bar = progress_bar(progress, total=epochs * math.ceil(n / batch_size), unit="batch", leave=False)
    for epoch in range(epochs):
        if lr_schedule is not None:
            optimizer.lr = lr_schedule(epoch)
        start = time.perf_counter()
        order = rng.permutation(n) if shuffle else np.arange(n)
        net.train()
        batches = make_batches(x, targets, order, batch_size=batch_size, augment=augment, rng=augment_rng,
                               teacher=teacher)
        overlap = augment is not None or teacher is not None
        if overlap:
            batches = ahead(batches)
        with one_blas_thread() if overlap else contextlib.nullcontext():
            stats = train_epoch(net, loss, optimizer, batches, labels,
                                max_steps=None if max_steps is None else max_steps - steps, on_step=bar.update)
        steps += stats.steps
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": stats.loss_sum / max(stats.seen, 1), "lr": optimizer.lr,
                                  "seconds": time.perf_counter() - start}
        if labels is not None:
            record["train_accuracy"] = stats.correct / max(stats.seen, 1)
        for name, (ex, ey) in eval_sets.items():
            record[f"{name}_accuracy"] = accuracy(net, ex, ey)
        if eval_sets:
            record["eval_seconds"] = time.perf_counter() - start - record["seconds"]
        history.epochs.append(record)
        log.info("epoch %d/%d %s", epoch + 1, epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        if max_steps is not None and steps >= max_steps:
            break
    bar.close()
    net.eval()
    return history


@dataclass
class EpochStats:
    loss_sum: float = 0.0  # sum over samples of the batch-mean loss times the batch size
    correct: int = 0  # running accuracy's hits, decided on the training-mode logits
    seen: int = 0
    steps: int = 0


def train_epoch(net: Sequential, loss: Loss, optimizer: Optimizer, batches: Iterable[Batch],
                labels: np.ndarray | None, *, max_steps: int | None,
                on_step: Callable[[int], Any] = lambda n: None) -> EpochStats:
    """One pass over an epoch's ``batches``: forward, loss, backward, step.

    Stops after ``max_steps`` optimizer steps if given. The running accuracy skips the head
    (``model/heads.py`` says why that gives the same classes).
    """
    decide_logits = head(net.head).decide_logits
    params, grads = net.named_params(), net.named_grads()
    stats = EpochStats()
    for batch in batches:
        logits = net.forward(batch.x)
        stats.loss_sum += loss.forward(logits, batch.targets) * len(batch.index)
        net.backward(loss.backward(), input_grad=False)
        optimizer.step(params, grads)
        if labels is not None:
            stats.correct += int(np.sum(decide_logits(logits) == labels[batch.index]))
        stats.seen += len(batch.index)
        stats.steps += 1
        on_step(1)
        if max_steps is not None and stats.steps >= max_steps:
            break
    return stats
