"""Rollouts in process: the spec's rules, routing, the file and API precedence, concurrent changes, the
comparison queue and the guard. The real server, every protocol and the walk-through under load are
``tests/integration/test_rollouts.py``'s."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import shutil
import time
import types
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from model.io import load_model, save_model
from service.dataplane import shadow
from service.dataplane.dataplane import DataPlane
from service.dataplane.rollouts import Tally, verdict
from service.dataplane.shadow import Copy, Mirror
from service.errors import ServiceError
from service.observability import rollouts as evidence
from service.protocols import rollout_key
from service.protocols import rollouts as rollout_ops
from service.repository.registry import ModelRegistry
from service.repository.rollout import ROLLOUT_FILE, AutoRollback, Rollout, RolloutSpec, key_point

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path) -> Path:
    """mnist versions 1 and 2 (the shipped ones), in a repository of their own."""
    shutil.copytree(ROOT / "model_repository" / "mnist", tmp_path / "repo" / "mnist")
    return tmp_path / "repo"


def plane_on(repo: Path, state: Path | None = None, seed: int = 0) -> DataPlane:
    plane = DataPlane(ModelRegistry(repo, state_file=state).load_all())
    plane.rollouts.rng = random.Random(seed)
    return plane


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


# -- the spec ------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, complaint", [
    ({"primary": 1, "canary": {"2": 120}}, "not in (0, 100]"),
    ({"primary": 1, "canary": {"2": 0}}, "not in (0, 100]"),
    ({"primary": 1, "canary": {"2": 60, "3": 50}}, "more than 100"),
    ({"primary": 1, "canary": {"1": 10}}, "is the primary"),
    ({"primary": 1, "shadow": 1}, "is the primary"),
    ({"primary": 1, "canary": {"0": 10}}, "not a version number"),
    # an admin's "<300 digits>" reached a file name (path.is_file(): "File name too long", a 500)
    ({"primary": 1, "canary": {"1" * 300: 10}}, "not a version number"),
    ({"primary": 1, "canary": {"1000000000": 10}}, "not a version number"),
    ({"primary": 1000000000}, "less than or equal to 999999999"),
    ({"primary": 1, "shadow": 10**300}, "less than or equal to 999999999"),
    ({"primary": 0}, "greater than or equal to 1"),
    ({"primary": "2"}, "valid integer"),
    ({"primary": 1, "weights": {}}, "Extra inputs"),
    ({"primary": 1, "canary": {"2": float("nan")}}, "finite"),
    ({"primary": 1, "auto_rollback": {"max_error_rate": 2}}, "less than or equal to 1"),
    ({"primary": 1, "canary": {str(v): 1 for v in range(2, 12)}}, "at most 8"),
    ({"primary": 1, "canary": {"2": True}}, "valid number"),  # true is not 1 percent
    ({"primary": 1, "canary": {"2": "10"}}, "valid number"),
    ({"primary": 1, "auto_rollback": {"min_requests": True}}, "valid integer"),
    ({"primary": 1, "auto_rollback": {"max_error_rate": "0.1"}}, "valid number"),
])
def test_a_bad_rollout_is_refused_with_its_reason(body, complaint):
    with pytest.raises(ValidationError, match=complaint.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        RolloutSpec.model_validate(body)


def test_a_canary_takes_its_percent_and_the_primary_the_rest():
    rollout = Rollout(RolloutSpec(primary=2, canary={3: 10, 4: 5}), "api", 0.0)
    rng = random.Random(1)
    n = 100_000
    counts = {2: 0, 3: 0, 4: 0}
    for _ in range(n):
        counts[rollout.choose(None, rng)[0]] += 1
    for version, share in ((2, 0.85), (3, 0.10), (4, 0.05)):
        sd = (share * (1 - share) / n) ** 0.5
        assert abs(counts[version] / n - share) < 3.29 * sd, counts  # the binomial 99.9 % interval


def test_a_key_lands_on_one_version_in_every_process_and_keys_split_by_the_percent():
    rollout = Rollout(RolloutSpec(primary=1, canary={2: 10}), "api", 0.0)
    chosen = [rollout.choose(f"user-{i}", random.Random(i))[0] for i in range(20_000)]
    again = [rollout.choose(f"user-{i}", random.Random(i + 1))[0] for i in range(20_000)]
    assert chosen == again  # the hash, not the draw
    share = chosen.count(2) / len(chosen)
    assert abs(share - 0.10) < 3.29 * (0.1 * 0.9 / len(chosen)) ** 0.5
    # blake2b of the key, salted with the canary's version: fixed across processes and restarts (no
    # PYTHONHASHSEED)
    assert key_point("user-1", 2) == pytest.approx(int.from_bytes(__import__("hashlib").blake2b(
        b"user-1", digest_size=8, salt=(2).to_bytes(8, "big")).digest(), "big") / 2**64 * 100)


def keyed(canary: dict[int, float], n: int = 100_000) -> list[int]:
    rollout = Rollout(RolloutSpec(primary=2, canary=canary), "api", 0.0)
    return [rollout.choose(f"user-{i}", random.Random(0))[0] for i in range(n)]


def test_keys_split_by_every_canary_s_percent():
    n = 100_000
    chosen = keyed({3: 10, 4: 5, 5: 60}, n)
    for version, share in ((2, 0.25), (3, 0.10), (4, 0.05), (5, 0.60)):
        sd = (share * (1 - share) / n) ** 0.5
        assert abs(chosen.count(version) / n - share) < 3.29 * sd, (version, chosen.count(version))
    assert set(keyed({3: 30, 4: 70}, 2000)) == {3, 4}  # 100 % in all: the last canary takes every key left


def test_a_change_to_one_canary_moves_the_others_keys_only_in_proportion():
    """A key stays with its canary when another canary is removed (the guard does it), resized or added:
    slices laid end to end moved every key of the canaries after the one changed (0 of 9,966 stayed)."""
    before = keyed({3: 10, 4: 10})
    on_4 = [i for i, v in enumerate(before) if v == 4]

    def stayed(after: list[int], version: int, keys: list[int]) -> float:
        return sum(after[i] == version for i in keys) / len(keys)

    removed = keyed({4: 10})
    assert 0.88 < stayed(removed, 4, on_4) < 0.92  # 90/100: what the canary before it left grew from 90 to 100
    on_3 = [i for i, v in enumerate(before) if v == 3]
    assert stayed(removed, 2, on_3) > 0.88  # the failed canary's keys go back to the primary, 10 % of them to 4
    raised = keyed({3: 20, 4: 10})
    assert stayed(raised, 3, on_3) == 1.0  # a canary raised keeps every key it had
    assert 0.87 < stayed(raised, 4, on_4) < 0.91  # 1 - 10/90 of the other's
    added = keyed({3: 10, 4: 10, 5: 10})
    assert stayed(added, 3, on_3) == stayed(added, 4, on_4) == 1.0  # a newer canary takes from the primary only


def test_the_key_is_the_parameter_else_the_header():
    assert rollout_key.of("h", {"rollout_key": "p"}) == "p"
    assert rollout_key.of("h", {}) == "h"
    assert rollout_key.of("", None) is None
    # a UTF-8 key in the header reaches WSGI as latin-1 text: it is the same key as the parameter's
    sent = "äpfel-ключ".encode().decode("latin-1")
    assert rollout_key.of(sent) == rollout_key.of(None, {"rollout_key": "äpfel-ключ"}) == "äpfel-ключ"
    assert rollout_key.of("\xe4") == "\xe4"  # latin-1 bytes that are no UTF-8: kept as they came
    with pytest.raises(ServiceError) as err:
        rollout_key.of("h", {"rollout_key": 7})
    assert err.value.status == 400


# -- routing in the data plane ----------------------------------------------------------------------
def test_routing_sends_the_percent_and_never_reroutes_a_named_version(repo):
    plane = plane_on(repo)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, canary={2: 100}))
    x = digits(1)
    assert {plane.infer("mnist", None, x).version for _ in range(20)} == {2}
    assert {plane.infer("mnist", 1, x).version for _ in range(20)} == {1}
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1))
    assert {plane.infer("mnist", None, x).version for _ in range(20)} == {1}  # pinned, though 2 is newer
    rollout_ops.clear(plane, "mnist")
    assert plane.infer("mnist", None, x).version == 2  # the newest again


def test_processes_forked_from_one_plane_draw_their_canaries_apart(repo):
    """gunicorn builds the data plane in its master and forks the workers from it: each worker's key-less
    canary draws must be its own. A generator seeded before the fork drew the same sequence in every
    worker, so two workers always chose alike: a 10 % canary's share over N requests varied as if
    there were N / 2."""
    plane = DataPlane(ModelRegistry(repo).load_all())  # the default generator, as the server has it
    ctx = multiprocessing.get_context("fork")  # as the file's other fork test: gunicorn forks, so must this
    draws = ctx.SimpleQueue()
    child = ctx.Process(target=lambda: draws.put([plane.rollouts.rng.random() for _ in range(8)]))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    child = draws.get()
    parent = [plane.rollouts.rng.random() for _ in range(8)]
    assert len(child) == 8 and child != parent


def test_a_rollout_loads_the_versions_it_names_whatever_the_policy(repo):
    plane = plane_on(repo)  # latest:1: only 2 serves
    assert sorted(plane.registry.snapshot.serving["mnist"]) == [2]
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, shadow=2))
    assert sorted(plane.registry.snapshot.serving["mnist"]) == [1, 2]
    assert plane.infer("mnist", None, digits(1)).version == 1


def test_a_rollout_naming_a_missing_or_broken_version_is_refused_and_changes_nothing(repo):
    plane = plane_on(repo)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=2, canary={1: 10}))
    before = plane.registry.snapshot.rollouts["mnist"]
    (repo / "mnist" / "3").mkdir()
    (repo / "mnist" / "3" / "model.npz").write_bytes(b"not a weights file")
    for spec, complaint in ((RolloutSpec(primary=2, canary={7: 10}), "no version 7"),
                            (RolloutSpec(primary=2, canary={3: 10}), "3 does not load")):
        with pytest.raises(ServiceError, match=complaint) as err:
            rollout_ops.set_rollout(plane, "mnist", spec)
        assert err.value.status == 409
    assert plane.registry.snapshot.rollouts["mnist"] == before


def test_promote_and_roll_back(repo):
    plane = plane_on(repo)
    guard = AutoRollback(max_error_rate=0.01)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, canary={2: 10}, auto_rollback=guard))
    state = rollout_ops.roll_back(plane, "mnist")
    assert state["rollout"]["primary"] == 1 and not state["rollout"].get("canary")
    assert state["rollout"]["note"] == "rolled back (canary 2 removed)"
    with pytest.raises(ServiceError, match="no canary or shadow"):
        rollout_ops.roll_back(plane, "mnist")
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, shadow=2))
    state = rollout_ops.promote(plane, "mnist")
    assert (state["rollout"]["primary"], state["rollout"]["source"]) == (2, "api")
    assert state["rollout"]["note"] == "promoted 2 (the primary was 1)"
    with pytest.raises(ServiceError, match="no canary or shadow") as err:
        rollout_ops.promote(plane, "mnist")
    assert err.value.status == 409


# -- the file and the API ------------------------------------------------------------------------------
def test_the_newer_of_file_and_api_is_in_force_and_a_bad_file_keeps_the_last_good(repo, tmp_path):
    plane = plane_on(repo, tmp_path / "state.json")
    registry = plane.registry
    path = repo / "mnist" / ROLLOUT_FILE
    path.write_text(json.dumps({"primary": 1, "canary": {"2": 25}}))
    registry.refresh()
    assert registry.snapshot.rollouts["mnist"].source == "file"
    rollout_ops.promote(plane, "mnist")  # the API, after the file: wins
    assert registry.snapshot.rollouts["mnist"].spec.primary == 2
    time.sleep(0.01)
    path.write_text("{not json")  # newer, but bad: reported, the one in force stays
    registry.refresh()
    assert registry.snapshot.rollouts["mnist"].spec.primary == 2
    assert "rollout.json ignored" in plane.describe("mnist")["rollout_error"]
    path.write_text(json.dumps({"primary": 1, "shadow": 2}))  # a good file, newer than the API: wins
    registry.refresh()
    assert registry.snapshot.rollouts["mnist"].spec == RolloutSpec(primary=1, shadow=2)
    assert "rollout_error" not in plane.describe("mnist")
    path.write_text(json.dumps({"primary": 1, "canary": {"2": 500}}))  # schema error: the last good file stays
    registry.refresh()
    assert registry.snapshot.rollouts["mnist"].spec == RolloutSpec(primary=1, shadow=2)
    assert plane.describe("mnist")["rollout_error"].endswith(": canary 2: percent 500 is not in (0, 100]")


def change_many(repo: str, state: str, model: str, n: int) -> None:
    registry = ModelRegistry(repo, state_file=state).load_all()
    for i in range(n):
        registry.change_rollout(model, lambda current, i=i: Rollout(RolloutSpec(
            primary=1, canary={2: ((current.spec.canary.get(2, 0) if current else 0) + 1)}), "api", 0.0, str(i)))


def test_concurrent_changes_from_processes_lose_nothing(tmp_path):
    repo = tmp_path / "repo"
    for name in ("a", "b", "c"):
        shutil.copytree(ROOT / "model_repository" / "mnist", repo / name)
    state = tmp_path / "state.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=change_many, args=(str(repo), str(state), name, 25)) for name in ("a", "b", "c")]
    procs += [ctx.Process(target=change_many, args=(str(repo), str(state), "a", 25))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    registry = ModelRegistry(repo, state_file=state).load_all()
    assert registry.snapshot.rollouts["a"].spec.canary == {2: 50}  # two writers, 25 increments each
    assert registry.snapshot.rollouts["b"].spec.canary == {2: 25}


def test_promote_and_roll_back_decide_on_the_rollout_in_force_not_a_stale_copy(repo, tmp_path):
    """Two workers: b's copy of the rollout is up to a second old. A roll back sent to b right after a's
    promote must see the promote (nothing left to roll back), not undo it from b's copy."""
    state = tmp_path / "state.json"
    a, b = plane_on(repo, state), plane_on(repo, state)
    rollout_ops.set_rollout(a, "mnist", RolloutSpec(primary=1, canary={2: 10}))
    b.registry.refresh()
    assert b.registry.snapshot.rollouts["mnist"].spec.canary == {2: 10}
    rollout_ops.promote(a, "mnist")  # primary 2, no canary; b has not looked since
    with pytest.raises(ServiceError) as info:
        rollout_ops.roll_back(b, "mnist")
    assert info.value.status == 409 and "no canary or shadow" in info.value.message
    with pytest.raises(ServiceError):
        rollout_ops.promote(b, "mnist")  # nor promoted again from b's copy
    for plane in (a, b):
        plane.registry.refresh()
        assert plane.registry.snapshot.rollouts["mnist"].spec == RolloutSpec(primary=2)


def test_a_request_naming_no_version_is_described_by_the_primary(repo):
    """Metadata, configuration, readiness and explanations resolve "no version" as inference routes it:
    to the rollout's primary (a client building its inputs from the metadata must fit the version that
    answers), and to the newest version without a rollout."""
    plane = plane_on(repo)
    assert plane.resolve("mnist").version == 2
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, canary={2: 10}))
    assert plane.resolve("mnist").version == 1
    answered = {plane.infer("mnist", None, digits(1, seed=i)).version for i in range(40)}
    assert 1 in answered and answered <= {1, 2}
    rollout_ops.clear(plane, "mnist")
    assert plane.resolve("mnist").version == 2


def test_a_bad_rollout_file_leaves_every_process_on_the_last_good_one_a_restarted_one_too(repo, tmp_path):
    """A rollout.json broken while serving keeps the rollout before it, in every process alike: the last good
    file is recorded in the shared state, so a process started after the file went bad (the supervisor's
    restart of a gRPC process) routes as the others do, not by no rollout at all."""
    state = tmp_path / "state.json"
    (repo / "mnist" / ROLLOUT_FILE).write_text(json.dumps({"primary": 1, "canary": {"2": 10}}))
    before = plane_on(repo, state)
    (repo / "mnist" / ROLLOUT_FILE).write_text('{"primary": 1,')  # cut short
    os.utime(repo / "mnist" / ROLLOUT_FILE, ns=(time.time_ns() + 10**9,) * 2)  # a new signature, whatever the clock
    before.registry.refresh()
    restarted = plane_on(repo, state)
    for plane in (before, restarted):
        rollout = plane.registry.snapshot.rollouts["mnist"]
        assert rollout.spec == RolloutSpec(primary=1, canary={2: 10}) and rollout.source == "file"
        assert "keeping the rollout before it" in plane.describe("mnist")["rollout_error"]
    (repo / "mnist" / ROLLOUT_FILE).unlink()  # no file: nothing kept, in either
    for plane in (before, restarted):
        plane.registry.refresh()
        assert "mnist" not in plane.registry.snapshot.rollouts
    assert json.loads(state.read_text())["files"] == {}


# -- comparisons and the guard ------------------------------------------------------------------------
def test_the_shadow_counts_equal_an_offline_comparison(repo):
    plane = plane_on(repo)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, shadow=2))
    x = digits(40, seed=3) ** 4  # darker digits: the two versions disagree on some
    for i in range(0, 40, 4):
        plane.infer("mnist", None, x[i:i + 4])
    plane.rollouts.mirror.drain()
    one, two = (load_model(repo / "mnist" / v / "model.npz").network for v in ("1", "2"))
    p1, p2 = one.predict_proba(x), two.predict_proba(x)
    disagree = int((p1.argmax(1) != p2.argmax(1)).sum())
    [pair] = plane.describe("mnist")["evidence"]["comparisons"]
    assert (pair["served"], pair["compared"]) == (1, 2)
    assert (pair["agree"], pair["disagree"], pair["dropped"]) == (40 - disagree, disagree, 0)
    assert pair["max_probability_difference"] == pytest.approx(float(np.abs(p1 - p2).max()), abs=1e-5)


def test_a_full_queue_drops_and_counts_never_blocks(repo, monkeypatch):
    # the comparer's CPU clock a fake one, 0.1 s a reading, so that its rest (39 times what it spent)
    # is known and outlasts any pause of this test's thread (a real drain's ~4 ms rest did not, beside load)
    read: list[float] = []

    def thread_time() -> float:
        read.append(0.1 * len(read))
        return read[-1]

    monkeypatch.setattr(shadow, "time", types.SimpleNamespace(thread_time=thread_time, monotonic=time.monotonic))
    plane = plane_on(repo)
    entry = plane.registry.snapshot.serving["mnist"][2]
    mirror = Mirror(capacity=10)
    copy = Copy(1, entry, digits(4), entry.labels, np.zeros(4, dtype=np.int64), np.zeros((4, 10), np.float32), 0.0)
    before = evidence.read("mnist")["comparisons"].get((1, 2), {}).get("dropped", 0)
    for _ in range(5):
        mirror.offer(copy)
    assert mirror.pending() == 8  # two copies of 4 rows fit; three are dropped
    assert evidence.read("mnist")["comparisons"][(1, 2)]["dropped"] - before == 12
    mirror.drain()
    assert mirror.pending() == 0
    rest = 39 * (read[-1] - read[0])  # it rests: 39 parts in 40 of its time
    assert rest > 0 and rest - 1 < mirror.rest_until - time.monotonic() <= rest


def test_a_drain_with_a_budget_stops_and_the_rest_waits(repo):
    plane = plane_on(repo)
    entry = plane.registry.snapshot.serving["mnist"][2]
    mirror = Mirror(capacity=4096)
    mirror.pass_rows[id(entry)] = 4  # passes of 4 rows
    for _ in range(100):
        mirror.offer(Copy(1, entry, digits(1), entry.labels, np.zeros(1, dtype=np.int64),
                          np.zeros((1, 10), np.float32), 0.0))
    mirror.drain(budget=0.0)  # one pass, then the budget is spent
    assert 0 < mirror.pending() < 100
    mirror.drain()
    assert mirror.pending() == 0


def compared_rows(served: int = 1, other: int = 2) -> tuple[int, int]:
    counts = evidence.read("mnist")["comparisons"].get((served, other), {})
    return counts.get("agree", 0), counts.get("disagree", 0)


def test_a_large_copy_is_compared_a_pass_at_a_time(repo):
    """A copy larger than a pass is split, its rest left at the head: compared whole, a 1,024-row copy
    held an HTTP worker's event loop for 60-140 ms (the slice is 2 ms)."""
    two = plane_on(repo).registry.snapshot.serving["mnist"][2]
    x = digits(100, seed=3) ** 4
    p1 = load_model(repo / "mnist" / "1" / "model.npz").network.predict_proba(x)
    mirror = Mirror(capacity=4096)
    mirror.pass_rows[id(two)] = 16
    mirror.offer(Copy(1, two, x, two.labels, p1.argmax(1), p1, 0.0))
    assert sum(len(c.batch) for c in mirror.take()) == 16 and mirror.pending() == 84
    before = compared_rows()
    mirror.drain()
    agree, disagree = (a - b for a, b in zip(compared_rows(), before, strict=True))
    offline = int((two.network.predict_proba(x[16:]).argmax(1) != p1[16:].argmax(1)).sum())
    assert mirror.pending() == 0 and (agree + disagree, disagree) == (84, offline)  # the rest, row for row


def test_a_comparison_that_fails_is_dropped_and_the_next_one_is_made(repo):
    """One error in a comparison (here answers of the wrong length, as a version whose classes changed
    while its copies waited) ended the comparing greenlet for good: the queue filled, the guard went blind."""
    two = plane_on(repo).registry.snapshot.serving["mnist"][2]
    x = digits(4, seed=5)
    p1 = load_model(repo / "mnist" / "1" / "model.npz").network.predict_proba(x)
    mirror = Mirror(capacity=4096)
    mirror.offer(Copy(1, two, x, two.labels, p1.argmax(1)[:3], p1, 0.0))  # 3 answers for 4 rows
    mirror.offer(Copy(1, two, x, two.labels, p1.argmax(1), p1, 1.0))  # another generation: its own pass
    before = compared_rows()
    mirror.drain()
    assert mirror.pending() == 0 and sum(compared_rows()) - sum(before) == 4


def test_the_guard_judges_server_failures_past_its_minimum_only():
    guard = AutoRollback(max_error_rate=0.1, max_disagreement=0.2, min_requests=50)
    assert verdict(guard, Tally(requests=49, errors=49)) is None  # too few yet
    assert verdict(guard, Tally(requests=50, errors=5)) is None  # at the bound, not beyond
    assert verdict(guard, Tally(requests=50, errors=6))[0] == "errors"
    assert verdict(guard, Tally(requests=50, compared=50, disagreed=11))[0] == "disagreement"
    assert verdict(AutoRollback(min_requests=1), Tally(requests=10, compared=10, disagreed=10)) is None


def broken_copy(repo: Path, version: int) -> None:
    """A version that loads (finite weights) but overflows to non-finite answers: a diverged training."""
    loaded = load_model(repo / "mnist" / "2" / "model.npz")
    for param in loaded.network.named_params().values():
        param[...] = 1e38
    (repo / "mnist" / str(version)).mkdir()
    save_model(repo / "mnist" / str(version) / "model.npz", loaded.network, loaded.metadata)


def test_the_guard_rolls_a_failing_canary_back_and_leaves_a_healthy_one(repo, caplog):
    broken_copy(repo, 3)
    plane = plane_on(repo)
    guard = AutoRollback(max_error_rate=0.05, min_requests=20)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=2, canary={3: 50}, auto_rollback=guard))
    x = digits(1)
    failures = 0
    for _ in range(200):
        try:
            assert plane.infer("mnist", None, x).version == 2
        except ServiceError as exc:
            assert (exc.status, exc.code) == (500, "model_failed")
            failures += 1
    assert failures == 20  # the canary's 20th failure rolls it back; none after
    rollout = plane.registry.snapshot.rollouts["mnist"]
    assert (rollout.source, rollout.spec.canary) == ("guard", {})
    assert rollout.note.startswith("auto rollback of canary 3: 20 of 20 requests failed")
    assert "auto rollback of canary 3" in caplog.text
    # a client's mistakes are not the canary's: a healthy canary under bad requests stays
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=2, canary={1: 50}, auto_rollback=guard))
    for i in range(300):
        with pytest.raises(ServiceError) if i % 2 else _nothing():
            plane.infer("mnist", None, x * (3 if i % 2 else 1))  # values up to 3: a 422
    assert plane.registry.snapshot.rollouts["mnist"].spec.canary == {1: 50}


def test_a_rollback_by_the_guard_keeps_the_other_canaries_evidence(repo):
    """The guard's rollback of one canary re-stamped the rollout, and the counts were kept per stamp: every
    other canary's evidence started again at zero, in every process, and a process's verdict reached at the
    same moment was dropped. Two failing canaries now take 20 failures each, as the guard says."""
    broken_copy(repo, 3)
    broken_copy(repo, 4)
    plane = plane_on(repo)
    guard = AutoRollback(max_error_rate=0.05, min_requests=20)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=2, canary={3: 40, 4: 40}, auto_rollback=guard))
    generation = plane.registry.snapshot.rollouts["mnist"].generation
    failures = 0
    for _ in range(400):
        try:
            assert plane.infer("mnist", None, digits(1)).version == 2
        except ServiceError:
            failures += 1
    rollout = plane.registry.snapshot.rollouts["mnist"]
    assert (rollout.source, rollout.spec.canary, failures) == ("guard", {}, 40)
    assert rollout.generation == generation < rollout.changed_at
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=2, canary={3: 40}, auto_rollback=guard))
    assert plane.registry.snapshot.rollouts["mnist"].generation > generation  # an operator's change: counted anew


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_state_survives_in_the_file_for_new_processes(repo, tmp_path):
    state = tmp_path / "state.json"
    plane = plane_on(repo, state)
    rollout_ops.set_rollout(plane, "mnist", RolloutSpec(primary=1, canary={2: 10}))
    again = ModelRegistry(repo, state_file=state).load_all()
    assert again.snapshot.rollouts["mnist"].spec == RolloutSpec(primary=1, canary={2: 10})
    assert json.loads(state.read_text())["rollouts"]["mnist"]["source"] == "api"
    assert os.path.exists(state)


def test_a_state_file_that_cannot_be_written_stops_no_scan_and_no_start(repo, tmp_path, monkeypatch, caplog):
    """A rollout file is recorded in the shared state at a scan; a failure to write it (a full disk)
    escaped the scan: no new version loaded in any model, and a new process could not start."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state = state_dir / "state.json"
    shutil.rmtree(repo / "mnist" / "2")
    registry = ModelRegistry(repo, state_file=state).load_all()
    real = Path.write_text

    def full(self: Path, *args, **kwargs):
        if self.parent == state_dir:
            real(self, "{")  # the first bytes made it to disk, the rest did not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    (repo / "mnist" / ROLLOUT_FILE).write_text(json.dumps({"primary": 1}))
    shutil.copytree(ROOT / "model_repository" / "mnist" / "2", repo / "mnist" / "2")
    for _ in range(3):
        registry.refresh(settle=False)
    assert sorted(registry.snapshot.serving["mnist"]) == [1, 2]  # the new version loaded
    assert registry.snapshot.rollouts["mnist"].spec == RolloutSpec(primary=1)  # the file in force here
    assert sum("could not record" in r.getMessage() for r in caplog.records) == 1  # once while it lasts
    started = ModelRegistry(repo, state_file=state).load_all()  # a process starting now
    assert started.snapshot.rollouts["mnist"].spec == RolloutSpec(primary=1)
    assert [p.name for p in state_dir.iterdir()] == [".state.json.lock"]  # no half-written file left


def test_a_state_change_within_one_clock_tick_is_still_seen(tmp_path):
    """Processes notice another's change by the state file's stat: two writes within one tick of a coarse
    file-system clock have the same mtime, but each is a new file renamed into place."""
    from service.repository.shared_state import SharedState

    path = tmp_path / "state.json"
    writer, reader = SharedState(path), SharedState(path)
    writer.mark_unloaded("a", True)
    assert reader.changed()
    tick = path.stat().st_mtime_ns
    writer.mark_unloaded("b", True)
    os.utime(path, ns=(tick, tick))  # as if within the same tick
    assert reader.changed() and reader.unloaded() == {"a", "b"}
    assert not reader.changed()


def test_any_text_is_a_key():
    """A lone surrogate (a JSON "\\ud800", through the fallback parser) is a key like any other: encoding
    it for the hash raised, a 500 while a canary was in force."""
    assert 0 <= key_point("\ud800", 2) < 100
    assert key_point("\ud800", 2) == key_point("\ud800", 2) != key_point("\udc80", 2)
    assert key_point("\udc80", 2) == key_point("\udc80", 2)
