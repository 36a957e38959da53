"""The queue policy in process: deadlines (the request's, the server's default, the shorter one), the bound
on waiting requests, the waiting / running counts, and both batchers answering a queued request at its
deadline without computing it. The real server in every protocol: tests/integration/test_deadlines.py."""

from __future__ import annotations

import dataclasses
import threading
import time

import gevent
import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batching.cost_table import CostTable
from service.batching.gevent_batcher import GeventBatcher
from service.batching.queue_policy import QueuePolicy, parse_timeout
from service.batching.thread_batcher import ThreadBatcher
from service.dataplane.dataplane import DataPlane
from service.errors import ServiceError
from service.protocols import timeouts
from service.repository.registry import ModelRegistry
from tests.test_batcher import MERGING_PAYS, fresh_hub, with_table

pytestmark = pytest.mark.serial  # 30 ms deadlines answered within 150 ms: run alone (Makefile)


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


def gauge(model: str, state: str) -> float:
    return REGISTRY.get_sample_value("nn_requests_in_progress", {"model": model, "state": state}) or 0.0


def shed(reason: str) -> float:
    return REGISTRY.get_sample_value("nn_requests_shed_total", {"reason": reason}) or 0.0


class SlowNetwork:
    """A network whose pass takes ``seconds`` (on the calling thread) and counts the rows it computed."""

    def __init__(self, network, seconds: float, sleep=time.sleep) -> None:
        self.network, self.seconds, self.sleep, self.rows = network, seconds, sleep, 0

    def __getattr__(self, name):
        return getattr(self.network, name)

    def predict_proba(self, x):
        self.rows += len(x)
        self.sleep(self.seconds)
        return self.network.predict_proba(x)


def test_timeouts_are_whole_microseconds_and_the_shortest_counts():
    assert parse_timeout("50000", "h") == 50000 and parse_timeout(0, "h") is None and parse_timeout(None, "h") is None
    for bad in ("-1", "1.5", "soon", True, 1.5, 10**12, [1], "²", "\u0663", "1" * 5000):
        with pytest.raises(ServiceError) as err:
            parse_timeout(bad, "X-Timeout-Microseconds")
        assert err.value.status == 400 and "microseconds" in err.value.message
    assert timeouts.of("9000", {"timeout": 4000}) == 4000
    assert timeouts.of(None, {"timeout": 0}) is None
    policy = QueuePolicy(default_timeout_us=20_000)
    now = time.perf_counter() + 60.0  # arrivals a minute ahead: no deadline passes while the test runs (a
    # descheduled test process took more than 5 ms between two lines once, and the second was refused)
    assert policy.admit("m", None, now).deadline == pytest.approx(now + 0.02)
    assert policy.admit("m", 5_000, now).deadline == pytest.approx(now + 0.005)  # shorter: the request's
    assert policy.admit("m", 90_000, now).deadline == pytest.approx(now + 0.02)  # never longer than the server's
    assert QueuePolicy().admit("m", None, now).deadline is None


def test_a_request_past_its_deadline_on_arrival_is_refused_and_counted(registry):
    plane = DataPlane(registry)
    before = shed("deadline")
    with pytest.raises(ServiceError) as err:
        plane.infer("xor", None, np.array([[0.0, 1.0]]), timeout_us=1_000, received=time.perf_counter() - 0.01)
    assert (err.value.status, err.value.code) == (504, "deadline_exceeded")
    assert shed("deadline") == before + 1
    assert gauge("xor", "waiting") == 0 and gauge("xor", "running") == 0


def test_a_full_queue_refuses_at_once_with_retry_after():
    policy = QueuePolicy(max_queue_size=2)
    tickets = [policy.admit("full", None, None), policy.admit("full", None, None)]
    assert policy.full() and gauge("full", "waiting") == 2
    before = shed("queue_full")
    with pytest.raises(ServiceError) as err:
        policy.admit("full", None, None)
    assert (err.value.status, err.value.code, err.value.headers) == (503, "queue_full", {"Retry-After": "1"})
    assert shed("queue_full") == before + 1
    tickets[0].start()  # running requests do not count against the bound: only waiting ones
    assert not policy.full() and (gauge("full", "waiting"), gauge("full", "running")) == (1, 1)
    for ticket in tickets:
        policy.release(ticket)
    assert (gauge("full", "waiting"), gauge("full", "running")) == (0, 0) and policy.waiting == 0



def test_a_request_held_for_its_turn_counts_against_the_bound_but_not_in_the_gauge():
    """The HTTP worker holds a place for a request read and waiting for its turn to be parsed: the bound
    counts it (one more is refused before it waits), the model's gauge does not (no model yet)."""
    policy = QueuePolicy(max_queue_size=2)
    ticket = policy.admit("held", None, None)
    policy.hold()
    assert policy.full() and gauge("held", "waiting") == 1
    with pytest.raises(ServiceError) as err:
        policy.admit("held", None, None)
    assert err.value.status == 503
    policy.unhold()  # its turn came: the place it held is the one it is admitted to
    second = policy.admit("held", None, None)
    assert policy.full() and gauge("held", "waiting") == 2
    for t in (ticket, second):
        policy.release(t)
    assert policy.waiting == 0 and gauge("held", "waiting") == 0

class Race:
    """A leader whose pass holds ``batcher`` for 200 ms, and requests that queue behind it: each
    call's answer (or error) and seconds are kept in ``outcomes``."""

    def __init__(self, registry, batcher, sleep=time.sleep) -> None:
        self.entry = dataclasses.replace(registry.snapshot.get("xor"))
        self.slow = SlowNetwork(self.entry.network, 0.2, sleep)
        self.entry.network = self.slow
        self.batcher = batcher
        with_table(batcher, self.entry, MERGING_PAYS)
        self.policy = QueuePolicy()
        self.x = np.array([[0.0, 1.0]], dtype=self.entry.dtype)
        self.outcomes = {}

    def one(self, name, timeout_us):
        ask(self.outcomes, name, self.policy, self.batcher, self.entry, self.x, timeout_us)


def ask(outcomes: dict, name: str, policy: QueuePolicy, batcher, entry, x: np.ndarray, timeout_us) -> None:
    """One request through ``policy`` and ``batcher``: its answer or error (a refusal too) in
    ``outcomes[name]`` and, if it was admitted, its seconds in ``outcomes[name + "_s"]``."""
    start = time.perf_counter()
    try:
        ticket = policy.admit("xor", timeout_us, start)
    except ServiceError as exc:
        outcomes[name] = exc
        return
    try:
        outcomes[name] = batcher.run(entry, x, ticket)
    except ServiceError as exc:
        outcomes[name] = exc
    finally:
        policy.release(ticket)
    outcomes[name + "_s"] = time.perf_counter() - start


@fresh_hub
def test_the_gevent_batcher_answers_a_queued_request_at_its_deadline_uncomputed(registry):
    race = Race(registry, GeventBatcher(64), gevent.sleep)
    outcomes = race.outcomes
    leader = gevent.spawn(race.one, "leader", None)
    gevent.sleep(0.01)  # the leader's pass is running: the next ones queue
    waiters = [gevent.spawn(race.one, "short", 30_000), gevent.spawn(race.one, "long", None)]
    gevent.joinall([leader, *waiters], timeout=10, raise_error=True)
    assert isinstance(outcomes["short"], ServiceError) and outcomes["short"].status == 504
    assert 0.025 < outcomes["short_s"] < 0.15  # answered at its deadline, not when the queue moved (~0.19 s)
    assert isinstance(outcomes["long"], np.ndarray)
    assert race.slow.rows == 2  # the leader's and the long one's rows: the short one was never computed
    assert race.policy.waiting == 0


@fresh_hub
def test_a_request_waiting_for_the_model_thread_still_waits(registry):
    """A large request (a pass of its own, at once) that finds the worker's model thread busy with
    another's pass still waits: it counts against MAX_QUEUE_SIZE, and at its deadline it is answered
    uncomputed, not run late (it was counted as running, and computed after 0.4 s)."""
    entry = dataclasses.replace(registry.snapshot.get("xor"))
    slow = entry.network = SlowNetwork(entry.network, 0.2)
    batcher = GeventBatcher(64)
    with_table(batcher, entry, CostTable((1, 2, 4), (0.05, 0.05, 0.05)))  # off the loop; over 4 rows: alone
    policy, x, outcomes = QueuePolicy(max_queue_size=1), np.zeros((5, 2), entry.dtype), {}

    def one(name, timeout_us):
        ask(outcomes, name, policy, batcher, entry, x, timeout_us)

    first = gevent.spawn(one, "first", None)
    gevent.sleep(0.01)  # its pass holds the model thread
    short = gevent.spawn(one, "short", 30_000)
    gevent.sleep(0.005)
    assert policy.waiting == 1  # the short one waits for the thread
    one("refused", None)
    gevent.joinall([first, short], timeout=10, raise_error=True)
    assert isinstance(outcomes["first"], np.ndarray)
    assert isinstance(outcomes["refused"], ServiceError) and outcomes["refused"].code == "queue_full"
    assert isinstance(outcomes["short"], ServiceError) and outcomes["short"].status == 504
    assert 0.025 < outcomes["short_s"] < 0.15
    assert slow.rows == 5 and policy.waiting == 0  # the first one's rows alone


@fresh_hub
def test_a_batch_waiting_for_the_model_thread_lets_its_expired_requests_go_at_their_deadline(registry):
    """Version A's pass holds the model thread; version B's merged batch (a leader without a deadline,
    a request with 30 ms) waits for it. The short one is answered at its deadline, uncomputed, not when
    the thread frees (0.3 s later); the leader's rows run once the thread is free."""
    a, b = (dataclasses.replace(registry.snapshot.get("xor")) for _ in range(2))
    slow_a = a.network = SlowNetwork(a.network, 0.3)
    slow_b = b.network = SlowNetwork(b.network, 0.0)
    batcher = GeventBatcher(64)
    with_table(batcher, a, CostTable((1, 2, 4), (0.05, 0.05, 0.05)))  # 5 rows: a pass of its own, off the loop
    with_table(batcher, b, CostTable((1, 2, 64), (0.01, 0.011, 0.1)))  # merging pays, off the loop
    policy, outcomes = QueuePolicy(), {}

    def one(name, entry, rows, timeout_us):
        ask(outcomes, name, policy, batcher, entry, np.zeros((rows, 2), entry.dtype), timeout_us)

    holder = gevent.spawn(one, "holder", a, 5, None)
    gevent.sleep(0.01)  # A's pass holds the model thread
    batch = [gevent.spawn(one, "leader", b, 1, None), gevent.spawn(one, "short", b, 1, 30_000)]
    gevent.joinall([holder, *batch], timeout=10, raise_error=True)
    assert isinstance(outcomes["short"], ServiceError) and outcomes["short"].status == 504
    assert 0.025 < outcomes["short_s"] < 0.15, outcomes["short_s"]
    assert isinstance(outcomes["leader"], np.ndarray) and outcomes["leader_s"] > 0.25
    assert slow_a.rows == 5 and slow_b.rows == 1 and policy.waiting == 0


def two_versions(registry, merged: bool = True):
    """Version A, whose 5-row pass holds the model thread for 0.3 s, and version B, whose passes run on
    it too (merging its requests pays, or not)."""
    a, b = (dataclasses.replace(registry.snapshot.get("xor")) for _ in range(2))
    slow_a = a.network = SlowNetwork(a.network, 0.3)
    slow_b = b.network = SlowNetwork(b.network, 0.0)
    batcher = GeventBatcher(64)
    with_table(batcher, a, CostTable((1, 2, 4), (0.05, 0.05, 0.05)))
    with_table(batcher, b, CostTable((1, 2, 64), (0.01, 0.011, 0.1) if merged else (0.01, 0.03, 0.5)))
    return a, b, slow_a, slow_b, batcher


@pytest.mark.parametrize("merged", [True, False])
@pytest.mark.parametrize("other", [None, 1_000_000])
@fresh_hub
def test_a_leader_whose_batch_waits_for_the_model_thread_is_answered_at_its_own_deadline(registry, other, merged):
    """The same, the roles turned: version B's batch is led by the request with 30 ms, beside one with
    no deadline (or a later one). The leader is answered at its deadline, uncomputed, not when the
    thread frees 0.3 s later (it was: the leader waited for the thread as long as its latest member),
    and shed once; the other's rows run once the thread is free."""
    a, b, slow_a, slow_b, batcher = two_versions(registry, merged)
    policy, outcomes = QueuePolicy(), {}

    def one(name, entry, rows, timeout_us):
        ask(outcomes, name, policy, batcher, entry, np.zeros((rows, 2), entry.dtype), timeout_us)

    before = shed("deadline")
    holder = gevent.spawn(one, "holder", a, 5, None)
    gevent.sleep(0.01)  # A's pass holds the model thread
    batch = [gevent.spawn(one, "leader", b, 1, 30_000), gevent.spawn(one, "other", b, 1, other)]
    gevent.joinall([holder, *batch], timeout=10, raise_error=True)
    assert isinstance(outcomes["leader"], ServiceError) and outcomes["leader"].status == 504
    assert 0.025 < outcomes["leader_s"] < 0.15, outcomes["leader_s"]
    assert isinstance(outcomes["other"], np.ndarray) and outcomes["other_s"] > 0.25
    assert slow_a.rows == 5 and slow_b.rows == 1 and policy.waiting == 0
    assert shed("deadline") == before + 1  # the batch and the leader's own wait both saw it expire
    assert batcher.queues == {}  # the batch handed its queue on


@pytest.mark.parametrize("killed", ["leader", "member"])
@fresh_hub
def test_a_request_killed_while_its_batch_waits_for_the_model_thread_is_left_out(registry, killed):
    """A stop kills a request whose batch waits for the model thread (a leader with a deadline, which
    handed its batch on, or a member): the batch leaves it out, the other is answered, and the policy's
    counts come back to zero (the killed one's ticket was released, then started: waiting went to -1)."""
    a, b, _, slow_b, batcher = two_versions(registry)
    policy, outcomes = QueuePolicy(), {}

    def one(name, entry, rows, timeout_us):
        ask(outcomes, name, policy, batcher, entry, np.zeros((rows, 2), entry.dtype), timeout_us)

    holder = gevent.spawn(one, "holder", a, 5, None)
    gevent.sleep(0.01)  # A's pass holds the model thread
    leader = gevent.spawn(one, "leader", b, 1, 1_000_000 if killed == "leader" else None)
    member = gevent.spawn(one, "member", b, 1, None)
    gevent.sleep(0.05)  # B's batch taken, waiting for the thread
    (leader if killed == "leader" else member).kill()
    survivor = "member" if killed == "leader" else "leader"
    gevent.joinall([holder, leader, member], timeout=10, raise_error=True)
    assert isinstance(outcomes[survivor], np.ndarray) and killed not in outcomes
    assert slow_b.rows == 1 and policy.waiting == 0 and batcher.queues == {}


@pytest.mark.parametrize("merged", [False, True])
@fresh_hub
def test_a_request_taken_into_a_batch_is_answered_by_that_batch(registry, merged):
    """A request whose deadline passes after its batch was taken, while the batch's passes run on the
    model thread: in a merged pass it was computed, so it gets its answer; in a pass of its own that
    had not started, its deadline's error, counted once (it was 504 \"not computed\" though computed,
    and the shed counted twice)."""
    entry = dataclasses.replace(registry.snapshot.get("xor"))
    slow = entry.network = SlowNetwork(entry.network, 0.2)
    batcher = GeventBatcher(64)
    with_table(batcher, entry, CostTable((1, 2, 64), (0.01, 0.011, 0.1) if merged else (0.01, 0.02, 0.64)))
    policy, x, outcomes = QueuePolicy(), np.array([[0.0, 1.0]], entry.dtype), {}

    def one(name, timeout_us):
        ask(outcomes, name, policy, batcher, entry, x, timeout_us)

    before = shed("deadline")
    gevent.joinall([gevent.spawn(one, "leader", None), gevent.spawn(one, "short", 30_000)], timeout=10,
                   raise_error=True)
    assert isinstance(outcomes["leader"], np.ndarray)
    if merged:
        np.testing.assert_array_equal(outcomes["short"], outcomes["leader"])
        assert slow.rows == 2 and shed("deadline") == before
    else:
        assert isinstance(outcomes["short"], ServiceError) and outcomes["short"].status == 504
        assert slow.rows == 1 and shed("deadline") == before + 1
    assert policy.waiting == 0


def test_the_thread_batcher_answers_a_queued_request_at_its_deadline_uncomputed(registry):
    race = Race(registry, ThreadBatcher(64, threads=1))
    outcomes = race.outcomes
    leader = threading.Thread(target=race.one, args=("leader", None))
    leader.start()
    time.sleep(0.02)
    waiters = [threading.Thread(target=race.one, args=("short", 30_000)),
               threading.Thread(target=race.one, args=("long", None))]
    for t in waiters:
        t.start()
    for t in (leader, *waiters):
        t.join(10)
    assert isinstance(outcomes["short"], ServiceError) and outcomes["short"].status == 504
    assert 0.025 < outcomes["short_s"] < 0.15
    assert isinstance(outcomes["long"], np.ndarray)
    assert race.slow.rows == 2
    assert race.policy.waiting == 0


def test_a_refused_canary_request_is_the_load_not_the_version(model_repository, tmp_path):
    """Shedding under overload never rolls a canary back: its refusals are not its failures."""
    import shutil

    from service.protocols import rollouts as rollout_ops
    from service.repository.rollout import AutoRollback, RolloutSpec

    shutil.copytree(model_repository / "mnist", tmp_path / "mnist")
    plane = DataPlane(ModelRegistry(tmp_path).load_all())
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, canary={2: 100},
                                                        auto_rollback=AutoRollback(min_requests=5)))
    for _ in range(20):
        with pytest.raises(ServiceError):
            plane.infer("mnist", None, np.zeros((1, 784)), timeout_us=1, received=time.perf_counter() - 1)
    assert plane.registry.snapshot.rollouts["mnist"].spec.canary == {2: 100}


@pytest.mark.parametrize(("raised", "rolled_back"), [(gevent.GreenletExit, False), (RuntimeError, True)])
def test_a_canary_request_stopped_midway_is_not_the_versions_failure(model_repository, tmp_path, raised,
                                                                    rolled_back):
    """A graceful stop kills the greenlets of requests in flight (GreenletExit: a BaseException, no
    Exception): nothing the canary did, so the guard does not count it; a real failure it does."""
    import shutil

    from service.protocols import rollouts as rollout_ops
    from service.repository.rollout import AutoRollback, RolloutSpec

    class Failing:  # the runner: every pass ends with ``raised``
        observe = None

        def warm(self, entries) -> None:
            pass

        def run(self, entry, batch, ticket=None):
            raise raised()

    shutil.copytree(model_repository / "mnist", tmp_path / "mnist")
    plane = DataPlane(ModelRegistry(tmp_path).load_all())
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, canary={2: 100},
                                                        auto_rollback=AutoRollback(min_requests=5)))
    plane.serve_with(Failing())
    for _ in range(20):
        with pytest.raises(raised):
            plane.infer("mnist", None, np.zeros((1, 784)))
    assert (plane.registry.snapshot.rollouts["mnist"].spec.canary == {}) is rolled_back
