"""Connections waiting for a request head (a first one, or the next on a kept-alive connection).

Each wait is bounded by ``KEEPALIVE`` (gunicorn's own rule; the connection is then closed quietly).
Waiting connections may hold at most 90% of ``WORKER_CONNECTIONS``: past that the one waiting
longest is closed (as nginx does with keep-alive connections), so idle and silent clients can never
fill the worker and leave a new client queued for ``KEEPALIVE`` seconds. On a graceful stop every
wait ends at once instead of holding the stop for its keep-alive time.
"""

from __future__ import annotations

from typing import Any

import gevent

IDLE_SHARE = 0.9  # of worker_connections, at most, waiting idle for a next (or first) request head


class IdleConnections:
    """The waits of one worker, oldest first (one event loop: no locks)."""

    def __init__(self, worker_connections: int) -> None:
        self.waits: dict[Any, Wait] = {}  # connection greenlet -> its wait
        self.limit = max(1, int(IDLE_SHARE * worker_connections))

    def waiting(self, seconds: float) -> Wait:
        """A context for the current greenlet's connection while it waits for a request head, for at
        most ``seconds`` (0 on stop: a connection answered just before the signal was not yet waiting
        when it came)."""
        return Wait(self, seconds)

    def close_all(self) -> None:
        """End each wait as if KEEPALIVE had run out: gunicorn then closes the connection quietly
        (closing the socket under the waiting greenlet logged a traceback each)."""
        for wait in list(self.waits.values()):
            wait.expire()


class Wait:
    """One connection's wait for a request head (a class, not a generator: this is entered once a
    request on a kept-alive connection's path, and ``contextlib.contextmanager`` costs more)."""

    __slots__ = ("active", "idle", "me", "timeout")

    def __init__(self, idle: IdleConnections, seconds: float) -> None:
        self.idle, self.me, self.timeout, self.active = idle, None, gevent.Timeout(seconds, False), False

    def __enter__(self) -> None:
        waits = self.idle.waits
        if len(waits) >= self.idle.limit:  # near worker_connections: the longest-waiting one goes
            waits.pop(next(iter(waits))).expire()
        self.timeout.start()  # nothing switches greenlets between here and the registration
        self.me, self.active = gevent.getcurrent(), True
        waits[self.me] = self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool | None:
        self.active = False
        try:
            return self.timeout.__exit__(kind, value, traceback)  # its own expiry, suppressed (False)
        finally:
            self.idle.waits.pop(self.me, None)

    def expire(self) -> None:
        """End the wait as if its time had run out, at the loop's next turn -- unless it ended first:
        a request that arrived in the same turn is not interrupted mid-way (``gevent.kill`` would
        still throw the wait's timeout into it)."""
        gevent.get_hub().loop.run_callback(self._throw)

    def _throw(self) -> None:
        if self.active:
            self.me.throw(self.timeout)
