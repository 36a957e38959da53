"""The thread batcher's rules in-process (service/batching/thread_batcher.py): real threads, the shipped networks,
no server. A lone request runs on its caller's thread at once; requests that wait for a pass share the
next one and each gets its own answer (the float32 policy); a failing pass fails only its own batch;
versions never mix; rows are capped at MAX_BATCH; a request over the merge limit runs alone. The real
gRPC server: tests/integration/test_grpc_batching.py.

To make "requests that wait" deterministic, the first pass of a test waits on a gate the test opens
once the requests it wants queued are queued (checked under the batcher's own lock)."""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from service.batching.cost_table import CostTable
from service.batching.thread_batcher import ThreadBatcher
from service.repository.registry import ModelRegistry
from tests.floats import assert_probabilities_close
from tests.test_batcher import MERGING_PAYS, Failing, executed

NEVER_PAYS = CostTable((1, 2, 4), (1e-4, 3e-4, 6e-4))  # every merge costs more than its passes alone


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


class Gated:
    """A network whose first pass waits until the test opens the gate; records each pass's rows and thread."""

    def __init__(self, network) -> None:
        self.network, self.dtype = network, network.dtype
        self.gate, self.started = threading.Event(), threading.Event()
        self.passes: list[tuple[int, int]] = []  # (rows, thread ident)

    def predict_proba(self, x):
        self.passes.append((len(x), threading.get_ident()))
        if len(self.passes) == 1:
            self.started.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return self.network.predict_proba(x)


def gated(entry, table: CostTable = MERGING_PAYS, network=None):
    """A copy of ``entry`` (another load of the same version) with a gated network, and its table known."""
    gate = Gated(network or entry.network)
    return dataclasses.replace(entry, network=gate), gate


def with_table(batcher: ThreadBatcher, entry, table: CostTable = MERGING_PAYS) -> None:
    batcher.tables[id(entry)] = (weakref.ref(entry), table)


def queued(batcher: ThreadBatcher) -> int:
    with batcher.lock:
        return sum(len(queue.items) for queue in batcher.queues.values())


def crowd(batcher: ThreadBatcher, calls: list[tuple], gate: Gated, pool: ThreadPoolExecutor) -> list:
    """The first call starts the gated pass; the others are sent one at a time, each queued before the
    next (so the queue's order is the list's); then the gate opens. The results, or the exceptions."""
    def one(entry, rows):
        try:
            return batcher.run(entry, rows)
        except Exception as exc:  # the test looks at which requests failed
            return exc

    futures: list[Future] = [pool.submit(one, *calls[0])]
    assert gate.started.wait(30)
    for k, call in enumerate(calls[1:], 1):
        futures.append(pool.submit(one, *call))
        deadline = time.monotonic() + 30
        while queued(batcher) < k:
            assert time.monotonic() < deadline, f"request {k} never queued"
            time.sleep(0.001)
    gate.gate.set()
    results = [f.result(timeout=60) for f in futures]
    assert not batcher.queues and batcher.running == 0  # nothing left waiting, every slot free
    return results


@pytest.fixture
def pool():
    with ThreadPoolExecutor(32) as p:
        yield p


def rows(seed: int, n: int, count: int, features: int = 25) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 2, (n, features)).astype(np.float32) for _ in range(count)]


def test_a_lone_request_runs_at_once_on_its_callers_thread(registry):
    entry, gate = gated(registry.snapshot.get("digits"))
    gate.gate.set()
    batcher = ThreadBatcher(max_batch=1024)
    with_table(batcher, entry)
    x = rows(0, 1, 1)[0]
    before = executed("digits")
    for _ in range(3):
        assert_probabilities_close(batcher.run(entry, x), registry.snapshot.get("digits").network.predict_proba(x))
    assert gate.passes == [(1, threading.get_ident())] * 3  # no other thread, no wait
    assert not batcher.queues and batcher.running == 0
    assert np.subtract(executed("digits"), before).tolist() == [3, 3]


def test_waiting_requests_share_the_next_pass_each_its_own_answer(registry, pool):
    """MNIST: while one pass runs, 12 single samples queue; they run as one merged pass, on the thread of
    the first of them (one hand-off), and each answer equals its sample's answer alone."""
    mnist = registry.snapshot.get("mnist")
    entry, gate = gated(mnist)
    batcher = ThreadBatcher(max_batch=1024)
    with_table(batcher, entry)
    x = rows(1, 1, 13, features=784)
    before = executed("mnist")
    results = crowd(batcher, [(entry, r) for r in x], gate, pool)
    for r, got in zip(x, results, strict=True):
        assert_probabilities_close(got, mnist.network.predict_proba(r))
    assert [n for n, _ in gate.passes] == [1, 12]
    assert gate.passes[1][1] != gate.passes[0][1]  # the leader is a waiter, not the thread that ran the first
    assert np.subtract(executed("mnist"), before).tolist() == [2, 13]


def test_merging_only_where_the_cost_table_says_it_pays(registry, pool):
    digits = registry.snapshot.get("digits")
    entry, gate = gated(digits)
    batcher = ThreadBatcher(max_batch=1024)
    with_table(batcher, entry, NEVER_PAYS)
    x = rows(2, 1, 4)
    results = crowd(batcher, [(entry, r) for r in x], gate, pool)
    assert [n for n, _ in gate.passes] == [1, 1, 1, 1]  # one pass per queued request
    for r, got in zip(x, results, strict=True):
        assert_probabilities_close(got, digits.network.predict_proba(r))


def test_a_failing_pass_fails_its_own_batch_only(registry, pool):
    """Digits requests queued with a poisoned one share a pass that fails: all of them fail. The xor
    requests queued meanwhile (another version) are answered, and so is the next crowd of digits."""
    digits, xor = registry.snapshot.get("digits"), registry.snapshot.get("xor")
    entry, gate = gated(digits, network=Failing(digits.network))
    batcher = ThreadBatcher(max_batch=1024)
    for e in (entry, xor):
        with_table(batcher, e)
    good, poison = rows(3, 1, 5), np.ones((1, 25), np.float32)
    pairs = rows(4, 1, 3, features=2)
    calls = [(entry, good[0]), (entry, poison), *[(entry, x) for x in good[1:]], *[(xor, x) for x in pairs]]
    results = crowd(batcher, calls, gate, pool)
    assert_probabilities_close(results[0], digits.network.predict_proba(good[0]))  # the pass before: its own
    assert all(isinstance(r, FloatingPointError) for r in results[1:6]), [type(r).__name__ for r in results]
    for x, r in zip(pairs, results[6:], strict=True):
        assert_probabilities_close(r, xor.network.predict_proba(x))
    assert [n for n, _ in gate.passes] == [1, 5]
    for x in good:  # the batcher goes on
        assert_probabilities_close(batcher.run(entry, x), digits.network.predict_proba(x))
    # where merging does not pay, the same queue runs one pass per request: only the poisoned one fails
    entry, gate = gated(digits, network=Failing(digits.network))
    with_table(batcher, entry, NEVER_PAYS)
    results = crowd(batcher, [(entry, good[0]), (entry, good[1]), (entry, poison), (entry, good[2])], gate, pool)
    assert [type(r).__name__ for r in results] == ["ndarray", "ndarray", "FloatingPointError", "ndarray"]
    for x, r in zip([good[0], good[1], good[2]], [results[0], results[1], results[3]], strict=True):
        assert_probabilities_close(r, digits.network.predict_proba(x))


def test_two_loads_of_one_version_never_share_a_pass(registry, pool):
    """A reload makes a new entry for the same name and version: requests that resolved each keep to it."""
    old, gate = gated(registry.snapshot.get("digits"))
    new = dataclasses.replace(old)  # the same (gated) network, another load
    batcher = ThreadBatcher(max_batch=1024)
    for e in (old, new):
        with_table(batcher, e)
    x = np.zeros((1, 25), np.float32)
    before = executed("digits")
    crowd(batcher, [(old, x), (old, x), (new, x), (old, x), (new, x)], gate, pool)
    assert [n for n, _ in gate.passes] == [1, 2, 2]  # old's two, then new's two: never four
    assert np.subtract(executed("digits"), before).tolist() == [3, 5]


def test_rows_are_capped_at_max_batch_and_large_requests_run_alone(registry, pool):
    digits = registry.snapshot.get("digits")
    entry, gate = gated(digits)
    batcher = ThreadBatcher(max_batch=8)
    with_table(batcher, entry, CostTable((1, 2, 4), (1e-4, 1.1e-4, 1.2e-4)))  # merge_limit 4
    threes = rows(5, 3, 5)
    results = crowd(batcher, [(entry, x) for x in threes], gate, pool)
    assert [n for n, _ in gate.passes] == [3, 6, 6]  # after the first, whole requests up to 8 rows: 3+3, 3+3
    for x, r in zip(threes, results, strict=True):
        assert r.shape == (3, 5)
        assert_probabilities_close(r, digits.network.predict_proba(x))
    entry, gate = gated(digits)
    with_table(batcher, entry, CostTable((1, 2, 4), (1e-4, 1.1e-4, 1.2e-4)))
    sizes = [1, 1, 5, 1, 1, 6, 2]  # 5 and 6 are over the merge limit: each runs alone
    calls = [(entry, rows(6 + k, n, 1)[0]) for k, n in enumerate(sizes)]
    results = crowd(batcher, calls, gate, pool)
    assert [n for n, _ in gate.passes] == [1, 1, 5, 2, 6, 2]
    for (_, x), r in zip(calls, results, strict=True):
        assert_probabilities_close(r, digits.network.predict_proba(x))


def test_passes_at_once_are_capped_at_threads_across_versions(registry, pool):
    """GRPC_THREADS=2: two passes run at once (of any versions), a third request waits for one of them."""
    digits, xor = registry.snapshot.get("digits"), registry.snapshot.get("xor")
    first, gate = gated(digits)
    batcher = ThreadBatcher(max_batch=1024, threads=2)
    for e in (first, xor):
        with_table(batcher, e)
    busy = pool.submit(batcher.run, first, rows(7, 1, 1)[0])
    assert gate.started.wait(30)
    x = rows(8, 1, 1, features=2)[0]
    assert_probabilities_close(batcher.run(xor, x), xor.network.predict_proba(x))  # the second slot: at once
    assert queued(batcher) == 0
    second, gate2 = gated(xor)
    with_table(batcher, second)
    held = pool.submit(batcher.run, second, x)  # runs in the second slot and holds it
    assert gate2.started.wait(30)
    third = pool.submit(batcher.run, xor, x)
    deadline = time.monotonic() + 30
    while queued(batcher) < 1:
        assert time.monotonic() < deadline, "the third request did not wait"
        time.sleep(0.001)
    gate.gate.set()
    gate2.gate.set()
    for f in (busy, held, third):
        assert f.result(timeout=30) is not None
    assert not batcher.queues and batcher.running == 0


@pytest.mark.parametrize(("env", "batches"), [({}, True), ({"BATCHING": "off"}, False),
                                              ({"BATCHING": "off", "GRPC_BATCHING": "on"}, True),
                                              ({"GRPC_BATCHING": "off"}, False)])
def test_grpc_batching_follows_batching_unless_set(model_repository, env, batches):
    """GRPC_BATCHING decides for the gRPC processes; unset, BATCHING does (off turns off both)."""
    from service.config import Settings
    from service.dataplane.dataplane import InlineRunner
    from service.grpc.server import build_plane

    settings = Settings.from_env(env, model_dir=model_repository, grpc_threads=3)
    plane = build_plane(settings)
    assert settings.grpc_batches is batches and isinstance(plane.runner, ThreadBatcher) is batches
    if not batches:
        assert isinstance(plane.runner, InlineRunner) and plane.describe("mnist")["batching"]["enabled"] is False
        return
    state = plane.describe("mnist")["batching"]  # every loaded version's table measured before the first call
    assert state["enabled"] and state["threads"] == 3 and state["mode"] == "opportunistic"
    assert set(state["versions"]) == {str(v) for v in plane.registry.snapshot.serving["mnist"]}


def test_each_pass_that_ran_is_observed_once_with_its_rows(registry, pool):
    """The data plane's per-pass work (the drift score) sees each pass's rows once: the lone first
    request's, then the merged pass of the five queued behind it -- not once per request."""
    entry, gate = gated(registry.snapshot.get("mnist"))
    batcher = ThreadBatcher(max_batch=1024)
    with_table(batcher, entry)
    seen = []
    batcher.observe = lambda e, r: seen.append((e, r.copy()))
    xs = rows(3, 1, 6, features=784)
    crowd(batcher, [(entry, x) for x in xs], gate, pool)
    assert [len(r) for _, r in seen] == [n for n, _ in gate.passes] == [1, 5]
    assert all(e is entry for e, _ in seen)
    np.testing.assert_array_equal(np.concatenate([r for _, r in seen]), np.concatenate(xs))


def test_a_runner_given_by_serve_with_scores_drift_per_pass(registry, pool):
    """The gRPC process's wiring: DataPlane.serve_with hands its runner the drift observer, so samples
    computed through the thread batcher count, each once."""
    from service.dataplane.dataplane import DataPlane

    plane = DataPlane(registry, drift_window=1000)
    plane.serve_with(ThreadBatcher(max_batch=1024, threads=1))
    mnist = registry.snapshot.get("mnist")
    xs = rows(4, 3, 8, features=784)
    list(pool.map(lambda x: plane.infer("mnist", mnist.version, x), xs))
    assert plane.drift.window_of("mnist", mnist.version).filled == 24
