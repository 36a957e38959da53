"""A model's rollout in the data plane: routing, the evidence, comparisons and the guard (per process).

The rollout itself -- which versions take which share, who set it -- is the repository's
(``service/repository/rollout.py``), shared by every process; this is what one serving process does
with it. Every protocol reaches it through :meth:`DataPlane.infer`, so none can route differently:

- a request naming no version is routed by the rollout (:meth:`route`) and counted
  (``nn_rollout_routed_total``); one naming its version is never rerouted;
- a request the primary served is copied to the shadow, one a canary served to the primary, for
  comparison off the request path (``shadow.py``);
- the **guard** (the rollout's ``auto_rollback``) judges each canary on what this process saw of it
  since the rollout began: once it has served ``min_requests``, a share of server-side failures
  above ``max_error_rate`` -- or, once ``min_requests`` of its samples were compared, a share of
  labels differing from the primary's above ``max_disagreement`` -- takes its traffic back to the
  primary for every process (through the shared state), logs why and counts it
  (``nn_rollout_rollbacks_total``). Each process judges on its own share of the traffic, so a
  canary is judged after at most ``min_requests`` of its requests in the busiest process.
"""

from __future__ import annotations

import _thread
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.dataplane.shadow import Copy, Mirror
from service.errors import ServiceError
from service.observability import rollouts as evidence
from service.repository.model_version import ModelVersion
from service.repository.registry import ModelRegistry
from service.repository.rollout import AutoRollback, Rollout

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("service.rollout")
LOAD_ERRORS = ("queue_full", "deadline_exceeded")  # refusals of the queue policy: not the version's failures


@dataclass
class Tally:
    """One canary of one rollout, as this process saw it."""

    requests: int = 0
    errors: int = 0
    compared: int = 0
    disagreed: int = 0
    done: bool = False  # judged and rolled back: not again


def verdict(guard: AutoRollback, tally: Tally) -> tuple[str, str] | None:
    """(reason, why) when the guard's bound is crossed, else None."""
    if tally.requests >= guard.min_requests and tally.errors > guard.max_error_rate * tally.requests:
        rate = tally.errors / tally.requests
        return "errors", f"{tally.errors} of {tally.requests} requests failed (rate {rate:.3f}, bound " \
                         f"{guard.max_error_rate:g})"
    if guard.max_disagreement is not None and tally.compared >= guard.min_requests \
            and tally.disagreed > guard.max_disagreement * tally.compared:
        return "disagreement", (f"{tally.disagreed} of {tally.compared} samples disagreed with the primary (share "
                                f"{tally.disagreed / tally.compared:.3f}, bound {guard.max_disagreement:g})")
    return None


class Rollouts:
    """Routing, comparisons and the guard of every model's rollout, in one process.

    Parameters
    ----------
    registry : ModelRegistry
        Where rollouts are read (its snapshot) and changed (the guard's rollbacks).
    queue_rows : int
        Rows waiting for comparison at most (``SHADOW_QUEUE``); more are dropped and counted.
    rng : random.Random, optional
        The draw of requests without a key (tests pass a seeded one).
    """

    def __init__(self, registry: ModelRegistry, queue_rows: int = 4096, rng: random.Random | None = None) -> None:
        self.registry = registry
        # The operating system's generator: it holds no state, so each gunicorn worker draws its own.
        # A Random() made here, in the master before it forks the workers (preload_app), drew the same
        # sequence in every worker. A draw costs a getrandom call per canary it passes, on key-less routing only.
        self.rng = rng or random.SystemRandom()
        self.mirror = Mirror(queue_rows, judge=self.judge_comparison)
        self.tallies: dict[tuple[str, float, int], Tally] = {}
        self.lock = _thread.RLock()  # tallies: from request threads and from the comparing thread
        self.verdicts: deque[tuple[str, float, int, str, str]] = deque()  # found off the request path

    def route(self, name: str, key: str | None) -> tuple[ModelVersion, Rollout | None, bool]:
        """(entry, rollout, is a canary) for a request naming no version (``Snapshot.route``)."""
        return self.registry.snapshot.route(name, key, self.rng)

    def served(self, rollout: Rollout, entry: ModelVersion, canary: bool, batch: np.ndarray,
               probabilities: np.ndarray, classes: np.ndarray) -> None:
        """A routed request succeeded: count it, queue its comparison, and judge a canary."""
        evidence.routed(entry.name, entry.version, canary)
        spec = rollout.spec
        if canary:
            self.judge_request(entry.name, rollout, entry.version, failed=False)
            other = spec.primary
        elif spec.shadow is not None and entry.version == spec.primary:
            other = spec.shadow
        else:
            return
        other_entry = self.registry.snapshot.serving.get(entry.name, {}).get(other)
        if other_entry is None or not self.mirror.has_room(len(batch)):  # nothing to compare with, or no room:
            evidence.dropped(entry.name, entry.version, other, len(batch))  # dropped before anything is copied
            return
        # the rows are copied: a request's buffer may be reused once it is answered
        self.mirror.offer(Copy(entry.version, other_entry, batch.copy(), entry.labels, classes, probabilities,
                               rollout.generation))

    def failed(self, rollout: Rollout, entry: ModelVersion, canary: bool, exc: BaseException) -> None:
        """A routed request failed: a canary's server-side failure counts against it (a client's
        mistake, a 4xx, does not, nor a refusal of the queue policy: that is the load, not the version;
        nor a request stopped in its greenlet or thread -- a BaseException that is no Exception, as a
        graceful stop's GreenletExit: nothing the version did)."""
        evidence.routed(entry.name, entry.version, canary)
        if not isinstance(exc, Exception):
            return
        if canary and not (isinstance(exc, ServiceError) and (exc.status < 500 or exc.code in LOAD_ERRORS)):
            self.judge_request(entry.name, rollout, entry.version, failed=True)

    # -- the guard ------------------------------------------------------------------------------
    def judge_request(self, name: str, rollout: Rollout, version: int, failed: bool) -> None:
        guard = rollout.spec.auto_rollback
        if guard is None:
            return
        with self.lock:
            tally = self.tallies.setdefault((name, rollout.generation, version), Tally())
            tally.requests += 1
            tally.errors += failed
            found = None if tally.done else verdict(guard, tally)
            if found:
                tally.done = True
        if found:
            self.roll_back(name, rollout.generation, version, *found)

    def judge_comparison(self, name: str, served: int, generation: float, rows: int, disagreed: int) -> None:
        """After a comparison pass (off the request path): a canary's disagreement with the primary. A
        verdict found here is carried out by :meth:`settle`, on the front end's own thread."""
        rollout = self.registry.snapshot.rollouts.get(name)
        if rollout is None or rollout.generation != generation or served not in rollout.spec.canary:
            return
        guard = rollout.spec.auto_rollback
        if guard is None or guard.max_disagreement is None:
            return
        with self.lock:
            tally = self.tallies.setdefault((name, rollout.generation, served), Tally())
            tally.compared += rows
            tally.disagreed += disagreed
            found = None if tally.done else verdict(guard, tally)
            if found:
                tally.done = True
                self.verdicts.append((name, rollout.generation, served, *found))

    def start_thread(self, interval: float = 0.02) -> None:
        """Compare on a daemon thread of this process (one without an event loop: the gRPC process's)."""
        def loop() -> None:
            while True:
                time.sleep(max(interval, self.mirror.rest_until - time.monotonic()))
                if self.mirror.due():
                    self.compare()

        threading.Thread(target=loop, name="shadow", daemon=True).start()

    def compare(self, budget: float | None = None) -> None:
        """Compare the queued copies (for ``budget`` seconds of CPU: ``Mirror.drain``), then carry out the
        verdicts found. Both comparer loops call this; a bug here is logged, not raised, so that it
        cannot end this process's comparisons, and its guard, for good."""
        try:
            self.mirror.drain(budget)
            self.settle()
        except Exception:
            log.exception("comparing for rollouts failed; going on")

    def settle(self) -> None:
        """Carry out the verdicts the comparisons found (the front end calls this after each drain)."""
        while self.verdicts:
            self.roll_back(*self.verdicts.popleft())

    def roll_back(self, name: str, generation: float, version: int, reason: str, why: str) -> None:
        """Send canary ``version``'s traffic back to the primary, if the rollout it was judged under
        is still the one in force (another process may have done it already)."""
        note = f"auto rollback of canary {version}: {why}"
        made = []  # whether this call made the change (another process's identical note is not this one's)

        def change(current: Rollout | None) -> Rollout | None:
            if current is None or current.generation != generation or version not in current.spec.canary:
                return current
            spec = current.spec.model_copy(update={"canary": {v: p for v, p in current.spec.canary.items()
                                                              if v != version}})
            made.append(True)
            return Rollout(spec, "guard", current.changed_at, note, since=current.generation)

        try:
            self.registry.change_rollout(name, change)
        except Exception:  # the state file could not be written: the log says so, serving goes on
            log.exception("rollout of %s: the auto rollback of canary %s failed", name, version)
            return
        if made:
            evidence.rolled_back(name, reason)
            log.warning("rollout of %s: %s", name, note)

    # -- what the API shows -----------------------------------------------------------------------
    def describe(self, name: str, families: list[Metric] | None = None) -> dict[str, Any]:
        """The rollout in force (or None), why a rollout file is ignored, and the evidence so far
        (``families``: the metrics as the caller read them, ``metrics.collect()``)."""
        snap = self.registry.snapshot
        rollout = snap.rollouts.get(name)
        out: dict[str, Any] = {"rollout": rollout.describe() if rollout else None}
        if name in snap.rollout_errors:
            out["rollout_error"] = snap.rollout_errors[name]
        seen = evidence.read(name, families)
        routed: dict[str, dict[str, int]] = {}
        for (version, role), count in sorted(seen["routed"].items()):
            routed.setdefault(str(version), {})[role] = count
        comparisons = []
        for (served, compared), counts in sorted(seen["comparisons"].items()):
            judged = counts["agree"] + counts["disagree"]
            comparisons.append({"served": served, "compared": compared, **{k: counts[k] for k in evidence.OUTCOMES},
                                "agreement": round(counts["agree"] / judged, 6) if judged else None,
                                "max_probability_difference": round(counts["max_difference"], 9)})
        out["evidence"] = {"routed": routed, "comparisons": comparisons, "rollbacks": seen["rollbacks"]}
        return out
