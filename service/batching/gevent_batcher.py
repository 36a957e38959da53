"""Server-side batching in a gevent worker: concurrent requests for one model version share a forward pass.

The data plane validates a request, then hands its (rows, features) array to its runner
(``DataPlane.runner``); in the gunicorn worker that runner is a :class:`GeventBatcher`, created
after fork and handed over with ``DataPlane.serve_with``, so the data plane itself knows nothing of
gevent. How a batch forms:

* a request joins the queue of its model *version* (the snapshot it resolved: a reload during
  traffic never mixes versions, nor two loads of one version number);
* the first request of an empty queue leads: it yields to the event loop once (``turn``: the
  worker's turns, ``service/http_server/turns.py``; ``gevent.idle`` elsewhere), so the other
  connections that are ready parse, validate and join; then it takes the queue (up to
  ``MAX_BATCH`` rows) and runs it. A lone request therefore waits one turn of the loop, not a
  window (MLServer's ``max_batch_time`` makes every lone request pay it); and when the worker holds
  no other connection (``alone``), nothing could join, so it runs at once, without the turn or the
  queue (measured at c=1: the turn 22 µs and the queue's bookkeeping 26 µs of CPU a request, 9.5%);
* the measured cost table (``service/batching/cost_table.py``) decides whether one merged pass is cheaper than
  one pass per request (with OpenBLAS, two rows cost more than two single rows here); a request
  over the table's largest size runs alone, at once;
* the members a pass woke answer one per turn of the loop (``answer_turn``), so that a request
  arriving meanwhile is read between two of them, not after all;
* a failure of a pass fails only the requests in it; requests still queued get a new leader;
* a pass estimated over ``OFF_LOOP_SECONDS`` runs on the worker's model thread (NumPy releases
  the GIL in its products), so the loop keeps answering probes and small requests meanwhile; its
  requests count as waiting, within their deadlines, until the thread is theirs (:meth:`claim`),
  the leader's too: a leader with a deadline hands such a batch to a greenlet of its own and waits
  as the others do (:meth:`lead`);
* optional, Triton-style: ``MAX_QUEUE_DELAY_MICROSECONDS`` lets a leader wait up to that long for
  the queue to reach a ``PREFERRED_BATCH_SIZE`` (or ``MAX_BATCH``) rows.

What a batch is (cost tables, taking, merging, error isolation, metrics) is ``service/batching/rules.py``'s,
shared with the gRPC processes' thread batcher (``service/batching/thread_batcher.py``); here, only how
greenlets wait and wake.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import gevent
import numpy as np
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

from service.batching import rules
from service.batching.cost_table import CostTable
from service.batching.queue_policy import Ticket
from service.batching.rules import Batcher, Pending
from service.repository.model_version import ModelVersion

OFF_LOOP_SECONDS = 0.002  # a pass estimated longer than this runs on the model thread (handing off: ~0.1 ms)
NO_CLAIM = contextlib.nullcontext()  # reusable: a pass on the loop waits for nothing
LEAD, DONE = "lead", "done"


@dataclass(eq=False)
class VersionQueue:
    entry: ModelVersion
    items: list[Pending] = field(default_factory=list)
    busy: bool = False  # a leader is running (or has been handed) this queue; False only when items is empty
    rows: int = 0
    enough: Event | None = None  # set when the queue reaches its target (queue delay only)


class GeventBatcher(Batcher):
    """The data plane's runner in a gevent worker (``run(entry, batch) -> probabilities``); the rules
    of a batch (cost tables, taking, merging, describing) are ``service/batching/rules.py``'s."""

    def __init__(self, max_batch: int, max_queue_delay_us: int = 0, preferred: tuple[int, ...] = (),
                 alone: Callable[[], bool] = lambda: False, turn: Callable[[], None] = gevent.idle,
                 answer_turn: Callable[[], None] = lambda: None) -> None:
        super().__init__(max_batch)
        self.alone = alone  # True when no other request can be in this worker (its only connection)
        self.turn = turn  # yield to the connections that are ready (the worker's turns: turns.py)
        self.answer_turn = answer_turn  # a woken member's yield before it answers (ahead of new requests)
        self.delay = max_queue_delay_us / 1e6
        self.preferred = tuple(sorted(p for p in preferred if p <= max_batch))
        self.target = self.preferred[0] if self.preferred else max_batch
        self.queues: dict[int, VersionQueue] = {}  # id(entry) -> its queue (removed when it empties)
        self.pool = ThreadPool(1)  # the model thread: passes run one at a time per worker, as inline
        self.model_thread = Semaphore(1)  # held for a pass on it (see claim)

    # -- running ------------------------------------------------------------------------------------
    def run(self, entry: ModelVersion, batch: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        table = self.table(entry)
        if len(batch) > table.merge_limit or self.alone():  # large (merging would save nothing, and must
            with self.claim(table, len(batch), [ticket]):  # not wait), or nobody to wait for
                if ticket is not None:
                    if ticket.expired():
                        raise ticket.error()
                    ticket.start()
                return self.forward(entry, batch, table, None)
        key = id(entry)
        queue = self.queues.get(key)
        if queue is None or queue.entry is not entry:
            queue = self.queues[key] = VersionQueue(entry, enough=Event() if self.delay else None)
        item = Pending(batch, AsyncResult() if queue.busy else None, ticket=ticket)
        queue.items.append(item)
        queue.rows += len(batch)
        if queue.enough is not None and queue.rows >= self.target:
            queue.enough.set()
        if item.wake is not None and self.wait_as_member(key, queue, item) is DONE:
            self.answer_turn()  # woken with the batch's others: one answer per turn of the loop
            return self.outcome(item)
        queue.busy = True
        handed = False
        try:
            self.turn()  # one turn of the loop: the other ready connections join this batch
            if self.delay and queue.rows < self.target:
                wait = max(0.0, self.delay - (time.perf_counter() - queue.items[0].enqueued))
                left = ticket.remaining() if ticket is not None else None
                queue.enough.wait(wait if left is None else max(0.0, min(wait, left)))
            taken = self.take(queue)
            if self.outwaited(ticket, taken, table):
                # Its batch may wait for the model thread past this request's deadline: a greenlet of
                # its own runs the batch, and this request waits as the others do, answered at its
                # deadline if its pass has not started. The context copied: the batch span stays the
                # child of this request's span.
                item.wake = AsyncResult()
                gevent.spawn(contextvars.copy_context().run, self.lead, key, queue, taken, table)
                handed = True
                self.wait_as_member(key, queue, item)
                return self.outcome(item)
            self.execute(queue, taken, table)
        finally:
            if item in queue.items:  # interrupted before its batch was taken (a stop): out of the queue
                queue.items.remove(item)
                queue.rows -= len(item.rows)
            if not handed:
                self.hand_on(key, queue)
        return self.outcome(item)

    @staticmethod
    def outwaited(ticket: Ticket | None, taken: list[Pending], table: CostTable) -> bool:
        """Whether the leader's batch may wait for the model thread past the leader's deadline: a pass of
        it may run on the thread (the merged pass is the largest any can be), and it waits as long as
        its latest deadline, which another member's is (later, or none)."""
        if ticket is None or ticket.deadline is None:
            return False
        if table.cost(sum(len(i.rows) for i in taken)) <= OFF_LOOP_SECONDS:
            return False
        return any(i.ticket is None or i.ticket.deadline is None or i.ticket.deadline > ticket.deadline
                   for i in taken[1:])

    def lead(self, key: int, queue: VersionQueue, taken: list[Pending], table: CostTable) -> None:
        """Run a batch whose leader waits as a member (see :meth:`run`), wake it too, hand the queue on."""
        leader = taken[0]
        try:
            self.execute(queue, taken, table)
        except Exception as exc:  # not a pass's own failure (those are its requests'): the leader's, as before
            if leader.result is None:
                leader.error = exc
        finally:
            leader.wake.set(DONE)
            self.hand_on(key, queue)

    def wait_as_member(self, key: int, queue: VersionQueue, item: Pending) -> str:
        """:meth:`wait`; should the request be killed meanwhile (a stop) or raise its deadline's error,
        :meth:`abandon` it first, so that it never strands the others."""
        try:
            return self.wait(queue, item)
        except BaseException:
            self.abandon(key, queue, item)
            raise

    @staticmethod
    def wait(queue: VersionQueue, item: Pending) -> str:
        """Until the request leads or is done; at its deadline, if its pass has not started, its
        deadline's error: out of the queue if still queued, or, taken into a batch still waiting for the
        model thread, marked failed so that batch leaves it out. One whose pass runs waits for it."""
        left = item.ticket.remaining() if item.ticket is not None else None
        if left is None:
            return item.wake.get()
        try:
            return item.wake.get(timeout=max(0.0, left))
        except gevent.Timeout:
            if item.wake.ready():  # woken at the same instant
                return item.wake.value
            if item in queue.items:
                raise item.ticket.error() from None
            if not item.ticket.running:  # taken, its batch waiting for the model thread: it gives up now
                if item.error is None:  # unless the batch found it expired first (counted once)
                    item.error = item.ticket.error()
                return DONE
            return item.wake.get()

    def take(self, queue: VersionQueue) -> list[Pending]:
        """The queue's head, whole requests, up to ``MAX_BATCH`` rows (the leader is the first)."""
        taken, rows = rules.take(queue.items, self.max_batch)
        queue.rows -= rows
        if queue.enough is not None and queue.rows < self.target:
            queue.enough.clear()
        return taken

    def execute(self, queue: VersionQueue, taken: list[Pending], table: CostTable) -> None:
        """One merged pass, or one pass per request, whichever the cost table says is cheaper."""
        try:
            rules.execute(taken, table, lambda rows, group: self.forward(queue.entry, rows, table, group),
                          lambda group: self.claim(table, sum(len(i.rows) for i in group),
                                                   [i.ticket for i in group if i.error is None]))
        finally:
            for item in taken[1:]:  # the leader (taken[0]) returns its own
                item.wake.set(DONE)

    def claim(self, table: CostTable, rows: int, tickets: list[Ticket | None]) -> AbstractContextManager[None]:
        """The model thread, for a pass of ``rows`` that will run on it, waited for within the latest of
        the requests' deadlines. Until then they still wait (the queue policy counts them as waiting, and
        their deadlines run: the caller then finds them expired); a pass on the loop needs no claim (and
        costs nothing here: the one-sample path)."""
        return NO_CLAIM if table.cost(rows) <= OFF_LOOP_SECONDS else self._claim(tickets)

    @contextlib.contextmanager
    def _claim(self, tickets: list[Ticket | None]) -> Iterator[None]:
        lefts = [ticket.remaining() if ticket is not None else None for ticket in tickets]
        held = self.model_thread.acquire(timeout=None if None in lefts else max([0.0, *lefts]))
        try:
            yield
        finally:
            if held:
                self.model_thread.release()

    def forward(self, entry: ModelVersion, rows: np.ndarray, table: CostTable,
                group: list[Pending] | None) -> np.ndarray:
        if table.cost(len(rows)) > OFF_LOOP_SECONDS:
            return rules.run_pass(entry, rows, group, self.observe, self.pool.apply, entry.network.predict_proba,
                                  (rows,))
        return rules.run_pass(entry, rows, group, self.observe, entry.network.predict_proba, rows)

    def hand_on(self, key: int, queue: VersionQueue) -> None:
        """The next queued request leads; an empty queue is dropped (a new one forms on demand)."""
        if queue.items:
            queue.items[0].wake.set(LEAD)
        else:
            queue.busy = False
            if self.queues.get(key) is queue:
                del self.queues[key]

    def abandon(self, key: int, queue: VersionQueue, item: Pending) -> None:
        """A request killed while it waits (a stop): out of the queue, or, taken into a batch whose pass
        has not started, left out of it (its ticket is released by its caller: starting it would count
        it again)."""
        if item in queue.items:
            queue.items.remove(item)
            queue.rows -= len(item.rows)
        elif item.error is None and item.result is None and (item.ticket is None or not item.ticket.running):
            item.error = RuntimeError("the request was stopped before its pass")
        if item.wake is not None and item.wake.ready() and item.wake.value is LEAD:  # made leader, never ran
            self.hand_on(key, queue)

    outcome = staticmethod(rules.outcome)
