"""Comparisons off the request path: a served request's samples run again on another version.

A rollout's shadow is sent a copy of every request its primary serves, and the primary a copy of
every request a canary serves (``rollouts.py``). The two answers are compared -- does the predicted
label agree, and the largest difference of one class probability -- and counted
(``service/observability/rollouts.py``); the copy's answer is never returned to anyone.

The request pays for a copy of its rows and a deque append. The comparisons run on a native thread
of the process (the front end's: ``service/http_server/shadow_runner.py`` in an HTTP worker, a plain
thread in a gRPC process), batched -- every queued row of one version pair in one forward pass -- and
they take at most ``MAX_SHARE`` of that thread's time (it rests in between), so even a shadow slower
than its primary costs the primary's requests a bounded share of a core. When ``capacity`` rows wait,
a new copy is dropped and counted, never waited for.
"""

from __future__ import annotations

import _thread
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.observability import rollouts as evidence
from service.repository.model_version import ModelVersion

log = logging.getLogger(__name__)

MAX_SHARE = 0.1  # of the comparing thread's time spent comparing; it rests the other 90 %
MAX_ROWS_PER_PASS = 1024  # rows in one forward pass of the comparing version


@dataclass(frozen=True)
class Copy:
    """One served request, queued for comparison on ``other``."""

    served: int  # the version that answered
    other: ModelVersion  # the version it is compared with
    batch: np.ndarray  # (rows, features), the validated inputs as run
    labels: list[str]  # the served version's class names
    classes: np.ndarray  # (rows,) the served answer's labels (indices into ``labels``)
    probabilities: np.ndarray  # (rows, classes) the served answer
    generation: float  # the rollout's ``changed_at`` when it was served (the guard judges per rollout)


Judge = Callable[[str, Copy, int], None]  # (model, copy, disagreeing rows): the guard, after each comparison


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
        self.rest_until = 0.0  # monotonic time before which the comparing thread rests (MAX_SHARE)

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

    def pending(self) -> int:
        return self._rows

    def due(self) -> bool:
        """Whether copies wait and the thread has rested long enough since its last pass."""
        return self._rows > 0 and time.monotonic() >= self.rest_until

    def drain(self) -> None:
        """Compare what is queued now, one forward pass per version pair (at most MAX_ROWS_PER_PASS
        rows each), then set the rest that keeps comparisons within MAX_SHARE of this thread's time."""
        start = time.monotonic()
        with self._lock:
            copies = list(self._queue)
            self._queue.clear()
            self._rows = 0
        groups: dict[tuple[int, int, str, int], list[Copy]] = {}
        for copy in copies:
            groups.setdefault((id(copy.other), copy.served, copy.other.name, copy.other.version), []).append(copy)
        for group in groups.values():
            chunk: list[Copy] = []
            rows = 0
            for copy in group:
                if chunk and rows + len(copy.batch) > MAX_ROWS_PER_PASS:
                    self.compare(chunk)
                    chunk, rows = [], 0
                chunk.append(copy)
                rows += len(copy.batch)
            if chunk:
                self.compare(chunk)
        spent = time.monotonic() - start
        self.rest_until = time.monotonic() + spent * (1 - MAX_SHARE) / MAX_SHARE

    def compare(self, copies: list[Copy]) -> None:
        """One forward pass of the other version on the copies' rows, and the counts."""
        other = copies[0].other
        try:
            batch = np.concatenate([c.batch for c in copies]) if len(copies) > 1 else copies[0].batch
            theirs = other.network.predict_proba(batch.astype(other.dtype, copy=False))
        except Exception:  # a broken version must not end the comparing thread; the log has it
            log.exception("comparison on %s/%s failed", other.name, other.version)
            return
        start = 0
        for copy in copies:
            rows = len(copy.batch)
            mine = theirs[start:start + rows]
            start += rows
            if other.labels == copy.labels:
                disagree = int(np.count_nonzero(mine.argmax(axis=1) != copy.classes))
                difference = float(np.abs(mine - copy.probabilities).max())
            else:  # other classes: compared by name; their probabilities are not comparable
                names = np.asarray(other.labels)[mine.argmax(axis=1)]
                disagree = int(np.count_nonzero(names != np.asarray(copy.labels)[copy.classes]))
                difference = 1.0
            if not np.isfinite(difference):  # a version answering NaN differs as much as it can
                difference = 1.0
            evidence.compared(other.name, copy.served, other.version, rows - disagree, disagree, difference)
            if self.judge is not None:
                self.judge(other.name, copy, disagree)
