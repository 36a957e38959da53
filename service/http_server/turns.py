"""Connections take turns on a worker's event loop: one greenlet resumed per turn of the loop, each
after the loop polled its sockets.

A request yields once before it is parsed (or, one the inference middleware does not answer, after
its answer), a batch's leader before it takes the batch (the others join meanwhile), and each member
of a batch before it writes its answer. ``gevent.idle()`` would resume every greenlet that yielded in
the same turn of the loop, one after another with no poll between: with 16 requests waiting in a
worker that is 16 requests parsed (or answered) back to back, 4-10 ms, and a request that arrives
meanwhile -- one the queue has no room for, whose refusal costs 0.2 ms, or a probe -- waits all of it
(``bench.overload``: refusals at 14-16 ms p99 with ``MAX_QUEUE_SIZE=16``; the loop's own lag at
10-13 ms p99). Here the greenlets that yield queue up and one idle watcher resumes one of them per
turn, so the loop polls between any two and reads what arrived meanwhile first (an idle watcher
runs only when nothing else is pending): refusals at 3 ms p99, the loop's lag at 1-1.6 ms.

Answers go first (``ahead``): a batch's members, woken together, write their answers before more
requests are parsed -- finishing work already done keeps answers within their deadlines. One more
turn of the loop per yield costs a poll that does not block (a few µs).
"""

from __future__ import annotations

from collections import deque

from gevent.hub import Waiter, get_hub


class Turns:
    """One worker's greenlets waiting for their turn, answers ahead of the rest (one event loop: no locks)."""

    def __init__(self) -> None:
        self.answers: deque[Waiter] = deque()
        self.others: deque[Waiter] = deque()
        self.watcher = None  # the hub's idle watcher, made on first use (after fork, in the worker)

    def take(self, ahead: bool = False) -> None:
        """Yield to whatever is ready (sockets, timers) and to the greenlets that yielded before this
        one; ``ahead``: before every greenlet that yields without it (a batch member's answer)."""
        hub = get_hub()
        if self.watcher is None:
            self.watcher = hub.loop.idle()
        waiter = Waiter(hub)
        line = self.answers if ahead else self.others
        line.append(waiter)
        if not self.watcher.active:
            self.watcher.start(self._resume)
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

    def _resume(self) -> None:
        """The idle watcher's callback, in the hub: the next greenlet in line goes on."""
        line = self.answers or self.others
        if not line:  # the last one was killed while it waited
            self.watcher.stop()
            return
        waiter = line.popleft()
        if not self.answers and not self.others:
            self.watcher.stop()
        waiter.switch(None)
