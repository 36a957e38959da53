"""Connections take turns on a worker's event loop: one greenlet resumed per turn of the loop, each
after the loop polled its sockets.

A request yields once (``service/http_server/worker.py`` says when), a batch's leader before it
takes the batch (the others join meanwhile), and each member of a batch before it writes its
answer. ``gevent.idle()`` would resume every greenlet that yielded in the same turn of the loop, one
after another with no poll between: with 16 requests waiting in a worker that is 16 requests parsed
(or answered) back to back, 4-10 ms, and a request that arrives meanwhile -- one the queue has no
room for, whose refusal costs 0.2 ms, or a probe -- waits all of it (``bench.overload``: refusals at
14-16 ms p99 with ``MAX_QUEUE_SIZE=16``; the loop's own lag at 10-13 ms p99). Here the greenlets
that yield queue up and one of them is resumed per turn, so the loop polls between any two and
reads what arrived meanwhile first: refusals at 3 ms p99, the loop's lag at 1-1.6 ms.

The one resumed each turn is resumed by a check watcher of the lowest priority: it runs in every
turn of the loop, after the sockets and timers that turn found ready, so the line moves even when
something is ready in every turn (an idle watcher waits for a turn with nothing ready, and under a
stream of arrivals would never come). An idle watcher with nothing to do is kept active while
anyone waits, only so that the loop's poll does not block.

Answers go first (``ahead``): a batch's members, woken together, write their answers before more
requests are parsed -- finishing work already done keeps answers within their deadlines. One more
turn of the loop per yield costs a poll that does not block (a few µs).
"""

from __future__ import annotations

from collections import deque

from gevent.hub import Waiter, get_hub

MINPRI = -2  # libev's lowest watcher priority (EV_MINPRI)


class Turns:
    """One worker's greenlets waiting for their turn, answers ahead of the rest (one event loop: no locks)."""

    def __init__(self) -> None:
        self.answers: deque[Waiter] = deque()
        self.others: deque[Waiter] = deque()
        self.check = self.idle = None  # the hub's watchers, made on first use (after fork, in the worker)

    def take(self, ahead: bool = False) -> None:
        """Yield to whatever is ready (sockets, timers) and to the greenlets that yielded before this
        one; ``ahead``: before every greenlet that yields without it (a batch member's answer)."""
        hub = get_hub()
        if self.check is None:
            self.check, self.idle = hub.loop.check(), hub.loop.idle()
            self.check.priority = MINPRI  # after what the turn found ready (set before it first starts)
        waiter = Waiter(hub)
        line = self.answers if ahead else self.others
        line.append(waiter)
        if not self.check.active:
            self.check.start(self._resume)
            self.idle.start(_nothing)
        try:
            waiter.get()
        except BaseException:  # killed while it waited (a stop): out of the line
            if waiter in line:
                line.remove(waiter)
            raise

    def answer(self) -> None:
        """:meth:`take` ahead of the rest."""
        self.take(True)

    def __len__(self) -> int:
        return len(self.answers) + len(self.others)

    def active(self) -> bool:
        """Whether the watchers run (someone waits, or did until this turn)."""
        return self.check is not None and self.check.active

    def _resume(self) -> None:
        """The check watcher's callback, in the hub, once a turn: the next greenlet in line goes on."""
        line = self.answers or self.others
        waiter = line.popleft() if line else None
        if not self.answers and not self.others:  # nobody else waits: the loop may block in its poll
            self.check.stop()
            self.idle.stop()
        if waiter is not None:
            waiter.switch(None)


def _nothing() -> None:
    """The idle watcher's callback: its being active is what keeps the poll from blocking."""
