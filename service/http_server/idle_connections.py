"""Connections waiting on their client: for a request head (a first one, or the next on a kept-alive
connection), or for a request's body (and for room to read it in, and while a refused one is drained).

Each wait for a head is bounded by ``KEEPALIVE`` (gunicorn's own rule; the connection is then closed
quietly), each for a body by ``REQUEST_TIMEOUT`` (``request_body.py``: a 408). Waiting connections may
hold at most 90% of ``WORKER_CONNECTIONS``: past that the one waiting longest (for a body: since
its last bytes) is let go, as nginx does with keep-alive connections -- one waiting for a head is
closed, one waiting for its body answered 408 and closed at once -- so idle, silent or stalling
clients can never fill the worker and leave a new client (a health probe) queued behind them. On a
graceful stop every wait for a head ends at once instead of holding the stop for its keep-alive time.
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

    def stalling(self) -> BodyWait:
        """A context for the current greenlet's connection while it waits for the rest of a request body
        (registered only while it waits: a body already read with its head costs a dict entry, briefly)."""
        return BodyWait(self)

    def close_all(self) -> None:
        """End each wait for a head as if KEEPALIVE had run out: gunicorn then closes the connection
        quietly (closing the socket under the waiting greenlet logged a traceback each). A body being
        received goes on: its request is answered, as any in flight on a stop."""
        for wait in [w for w in self.waits.values() if isinstance(w, Wait)]:
            wait.expire()

    def make_room(self) -> None:
        """Past the bound, let the longest waiting go (called as a wait begins)."""
        if len(self.waits) >= self.limit:
            self.waits.pop(next(iter(self.waits))).expire()


class Evicted(BaseException):
    """Thrown into a connection stalled mid-body when the worker needs its place (``BodyWait``). A
    BaseException, as gevent's Timeout is: no ``except Exception`` (nor Timeout) on the way takes it."""


class Wait:
    """One connection's wait for a request head (a class, not a generator: this is entered once a
    request on a kept-alive connection's path, and ``contextlib.contextmanager`` costs more)."""

    __slots__ = ("active", "idle", "me", "timeout")

    def __init__(self, idle: IdleConnections, seconds: float) -> None:
        self.idle, self.me, self.timeout, self.active = idle, None, gevent.Timeout(seconds, False), False

    def __enter__(self) -> None:
        self.idle.make_room()  # near worker_connections: the longest-waiting one goes
        self.timeout.start()  # nothing switches greenlets between here and the registration
        self.me, self.active = gevent.getcurrent(), True
        self.idle.waits[self.me] = self

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


class BodyWait:
    """One connection's wait for the rest of its request body: let go past the bound (:class:`Evicted`
    thrown into it at the loop's next turn, unless the body arrived first)."""

    __slots__ = ("active", "idle", "me")

    def __init__(self, idle: IdleConnections) -> None:
        self.idle, self.me, self.active = idle, None, False

    def __enter__(self) -> BodyWait:
        self.idle.make_room()
        self.me, self.active = gevent.getcurrent(), True
        self.idle.waits[self.me] = self
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.active = False
        self.idle.waits.pop(self.me, None)

    def progress(self) -> None:
        """Bytes arrived: the newest wait again, so the one let go is the longest without progress, not
        the oldest upload."""
        waits = self.idle.waits
        if waits.pop(self.me, None) is not None:
            waits[self.me] = self

    def expire(self) -> None:
        gevent.get_hub().loop.run_callback(self._throw)

    def _throw(self) -> None:
        if self.active:
            self.me.throw(Evicted())
