"""The worker's comparisons for rollouts (``service/dataplane/shadow.py``) run on a native thread,
never on the event loop: a shadow's forward pass may take milliseconds.

A greenlet looks every ``INTERVAL`` (or once the mirror's rest is over) and, when copies wait, has a
native thread of its own compare them while the loop goes on serving; a guard's verdict found there
is then carried out on the loop (``Rollouts.settle``), where the repository is scanned. The thread is
made at the first copy: a worker whose models have no rollout has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
from gevent.threadpool import ThreadPool

from service.dataplane.rollouts import Rollouts

INTERVAL = 0.02  # seconds between looks at the queue


def run(rollouts: Rollouts, is_alive: Callable[[], bool]) -> None:
    """Start comparing this worker's copies (after fork, before any request)."""
    gevent.spawn(loop, rollouts, is_alive)


def loop(rollouts: Rollouts, is_alive: Callable[[], bool]) -> None:
    pool: ThreadPool | None = None
    mirror = rollouts.mirror
    while is_alive():
        gevent.sleep(max(INTERVAL, mirror.rest_until - time.monotonic()))
        if mirror.due():
            pool = pool or ThreadPool(1)
            pool.apply(mirror.drain)
            rollouts.settle()
