"""The batcher's rules in-process (greenlets, no server): the cost table's decision, a failing pass fails
only its own requests, rows are capped at MAX_BATCH, large requests go straight to the model, and
answers equal each request's own pass within the float32 policy. The real server: test_batching.py."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
import weakref

import gevent
import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batching.cost_table import CostTable
from service.batching.gevent_batcher import GeventBatcher
from service.repository.registry import ModelRegistry
from tests.floats import assert_probabilities_close

MERGING_PAYS = CostTable((1, 2, 4, 8, 16, 32, 64), (1e-4, 1.1e-4, 1.2e-4, 1.3e-4, 1.5e-4, 2e-4, 3e-4))


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


def executed(model: str) -> tuple[float, float]:
    labels = {"model": model, "kind": "executed"}
    return (REGISTRY.get_sample_value("nn_batch_size_count", labels) or 0.0,
            REGISTRY.get_sample_value("nn_batch_size_sum", labels) or 0.0)


def with_table(batcher: GeventBatcher, entry, table: CostTable = MERGING_PAYS) -> None:
    batcher.tables[id(entry)] = (weakref.ref(entry), table)


def fresh_hub(test):
    """Run the test on a thread of its own, so with a gevent hub of its own. In the whole suite the main
    thread's greenlets are not ours alone (Playwright's sync API keeps its own there for the session),
    and once a failing pass's waiters there never resumed; on a fresh thread only the batcher's run."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(test, *args, **kwargs).result()
    return run


def run_together(batcher: GeventBatcher, calls: list[tuple]) -> list:
    """Each ``(entry, rows)`` in a greenlet of its own, all started in one turn; the result or the exception."""
    def one(entry, rows):
        try:
            return batcher.run(entry, rows)
        except Exception as exc:  # the test looks at which requests failed
            return exc
    greenlets = [gevent.spawn(one, entry, rows) for entry, rows in calls]
    done = gevent.joinall(greenlets, timeout=60, raise_error=True)
    assert len(done) == len(greenlets), f"{len(greenlets) - len(done)} of {len(greenlets)} requests never finished"
    return [g.value for g in greenlets]


def test_the_cost_table_merges_only_where_it_pays():
    gemv_then_gemm = CostTable((1, 2, 4, 8, 16), (0.28, 0.88, 0.95, 1.19, 1.54))  # the OpenBLAS figures
    assert not gemv_then_gemm.merge_pays([1, 1])  # two rows cost more than two single rows
    assert not gemv_then_gemm.merge_pays([1, 1, 1])
    assert gemv_then_gemm.merge_pays([1] * 8)
    assert not gemv_then_gemm.merge_pays([8])  # one request: nothing to merge
    assert gemv_then_gemm.cost(12) == pytest.approx((1.19 + 1.54) / 2)
    assert gemv_then_gemm.cost(32) == pytest.approx(1.54 * 2)
    measured = CostTable.measure(_digits_network(), 25, np.float32)
    assert measured.sizes[-1] == measured.merge_limit and list(measured.seconds) == sorted(measured.seconds)


def _digits_network():
    from model.io import load_model
    from tests.integration.conftest import ROOT

    return load_model(ROOT / "model_repository" / "digits" / "1" / "model.npz").network


class Failing:
    """A network whose pass fails when a sample is all ones (a stand-in for a model bug on some input)."""

    def __init__(self, network) -> None:
        self.network, self.dtype = network, network.dtype

    def predict_proba(self, x):
        if (x == 1).all(axis=1).any():
            raise FloatingPointError("the model failed on this batch")
        return self.network.predict_proba(x)


@fresh_hub
def test_a_failing_pass_fails_its_own_requests_only(registry):
    digits = registry.snapshot.get("digits")
    broken = dataclasses.replace(digits, network=Failing(digits.network))
    xor = registry.snapshot.get("xor")
    # The queue-delay mode (Triton's max_queue_delay / preferred_batch_size): the digits leader waits
    # until its six requests have joined. With the default single turn, which requests join depends on
    # how the loop schedules them, and on a busy machine (a CI run at load 10) it once took fewer.
    batcher = GeventBatcher(max_batch=1024, max_queue_delay_us=500_000, preferred=(6,))
    for entry in (broken, xor):
        with_table(batcher, entry)
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 2, (1, 25)).astype(np.float32) for _ in range(5)]
    poison = np.ones((1, 25), np.float32)
    pairs = [rng.integers(0, 2, (1, 2)).astype(np.float32) for _ in range(4)]
    before = executed("digits")
    # one turn: the five digits requests share a pass that fails; xor's requests (another version) do not
    results = run_together(batcher, [(broken, good[0]), (broken, poison), *[(broken, x) for x in good[1:]],
                                     *[(xor, x) for x in pairs]])
    assert all(isinstance(r, FloatingPointError) for r in results[:6]), [type(r).__name__ for r in results]
    for x, r in zip(pairs, results[6:], strict=True):
        assert_probabilities_close(r, xor.network.predict_proba(x))
    assert np.subtract(executed("digits"), before).tolist() == [1, 6]  # one merged pass of six
    # the queue goes on: the next crowd is answered, each its own rows
    results = run_together(batcher, [(broken, x) for x in good])
    for x, r in zip(good, results, strict=True):
        assert_probabilities_close(r, digits.network.predict_proba(x))
    assert not batcher.queues  # nothing left waiting


@fresh_hub
def test_rows_are_capped_at_max_batch_and_large_requests_run_alone(registry):
    digits = registry.snapshot.get("digits")
    batcher = GeventBatcher(max_batch=8)
    with_table(batcher, digits, CostTable((1, 2, 4), (1e-4, 1.1e-4, 1.2e-4)))  # merge_limit 4
    rng = np.random.default_rng(1)
    threes = [rng.integers(0, 2, (3, 25)).astype(np.float32) for _ in range(5)]
    before = executed("digits")
    results = run_together(batcher, [(digits, x) for x in threes])
    # whole requests up to 8 rows: 3+3, 3+3, 3
    assert np.subtract(executed("digits"), before).tolist() == [3, 15]
    for x, r in zip(threes, results, strict=True):
        assert r.shape == (3, 5)
        assert_probabilities_close(r, digits.network.predict_proba(x))
    before = executed("digits")
    large = [rng.integers(0, 2, (5, 25)).astype(np.float32) for _ in range(3)]  # over merge_limit: alone
    run_together(batcher, [(digits, x) for x in large])
    assert np.subtract(executed("digits"), before).tolist() == [3, 15]



@fresh_hub
def test_the_members_of_a_batch_yield_once_more_before_they_answer(registry):
    """The leader answers at once; each member woken by the pass yields first (``answer_turn``: in the
    worker one answer per turn of the loop, so a request arriving meanwhile is read between two)."""
    digits = registry.snapshot.get("digits")
    yielded = []

    def answer_turn() -> None:
        yielded.append(gevent.getcurrent())
        gevent.idle()

    batcher = GeventBatcher(max_batch=64, answer_turn=answer_turn)
    with_table(batcher, digits, MERGING_PAYS)
    rows = [np.full((1, 25), i % 2, dtype=np.float32) for i in range(4)]
    before = executed("digits")
    results = run_together(batcher, [(digits, x) for x in rows])
    assert np.subtract(executed("digits"), before).tolist() == [1, 4]  # one pass for all four
    assert len(yielded) == 3 and len(set(yielded)) == 3  # each member once, the leader not
    for x, r in zip(rows, results, strict=True):
        assert_probabilities_close(r, digits.network.predict_proba(x))

@fresh_hub
def test_two_loads_of_one_version_never_share_a_pass(registry):
    """A reload makes a new entry for the same name and version: requests that resolved each keep to it."""
    old = registry.snapshot.get("digits")
    new = dataclasses.replace(old)
    batcher = GeventBatcher(max_batch=1024)
    for entry in (old, new):
        with_table(batcher, entry)
    x = np.zeros((1, 25), np.float32)
    before = executed("digits")
    run_together(batcher, [(old, x), (new, x), (old, x), (new, x)])
    assert np.subtract(executed("digits"), before).tolist() == [2, 4]


class Slow:
    """A network whose pass takes 50 ms on the model thread (its table says so, so it runs off the loop)."""

    def __init__(self, network) -> None:
        self.network, self.dtype = network, network.dtype

    def predict_proba(self, x):
        time.sleep(0.05)
        return self.network.predict_proba(x)


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
@fresh_hub
def test_a_request_killed_while_it_waits_strands_nobody(registry):
    """A waiting request's greenlet is killed (as on a stop) while a pass runs: the requests queued
    behind it still get a leader and their answers, and the queue empties."""
    digits = registry.snapshot.get("digits")
    slow = dataclasses.replace(digits, network=Slow(digits.network))
    batcher = GeventBatcher(max_batch=1024)
    with_table(batcher, slow, CostTable((1, 2, 4), (0.05, 0.05, 0.05)))
    x = np.zeros((1, 25), np.float32)
    first = gevent.spawn(batcher.run, slow, x)
    gevent.sleep(0.01)  # the first pass is running on the model thread
    survivor, doomed = gevent.spawn(batcher.run, slow, x.copy()), gevent.spawn(batcher.run, slow, x.copy())
    gevent.sleep(0.005)  # both queued behind it
    assert len(batcher.queues[id(slow)].items) == 2
    doomed.kill()
    gevent.joinall([first, survivor], timeout=30, raise_error=True)
    assert_probabilities_close(survivor.value, digits.network.predict_proba(x))
    assert first.value is not None and not batcher.queues


@fresh_hub
def test_a_request_alone_in_its_worker_runs_at_once(registry):
    """With no other connection in the worker nothing could join, so no turn of the loop and no queue;
    with others it takes its turn (where the connections that are ready would join)."""
    xor = registry.snapshot.get("xor")
    turns = []

    def turn() -> None:
        turns.append(1)
        gevent.idle()

    x = np.array([[0, 1], [1, 1]], dtype=np.float32)
    alone = GeventBatcher(max_batch=64, alone=lambda: True, turn=turn)
    with_table(alone, xor)
    before = executed("xor")
    np.testing.assert_array_equal(alone.run(xor, x), xor.network.predict_proba(x))  # the same pass: exact
    assert turns == [] and alone.queues == {} and np.subtract(executed("xor"), before).tolist() == [1, 2]
    crowded = GeventBatcher(max_batch=64, alone=lambda: False, turn=turn)
    with_table(crowded, xor)
    np.testing.assert_array_equal(crowded.run(xor, x), xor.network.predict_proba(x))
    assert turns == [1] and crowded.queues == {}


def test_a_pass_on_the_model_thread_is_observed_once(registry):
    """A pass estimated past OFF_LOOP_SECONDS runs on the model thread; its rows are observed once,
    back on the loop."""
    mnist = registry.snapshot.get("mnist")
    batcher = GeventBatcher(max_batch=64, alone=lambda: True)
    with_table(batcher, mnist, CostTable((1, 2, 4), (0.01, 0.01, 0.01)))  # every pass "10 ms": off the loop
    seen = []
    batcher.observe = lambda entry, rows: seen.append((entry, len(rows)))
    x = np.random.default_rng(2).uniform(0, 1, (3, 784)).astype(np.float32)
    np.testing.assert_array_equal(batcher.run(mnist, x), mnist.network.predict_proba(x))
    assert seen == [(mnist, 3)]
