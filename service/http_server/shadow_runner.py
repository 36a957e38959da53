"""The worker's comparisons for rollouts (``service/dataplane/shadow.py``), on its own event loop.

A greenlet looks every ``INTERVAL`` (or once the comparer's rest is over) and, when copies wait,
compares for a slice of ``SLICE_SECONDS`` (passes sized to about a millisecond each), then lets the
loop serve; the rest that follows keeps comparisons within ``MAX_SHARE`` (2.5 %) of the worker's CPU
time. Not on a native thread: there the comparisons fought the loop for Python's lock, and a shadow
four times as slow as its primary halved the primary's throughput (``bench.rollout_cost``). A guard's
verdict found by a comparison is carried out here too (``Rollouts.settle``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent

from service.dataplane.rollouts import Rollouts
from service.dataplane.shadow import SLICE_SECONDS

INTERVAL = 0.02  # seconds between looks at the queue
IDLE_SLICE_SECONDS = 0.005  # of CPU, when the worker holds no connection: no rest then (nobody to slow down)


def run(rollouts: Rollouts, is_alive: Callable[[], bool], idle: Callable[[], bool] = lambda: False) -> None:
    """Start comparing this worker's copies (after fork, before any request); ``idle`` says the worker
    holds no connection, when a backlog is cleared without the rests."""
    gevent.spawn(loop, rollouts, is_alive, idle)


def loop(rollouts: Rollouts, is_alive: Callable[[], bool], idle: Callable[[], bool]) -> None:
    mirror = rollouts.mirror
    while is_alive():
        waiting = mirror.pending() and idle()
        gevent.sleep(0.001 if waiting else max(INTERVAL, mirror.rest_until - time.monotonic()))
        if mirror.pending() and idle():
            rollouts.compare(IDLE_SLICE_SECONDS)
            mirror.rest_until = 0.0
        elif mirror.due():
            rollouts.compare(SLICE_SECONDS)
