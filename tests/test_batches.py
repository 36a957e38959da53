"""Training batches made one ahead on a second thread: the same batches, in order, as made inline."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from training import recipes
from training.batches import ahead, make_batches


def jitter(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return batch + rng.normal(0.0, 0.05, batch.shape).astype(batch.dtype)


def test_ahead_yields_the_same_batches_in_order():
    rng = np.random.default_rng(0)
    x, y = rng.random((103, 6), dtype=np.float32), rng.integers(0, 3, 103)
    order = rng.permutation(103)
    inline = list(make_batches(x, y, order, batch_size=10, augment=jitter, rng=np.random.default_rng(5)))
    threaded = list(ahead(make_batches(x, y, order, batch_size=10, augment=jitter, rng=np.random.default_rng(5))))
    assert [len(b.index) for b in threaded] == [10] * 10 + [3]
    for a, b in zip(inline, threaded, strict=True):
        np.testing.assert_array_equal(a.index, b.index)
        assert a.x.tobytes() == b.x.tobytes()
        np.testing.assert_array_equal(a.targets, b.targets)


def test_ahead_makes_items_on_another_thread_and_raises_their_errors():
    made_on = []

    def items():
        for i in range(3):
            made_on.append(threading.get_ident())
            yield i
        raise RuntimeError("augmentation failed")

    got = []
    with pytest.raises(RuntimeError, match="augmentation failed"):
        for item in ahead(items()):
            got.append(item)
    assert got == [0, 1, 2]
    assert threading.get_ident() not in made_on


def test_closing_ahead_early_stops_making_items():
    made = []

    def items():
        for i in range(1000):
            made.append(i)
            yield i

    stream = ahead(items())
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    assert len(made) <= 3  # at most the one being made when it closed


def test_the_teacher_sees_the_augmented_batch():
    rng = np.random.default_rng(1)
    x, y = rng.random((20, 4), dtype=np.float32), rng.integers(0, 2, 20)
    seen = []

    def teacher(batch):
        seen.append(batch)
        return batch[:, :2] * 2

    for batch in make_batches(x, y, np.arange(20), batch_size=8, augment=jitter, rng=rng, teacher=teacher):
        labels, logits = batch.targets
        np.testing.assert_array_equal(labels, y[batch.index])
        assert batch.x is seen[-1] and not np.array_equal(batch.x, x[batch.index])
        np.testing.assert_array_equal(logits, batch.x[:, :2] * 2)


def test_augmented_training_is_reproducible_bit_for_bit():
    """The augmentation runs one batch ahead on its own generator; two runs still agree exactly, and
    the augmentation really ran (a run without it differs)."""
    recipe = replace(recipes.RECIPES["digits"], epochs=3, augmenter=jitter)
    ds = recipe.load_data()
    a, _ = recipes.train_recipe(recipe, ds)
    b, _ = recipes.train_recipe(recipe, ds)
    plain, _ = recipes.train_recipe(replace(recipe, augmenter=None), ds)
    for key, value in a.state().items():
        assert value.tobytes() == b.state()[key].tobytes()
    assert any(value.tobytes() != plain.state()[key].tobytes() for key, value in a.state().items())


def test_the_step_runs_on_one_blas_thread_while_batches_are_made_ahead():
    """One core steps, the other makes the next batch: BLAS is pinned to one thread for the epoch
    (and the weights do not depend on OPENBLAS_NUM_THREADS), then given back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    seen: list[set[int]] = []

    def watching(batch, rng):
        seen.append(blas_threads())
        return jitter(batch, rng)

    with threadpool_limits(2, user_api="blas"):
        recipe = replace(recipes.RECIPES["digits"], epochs=2, augmenter=watching)
        recipes.train_recipe(recipe, recipe.load_data())
        assert blas_threads() == {2}
    assert seen and all(threads == {1} for threads in seen)


def test_without_threadpoolctl_blas_keeps_its_threads(monkeypatch):
    """A runtime-only install (no train extra) still trains augmented batches, BLAS as configured."""
    import sys

    from threadpoolctl import threadpool_info

    before = [p["num_threads"] for p in threadpool_info()]
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    recipe = replace(recipes.RECIPES["digits"], epochs=1, augmenter=jitter)
    recipes.train_recipe(recipe, recipe.load_data())
    monkeypatch.undo()
    assert [p["num_threads"] for p in threadpool_info()] == before
