"""Training batches: the rows of an epoch in its shuffled order, augmented, with their loss targets.

Augmenting a batch (and running a teacher on it, for distillation) costs about as much as the
training step itself for the MNIST networks, and needs nothing from that step. :func:`ahead` makes
the next batch on a second thread while the step runs on the first; NumPy releases the GIL in its
array loops and in BLAS, so on two cores the two overlap. :func:`one_blas_thread` then keeps the
step's BLAS to one thread, so it does not fight the batch being made for the other core, and the
weights do not depend on how many threads the environment asks of OpenBLAS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
Teacher = Callable[[np.ndarray], np.ndarray]  # (batch, features) -> logits (batch, classes)


@dataclass(frozen=True)
class Batch:
    index: np.ndarray  # (b,) rows of the training set
    x: np.ndarray  # (b, features), augmented if there is an augmentation
    targets: Any  # what the loss takes: targets[index], or (targets[index], teacher logits) to distil


def make_batches(x: np.ndarray, targets: np.ndarray, order: np.ndarray, *, batch_size: int,
                 augment: Augment | None = None, rng: np.random.Generator | None = None,
                 teacher: Teacher | None = None) -> Iterator[Batch]:
    """The batches of one epoch, in ``order``. ``augment`` draws from ``rng``; ``teacher`` sees the
    batch exactly as the student will (augmented)."""
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        xb = x[index] if augment is None else augment(x[index], rng)
        tb = targets[index] if teacher is None else (targets[index], teacher(xb))
        yield Batch(index, xb, tb)


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """BLAS limited to one thread for the block (threadpoolctl, in the ``train`` extra); without
    threadpoolctl, BLAS keeps the threads the environment gives it (``OPENBLAS_NUM_THREADS``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


_END = object()


def ahead(items: Iterator[Any]) -> Iterator[Any]:
    """Iterate ``items`` on a worker thread, one item ahead of the consumer.

    The items and their order are those of ``items`` (one thread makes them, in turn), so a
    seeded run gives the same batches either way. An exception in ``items`` is raised here;
    closing this iterator early waits for the item being made, then stops.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="batches") as pool:
        pending = pool.submit(next, items, _END)
        try:
            while (item := pending.result()) is not _END:
                pending = pool.submit(next, items, _END)
                yield item
        finally:
            with contextlib.suppress(Exception):  # already raised, or about to be superseded
                pending.result()
