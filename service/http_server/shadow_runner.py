"""The worker's comparisons for rollouts (``service/dataplane/shadow.py``), on its own event loop.

A greenlet looks every ``INTERVAL`` (or once the comparer's rest is over) and, when copies wait,
compares for a slice of ``SLICE_SECONDS`` (passes sized to about a millisecond each), then lets the
loop serve; the rest that follows keeps comparisons within 5 % of the worker's time. Not on a
native thread: there the comparisons fought the loop for Python's lock, and a shadow four times as
slow as its primary halved the primary's throughput (``bench.rollout_cost``). A guard's verdict found
by a comparison is carried out here too (``Rollouts.settle``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent

from service.dataplane.rollouts import Rollouts
from service.dataplane.shadow import SLICE_SECONDS

INTERVAL = 0.02  # seconds between looks at the queue


def run(rollouts: Rollouts, is_alive: Callable[[], bool]) -> None:
    """Start comparing this worker's copies (after fork, before any request)."""
    gevent.spawn(loop, rollouts, is_alive)


def loop(rollouts: Rollouts, is_alive: Callable[[], bool]) -> None:
    mirror = rollouts.mirror
    while is_alive():
        gevent.sleep(max(INTERVAL, mirror.rest_until - time.monotonic()))
        if mirror.due():
            mirror.drain(SLICE_SECONDS)
            rollouts.settle()
