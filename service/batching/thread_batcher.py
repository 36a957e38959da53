"""Server-side batching on threads (the gRPC process's grpcio pool): group commit, as a database's log does.

The gunicorn worker's batcher (``service/batching/gevent_batcher.py``) forms a batch by yielding to its event loop
once; threads have no loop to yield to, and a batcher that hands every request to a model thread
pays two thread wake-ups per request (a first attempt did: one-sample gRPC 0.68-0.92x of unbatched,
a lone request's p50 0.69 -> 1.03 ms). So here nobody is handed anything while the model is idle:

* a request that finds a free slot (fewer than ``GRPC_THREADS`` passes running in this process)
  runs its own rows at once, on its own thread: one uncontended lock, no event, no other thread;
* a request that finds every slot busy joins the queue of its model *version* (the snapshot it
  resolved, by identity: versions never mix, nor two loads of one) with an event, and waits;
* a thread whose pass ends takes the queue of the version waiting longest (whole requests, up to
  ``MAX_BATCH`` rows, ``service/batching/rules.py``'s :func:`~service.batching.rules.take`), hands it to its
  first request as the new leader (one wake-up), and returns its own answer. The leader runs the
  batch (merged or one pass per request, as the cost table says), wakes the others, and hands on.

So requests merge exactly when they would otherwise wait for the model, and one wake-up per batch
is on the critical path. The rules of a batch (cost tables, taking, merging, error isolation,
metrics) are ``service/batching/rules.py``'s, shared with the gevent batcher. No gevent or Flask here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.batching import rules
from service.batching.cost_table import CostTable
from service.batching.queue_policy import Ticket
from service.batching.rules import Batcher, Pending
from service.repository.model_version import ModelVersion


@dataclass(eq=False)
class VersionQueue:
    """The requests of one version waiting for a slot (removed when it empties)."""

    entry: ModelVersion
    table: CostTable
    items: list[Pending] = field(default_factory=list)


class ThreadBatcher(Batcher):
    """The data plane's runner in a gRPC process (``run(entry, batch) -> probabilities``), safe to call
    from any number of threads; at most ``threads`` forward passes run at once (``GRPC_THREADS``)."""

    def __init__(self, max_batch: int, threads: int = 1) -> None:
        super().__init__(max_batch)
        self.threads = threads
        self.lock = threading.Lock()  # guards running and queues; held for a few list operations only
        self.running = 0  # passes running, or handed to a leader not yet running
        self.queues: dict[int, VersionQueue] = {}  # id(entry) -> its waiting requests
        self.measuring = threading.Lock()  # one table measured at a time (a new version's first calls)

    def table(self, entry: ModelVersion) -> CostTable:
        known = self.tables.get(id(entry))
        if known is not None and known[0]() is entry:
            return known[1]
        with self.measuring:  # the first caller measures; the others then find its table
            return super().table(entry)

    def run(self, entry: ModelVersion, batch: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        table = self.table(entry)
        with self.lock:
            if self.running < self.threads:  # a free slot: run at once, on this thread
                self.running += 1
                item = None
            else:
                key = id(entry)
                queue = self.queues.get(key)
                if queue is None or queue.entry is not entry:
                    queue = self.queues[key] = VersionQueue(entry, table)
                item = Pending(batch, threading.Event(), ticket=ticket)
                queue.items.append(item)
        if item is None:
            try:
                if ticket is not None:
                    if ticket.expired():
                        raise ticket.error()
                    ticket.start()
                return rules.run_pass(entry, batch, None, self.observe, entry.network.predict_proba, batch)  # alone
            finally:
                self.hand_on()
        self.wait(key, item)  # woken to lead (item.batch set) or with its answer
        if item.batch is not None:
            self.lead(entry, item.batch, table)
        return rules.outcome(item)

    def wait(self, key: int, item: Pending) -> None:
        """Until the request is woken; at its deadline, if it is still queued, out of the queue with its
        deadline's error (once taken into a batch, it waits for that batch)."""
        left = item.ticket.remaining() if item.ticket is not None else None
        if left is None or item.wake.wait(max(0.0, left)):
            item.wake.wait()
            return
        with self.lock:
            queue = self.queues.get(key)
            queued = queue is not None and item in queue.items
            if queued:
                queue.items.remove(item)
                if not queue.items:
                    del self.queues[key]
        if queued:
            raise item.ticket.error()
        item.wake.wait()  # taken at the same instant: its batch answers it

    def lead(self, entry: ModelVersion, taken: list[Pending], table: CostTable) -> None:
        """Run a batch handed to its first request, wake the others, pass the slot on."""
        try:
            rules.execute(taken, table, lambda rows, group: self.forward(entry, rows, group))
        finally:
            for item in taken[1:]:  # the leader (taken[0]) returns its own
                item.wake.set()
            self.hand_on()

    def forward(self, entry: ModelVersion, rows: np.ndarray, group: list[Pending]) -> np.ndarray:
        return rules.run_pass(entry, rows, group, self.observe, entry.network.predict_proba, rows)

    def hand_on(self) -> None:
        """A pass ended: its slot goes to the version waiting longest (its first request leads), or is freed."""
        with self.lock:
            if not self.queues:
                self.running -= 1
                return
            # oldest first: a version under constant load cannot starve another
            key, queue = min(self.queues.items(), key=lambda kv: kv[1].items[0].enqueued)
            taken, _ = rules.take(queue.items, self.max_batch, queue.table.merge_limit)
            if not queue.items:
                del self.queues[key]
        taken[0].batch = taken
        taken[0].wake.set()

    def describe(self, entries: list[ModelVersion]) -> dict[str, Any]:
        return {**super().describe(entries), "threads": self.threads}
