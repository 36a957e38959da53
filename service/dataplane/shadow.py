"""Comparisons off the request path: a served request's samples run again on another version.

A rollout's shadow is sent a copy of every request its primary serves, and the primary a copy of
every request a canary serves (``rollouts.py``). The two answers are compared -- does the predicted
label agree, and the largest difference of one class probability -- and counted
(``service/observability/rollouts.py``); the copy's answer is never returned to anyone.

The request pays for a copy of its rows and a deque append. The comparisons are batched -- the queued
rows of one version pair in one forward pass, sized to take about ``PASS_SECONDS`` -- with one
vectorised comparison and one counter update per pass, and they take at most ``MAX_SHARE`` of the
CPU time: after each :meth:`Mirror.drain` the comparer rests 39 times as long as it worked. Where they
run is the front end's choice: an HTTP worker runs them on its own event loop between requests
(``service/http_server/shadow_runner.py``: a slice of ``SLICE_SECONDS`` at a time, so no thread fights
the loop for Python's lock -- a native thread there halved the primary's throughput), a gRPC process
on a thread of its own. Past ``capacity`` queued rows a new copy is dropped and counted, never waited
for, so even a shadow far slower than its primary costs the primary a bounded share of a core.
"""

from __future__ import annotations

import _thread
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from service.observability import rollouts as evidence
from service.repository.model_version import ModelVersion

log = logging.getLogger(__name__)

# of the CPU time spent comparing; the comparer rests the other 97.5 %. The primary pays the share in
# throughput and, at saturation, as much in latency: at 5 % a saturated shadow took 8.4 % of the
# requests/s and its p99 was 1.065 (0.978-1.194) of no shadow (bench.rollout_cost, 18 rounds)
MAX_SHARE = 0.025
PASS_SECONDS = 0.001  # a pass's rows are sized to take about this long (learned from the last passes)
MAX_ROWS_PER_PASS = 1024
SLICE_SECONDS = 0.002  # of CPU: an event loop's drain stops after a pass that ends past this


@dataclass(frozen=True)
class Copy:
    """One served request, queued for comparison on ``other``."""

    served: int  # the version that answered
    other: ModelVersion  # the version it is compared with
    batch: np.ndarray  # (rows, features), the validated inputs as run
    labels: list[str]  # the served version's class names
    classes: np.ndarray  # (rows,) the served answer's labels (indices into ``labels``)
    probabilities: np.ndarray  # (rows, classes) the served answer
    generation: float  # the rollout's ``generation`` when it was served (the guard judges per generation)

    def split(self, rows: int) -> tuple[Copy, Copy]:
        """(the first ``rows`` rows, the rest): views, nothing copied."""
        head = replace(self, batch=self.batch[:rows], classes=self.classes[:rows],
                       probabilities=self.probabilities[:rows])
        rest = replace(self, batch=self.batch[rows:], classes=self.classes[rows:],
                       probabilities=self.probabilities[rows:])
        return head, rest


# (model, served version, generation, rows compared, rows disagreeing): the guard, after each pass
Judge = Callable[[str, int, float, int, int], None]


class Mirror:
    """The bounded queue of copies, and their comparison (:meth:`drain`, on a native thread)."""

    def __init__(self, capacity: int = 4096, judge: Judge | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 row, not {capacity}")
        self.capacity = capacity
        self.judge = judge
        self._queue: deque[Copy] = deque()
        self._lock = _thread.RLock()  # native even under gevent: offer and drain run on different threads
        self._rows = 0
        self.rest_until = 0.0  # monotonic time before which the comparer rests (MAX_SHARE)
        self.pass_rows: dict[int, int] = {}  # id(compared entry) -> rows a pass takes (learned)

    def offer(self, copy: Copy) -> None:
        """Queue a copy (its arrays are the request's own, never reused), or drop and count it."""
        rows = len(copy.batch)
        with self._lock:
            if self._rows + rows > self.capacity:
                full = True
            else:
                full = False
                self._rows += rows
                self._queue.append(copy)
        if full:
            evidence.dropped(copy.other.name, copy.served, copy.other.version, rows)

    def has_room(self, rows: int) -> bool:
        """Whether ``rows`` more would fit now (a hint: :meth:`offer` decides, under the lock)."""
        return self._rows + rows <= self.capacity

    def pending(self) -> int:
        return self._rows

    def due(self) -> bool:
        """Whether copies wait and the thread has rested long enough since its last pass."""
        return self._rows > 0 and time.monotonic() >= self.rest_until

    def drain(self, budget: float | None = None) -> None:
        """Compare queued copies, a pass at a time, until none are left or ``budget`` seconds are spent
        (None: all that were queued); then set the rest that keeps comparisons within MAX_SHARE."""
        # CPU time, not the clock's: on a busy machine a slice may span many times its CPU in wall time,
        # and resting 39 times that would starve the comparisons (a backlog then took minutes to clear)
        start = time.thread_time()
        end = None if budget is None else start + budget
        left = self._rows if budget is None else None  # without a budget: what is queued now, not more
        while left is None or left > 0:
            copies = self.take()
            if not copies:
                break
            if left is not None:
                left -= sum(len(c.batch) for c in copies)
            self.compare(copies)
            if end is not None and time.thread_time() >= end:
                break
        spent = time.thread_time() - start
        self.rest_until = time.monotonic() + spent * (1 - MAX_SHARE) / MAX_SHARE

    def take(self) -> list[Copy]:
        """The queue's head: copies of one version pair and generation, as many rows as one pass takes.
        A copy larger than that is split, its rest left at the head: a 1,024-row copy compared whole
        held an HTTP worker's event loop for 60-140 ms, against a slice of SLICE_SECONDS."""
        with self._lock:
            if not self._queue:
                return []
            first = self._queue.popleft()
            limit = self.pass_rows.get(id(first.other), 16)
            if len(first.batch) > limit:
                first, rest = first.split(limit)
                self._queue.appendleft(rest)
            taken, rows = [first], len(first.batch)
            while self._queue and rows < limit:
                nxt = self._queue[0]
                if (nxt.other is not first.other or nxt.served != first.served or nxt.generation != first.generation
                        or rows + len(nxt.batch) > limit):
                    break
                taken.append(self._queue.popleft())
                rows += len(nxt.batch)
            self._rows -= rows
        return taken

    def compare(self, copies: list[Copy]) -> None:
        """One forward pass of the other version on the copies' rows, one comparison, one count. A
        comparison that fails (a broken version, a version whose classes changed while its copies
        waited) is logged and its copies dropped: the comparer goes on with the next."""
        other = copies[0].other
        try:
            self._compare(copies)
        except Exception:
            log.exception("comparison on %s/%s failed", other.name, other.version)

    def _compare(self, copies: list[Copy]) -> None:
        other, first = copies[0].other, copies[0]
        started = time.thread_time()
        batch = np.concatenate([c.batch for c in copies]) if len(copies) > 1 else first.batch
        theirs = other.network.predict_proba(batch.astype(other.dtype, copy=False))
        self.learn(other, len(batch), time.thread_time() - started)
        mine = np.concatenate([c.classes for c in copies]) if len(copies) > 1 else first.classes
        if other.labels == first.labels:
            disagree = int(np.count_nonzero(theirs.argmax(axis=1) != mine))
            served = np.concatenate([c.probabilities for c in copies]) if len(copies) > 1 else first.probabilities
            difference = float(np.abs(theirs - served).max())
        else:  # other classes: compared by name; their probabilities are not comparable
            names = np.asarray(other.labels)[theirs.argmax(axis=1)]
            disagree = int(np.count_nonzero(names != np.asarray(first.labels)[mine]))
            difference = 1.0
        if not np.isfinite(difference):  # a version answering NaN differs as much as it can
            difference = 1.0
        rows = len(batch)
        evidence.compared(other.name, first.served, other.version, rows - disagree, disagree, difference)
        if self.judge is not None:
            self.judge(other.name, first.served, first.generation, rows, disagree)

    def learn(self, other: ModelVersion, rows: int, seconds: float) -> None:
        """Size the next pass of ``other`` to take about PASS_SECONDS, from this one's time per row."""
        if seconds > 0:
            fit = int(rows * PASS_SECONDS / seconds)
            self.pass_rows[id(other)] = max(1, min(MAX_ROWS_PER_PASS, fit))
