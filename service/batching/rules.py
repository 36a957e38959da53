"""The batching rules both batchers share, free of any transport or concurrency library.

Two front-ends, one request path: the gunicorn worker's batcher (``service/batching/gevent_batcher.py``, greenlets)
and the gRPC process's (``service/batching/thread_batcher.py``, threads) differ only in how requests wait and
wake. What a batch is and how it runs is decided here, once:

* a cost table per loaded model version (``service/batching/cost_table.py``), measured on first use, held by
  weak reference so an unloaded version's table goes with it;
* :func:`take`: the queue's head, whole requests, up to ``MAX_BATCH`` rows;
* :func:`execute`: one merged pass or one pass per request, whichever the table says is cheaper,
  where a failing pass fails only the requests in it;
* :meth:`Batcher.describe`: the batching state ``GET /models/{m}`` and Triton's configuration show;
* :func:`record`: the queue-time and executed-batch-size metrics of one pass;
* :attr:`Batcher.observe`: what the data plane does with the rows of every pass that ran (the drift score).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.batching.cost_table import CostTable
from service.batching.queue_policy import Ticket
from service.observability import metrics, tracing
from service.repository.model_version import ModelVersion

# (version, rows (n, features)) of one forward pass that ran: the data plane's per-pass work
Observer = Callable[[ModelVersion, np.ndarray], None]


@dataclass(eq=False)  # compared by identity (its rows are an array)
class Pending:
    """One request's rows in a queue, and what it is given back."""

    rows: np.ndarray
    # How the request is woken (the batcher's own kind of event). Only a request that joins a busy queue
    # waits: the one that finds it idle runs at once and is never woken (so it is not given one to allocate)
    wake: Any = None
    enqueued: float = field(default_factory=time.perf_counter)
    result: np.ndarray | None = None
    error: BaseException | None = None
    batch: list[Pending] | None = None  # handed to a waiter that is to lead (the thread batcher)
    ticket: Ticket | None = None  # its deadline, and its waiting / running state (queue_policy.py)
    span: Any = None  # tracing on: the request's span context (its queue span's parent, a link of its batch)

    def __post_init__(self) -> None:
        if tracing.ENABLED:
            self.span = tracing.current()


class Batcher:
    """What a batcher knows besides its queues: the limits, and the cost table of every version."""

    delay: float = 0.0  # seconds a batch may wait to grow (Triton's max_queue_delay); 0: opportunistic
    preferred: tuple[int, ...] = ()
    observe: Observer | None = None  # set by the data plane (DataPlane.serve_with)

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.tables: dict[int, tuple[weakref.ref, CostTable]] = {}  # id(entry) -> cost table

    def table(self, entry: ModelVersion) -> CostTable:
        """The version's cost table, measured on first use (and by :meth:`warm` at start)."""
        known = self.tables.get(id(entry))
        if known is not None and known[0]() is entry:
            return known[1]
        table = CostTable.measure(entry.network, int(np.prod(entry.input_shape)), entry.dtype)
        self.tables = {k: v for k, v in self.tables.items() if v[0]() is not None}  # unloaded versions go
        self.tables[id(entry)] = (weakref.ref(entry), table)
        return table

    def warm(self, entries: list[ModelVersion]) -> None:
        for entry in entries:
            self.table(entry)

    def describe(self, entries: list[ModelVersion]) -> dict[str, Any]:
        """The batching state of these versions, for ``GET /models/{m}`` (and Triton's configuration)."""
        tables = {}
        for entry in entries:
            known = self.tables.get(id(entry))
            if known is not None and known[0]() is entry:
                tables[str(entry.version)] = {"merge_limit": known[1].merge_limit,
                                              "forward_us_by_rows": known[1].as_dict()}
        return {"enabled": True, "mode": "opportunistic" if not self.delay else "queue delay",
                "max_batch_size": self.max_batch, "max_queue_delay_microseconds": round(self.delay * 1e6),
                "preferred_batch_size": list(self.preferred), "versions": tables}


def take(items: list[Pending], max_batch: int, merge_limit: int | None = None) -> tuple[list[Pending], int]:
    """Pop the head of ``items``: whole requests, up to ``max_batch`` rows (the first is always taken).

    With ``merge_limit``, a request over it is taken only alone (it goes straight to the model, as
    merging would save nothing). Returns the requests taken and their rows.
    """
    taken: list[Pending] = []
    rows = 0
    while items and (not taken or rows + len(items[0].rows) <= max_batch):
        if taken and merge_limit is not None and len(items[0].rows) > merge_limit:
            break  # a large request waits for a pass of its own
        item = items.pop(0)
        taken.append(item)
        rows += len(item.rows)
        if merge_limit is not None and len(item.rows) > merge_limit:
            break  # it was the first: alone
    return taken, rows


Forward = Callable[[np.ndarray, Sequence[Pending]], np.ndarray]  # (rows, the requests in them) -> probabilities


def execute(taken: list[Pending], table: CostTable, forward: Forward,
            claim: Callable[[list[Pending]], AbstractContextManager[Any]] | None = None) -> None:
    """Run ``taken``: one merged pass, or one pass per request, whichever the cost table says is cheaper.

    Each request gets its own rows of the answer in ``result``, or the failure of the pass it was in
    in ``error``: a failing pass fails only its own requests, the other passes go on. A request whose
    deadline has passed when its pass can start (``claim(group)`` entered: what the pass must wait
    for, such as a model thread) is not computed (its ``error`` says so). Waking the requests is the
    caller's (the batcher's own kind of event), after this returns or raises.
    """
    groups = [taken] if table.merge_pays([len(i.rows) for i in taken]) else [[i] for i in taken]
    try:
        for group in groups:
            with claim(group) if claim is not None else contextlib.nullcontext():
                # one that gave up meanwhile (its deadline: the gevent batcher's wait) is already failed
                run_group([item for item in group if item.error is None and not expired(item)], forward)
    finally:
        for item in taken:
            if item.result is None and item.error is None:  # the leader was killed mid-way (a stop)
                item.error = RuntimeError("the batch this request was in was interrupted")


def run_group(group: list[Pending], forward: Forward) -> None:
    """One pass over ``group``'s rows (none if it is empty): each request's rows of the answer, or the
    pass's failure."""
    if not group:
        return
    for item in group:
        if item.ticket is not None:
            item.ticket.start()
    try:
        rows = group[0].rows if len(group) == 1 else np.concatenate([i.rows for i in group])
        probabilities = forward(rows, group)
    except Exception as exc:  # this pass only: the other groups and queued requests go on
        for item in group:
            item.error = exc
        return
    start = 0
    for item in group:
        item.result = probabilities[start:start + len(item.rows)]
        start += len(item.rows)


def expired(item: Pending) -> bool:
    """Whether the request's deadline passed before its pass: then it fails with that, uncomputed."""
    if item.ticket is not None and item.ticket.expired():
        item.error = item.ticket.error()
        return True
    return False


def record(entry: ModelVersion, rows: int, enqueued: Sequence[float]) -> None:
    """One pass about to run: each request's time in the queue, and the pass's rows."""
    now = time.perf_counter()
    for t in enqueued:
        metrics.observe_queue(entry.name, now - t)
    metrics.observe_executed(entry.name, rows)


def run_pass(entry: ModelVersion, rows: np.ndarray, requests: Sequence[Pending] | None, observe: Observer | None,
             compute: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """One forward pass, ``compute(*args)``, over ``rows`` of ``requests`` (None: the current request's
    own, which waited for nothing): :func:`record`ed, traced as one batch span when tracing is on, and
    its rows handed to ``observe`` once it ran (once per pass, not per request: the drift score of
    merged one-sample requests is one vectorised call). ``observe`` is part of the pass: its time is
    the pass's, and should it raise, the pass's requests fail with it."""
    record(entry, len(rows), [i.enqueued for i in requests] if requests is not None else (time.perf_counter(),))
    return forward(entry, rows, requests, observe, compute, *args)


def forward(entry: ModelVersion, rows: np.ndarray, requests: Sequence[Pending] | None, observe: Observer | None,
            compute: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """The pass itself, ``compute(*args)``: one batch span when tracing is on, then ``observe``
    (:func:`run_pass` without the queue's metrics: the inline runner's, which has no queue)."""
    if tracing.ENABLED:
        out = tracing.forward_pass(entry.name, entry.version, len(rows), requests, compute, *args)
    else:
        out = compute(*args)
    if observe is not None:
        observe(entry, rows)
    return out


def outcome(item: Pending) -> np.ndarray:
    """A request's answer, or its pass's failure raised."""
    if item.error is not None:
        raise item.error
    return item.result
