"""Recorder: the bounded queue between the request path and the journal.

A request only decides whether it is sampled and, if so, queues copies of its arrays (a few
microseconds, no JSON, no I/O). A background thread encodes what is queued and appends it to the
journal. When the queue is full (``capacity`` records, or ``max_bytes`` of arrays: 1,024 queued
requests of 1,024 MNIST rows held 3.3 GB), or the disk budget is, records are dropped and counted
(``nn_capture_records_total``), never the request; while the budget is known full, queued records are
dropped without being encoded.
"""

from __future__ import annotations

import _thread
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.capture.events import inference_events
from service.capture.journal import CaptureWriteError, Journal, reset_after_fork
from service.observability import metrics

SYNC_SECONDS = 1.0

log = logging.getLogger(__name__)


class Recorder:
    """Samples inferences on the request path and writes them to a journal off it.

    ``offer`` runs on the request path, ``flush`` on a background native thread: the gevent HTTP
    worker calls it from its own thread pool, a plain threaded process starts :meth:`start_thread`.

    Durability: records are written to the page cache at each flush and ``fsync``-ed at most once a
    second. A process killed even by ``kill -9`` loses only what was still queued (the page cache
    outlives the process); a power failure may also lose the last second's records. Feedback
    (:meth:`write_now`) is fsynced before it returns.

    Parameters
    ----------
    journal : Journal
        Where records go; its ``kind`` labels the metrics.
    sample_rate : float
        The share of offered inferences recorded, 0 .. 1 (``CAPTURE_SAMPLE_RATE``).
    capacity : int
        Records queued at most; an offer beyond it is dropped and counted. Concurrent threads may
        overshoot it by one record each (the check and the append are not one step).
    max_bytes : int
        Bytes of arrays queued at most (the inputs and probabilities copied); likewise.
    rng : random.Random, optional
        The sampling's random source (tests); the module ``random`` by default.
    """

    def __init__(self, journal: Journal, sample_rate: float, capacity: int = 1024, rng: random.Random | None = None,
                 max_bytes: int = 64 << 20) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within 0 .. 1, not {sample_rate}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.journal = journal
        self.kind = journal.kind
        self.sample_rate = float(sample_rate)
        self.capacity, self.max_bytes = capacity, max_bytes
        self._queued_bytes = 0
        self._bytes_lock = _thread.RLock()  # native (see below); the request path's only lock, 0.2 us
        self._random = (rng or random).random
        self._queue: deque[tuple[Any, ...]] = deque()  # append and popleft are atomic: no lock on the request path
        # A native lock under gevent too (see journal.py): flush runs on native threads.
        self._flush_lock = _thread.RLock()
        self._last_sync = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stopping: threading.Event | None = None
        self._stopped = False
        kind = self.kind
        self._written = metrics.CAPTURE_RECORDS.labels(kind, "written")
        self._dropped_queue = metrics.CAPTURE_RECORDS.labels(kind, "dropped_queue")
        self._dropped_budget = metrics.CAPTURE_RECORDS.labels(kind, "dropped_budget")
        self._dropped_error = metrics.CAPTURE_RECORDS.labels(kind, "dropped_error")
        self._bytes = metrics.CAPTURE_BYTES.labels(kind)
        reset_after_fork(self)

    def offer(self, rid: str, model: str, version: int, labels: Sequence[str], inputs: np.ndarray,
              probabilities: np.ndarray) -> bool:
        """Queue one answered inference if it is sampled; True if it was queued.

        On the request path: a sampling decision, two small copies and a deque append. The arrays are
        copied (``inputs`` may be a view of a pooled request buffer); ``labels`` is kept as given (a
        fresh list per answer, never changed after).
        """
        rate = self.sample_rate
        if rate <= 0.0:
            return False
        if rate < 1.0 and self._random() >= rate:
            return False
        queue = self._queue
        size = inputs.nbytes + probabilities.nbytes
        if len(queue) >= self.capacity or self._queued_bytes + size > self.max_bytes or self._stopped:
            self._dropped_queue.inc()
            return False
        with self._bytes_lock:
            self._queued_bytes += size
        # in inference_events' order, time first taken now: the inference's own time, not the flush's
        queue.append((rid, model, version, time.time_ns(), inputs.copy(), probabilities.copy(), labels))
        return True

    def pending(self) -> int:
        """Records queued and not yet written."""
        return len(self._queue)

    def flush(self) -> int:
        """Encode and append everything queued; returns how many records were written.

        Off the request path (a background native thread); safe to call from several threads (one
        flush runs at a time). Records the budget has no room for are dropped and counted; the
        journal is fsynced at most once a second, by a flush, so call it regularly even when idle.
        """
        with self._flush_lock:
            items = []
            pop = self._queue.popleft
            while True:
                try:
                    items.append(pop())
                except IndexError:
                    break
            if items:
                with self._bytes_lock:
                    self._queued_bytes -= sum(item[4].nbytes + item[5].nbytes for item in items)
            written = 0
            if items:
                written = self._write(items)
            now = time.monotonic()
            if now - self._last_sync >= SYNC_SECONDS:
                self._last_sync = now
                try:
                    self.journal.sync()
                except OSError as e:
                    log.warning("capture: %s", e)
            return written

    def _write(self, items: list[tuple[Any, ...]]) -> int:
        if self.journal.refusing():  # within a wait after a full budget or a refusing disk: not worth encoding
            (self._dropped_error if self.journal.failing() else self._dropped_budget).inc(len(items))
            return 0
        records = []
        for item in items:
            try:
                records.append(inference_events(*item))
            except (TypeError, ValueError) as e:  # an unexpected label or array: that record only
                log.warning("capture: request %s not encoded: %s", item[0], e)
                self._dropped_error.inc()
        errors = 0
        try:
            written = self.journal.append_records(records)
        except CaptureWriteError as e:
            written, errors = e.written, len(records) - e.written
        except ValueError:  # the journal closed (stop) while these were being queued
            written, errors = 0, len(records)
        if written:
            self._written.inc(written)
            self._bytes.inc(sum(len(r) for r in records[:written]))
        if errors:
            self._dropped_error.inc(errors)
        if len(records) - written - errors:
            self._dropped_budget.inc(len(records) - written - errors)
        return written

    def write_now(self, lines: bytes) -> bool:
        """Append event lines (each ending in ``"\\n"``) durably at once, without the queue: feedback.

        All or none: returns False when the budget has no room for them (counted, one record per
        line). It waits for ``fsync``, so an event loop should call it from a thread.

        Raises
        ------
        CaptureWriteError
            The disk refused them (counted too); none of them is left in the file.
        """
        count = lines.count(b"\n")
        try:
            ok = self.journal.append(lines, durable=True)
        except CaptureWriteError:
            self._dropped_error.inc(count)
            raise
        if ok:
            self._written.inc(count)
            self._bytes.inc(len(lines))
        else:
            self._dropped_budget.inc(count)
        return ok

    def start_thread(self, interval: float = 0.05) -> None:
        """Flush every ``interval`` seconds on a daemon thread (gRPC processes, tests; not under gevent,
        where the worker calls :meth:`flush` from its own native thread pool)."""
        if self._thread is not None:
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval, self._stopping), daemon=True,
                                        name=f"capture-{self.kind}")
        self._thread.start()

    def _run(self, interval: float, stopping: threading.Event) -> None:
        while not stopping.wait(interval):
            try:
                self.flush()
            except Exception:  # the thread must outlive any one bad flush
                log.exception("capture: flush failed")

    def stop(self) -> None:
        """Stop the thread (if started), write what is queued and close the journal. Idempotent."""
        self._stopped = True
        if self._thread is not None and self._stopping is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
        with self._flush_lock:
            if not self.journal.closed:
                self.flush()
                self.journal.close()

    def _after_fork_in_child(self) -> None:
        # What the parent queued is the parent's to write; its thread and any lock it held are not here.
        self._queue.clear()
        self._flush_lock = _thread.RLock()
        self._thread = self._stopping = None
