"""Client connections spread evenly over the workers.

Every worker accepts from the one listening socket, one connection per wake-up (gunicorn's
``max_accept = 1``). When many clients connect at once -- a load balancer filling its pool, a
load generator -- both workers wake for each, and whichever loop happens to be free takes it;
kept-alive connections then stay where they landed. Measured (256 connections, 2 workers, 3
runs): 76 / 180, 74 / 182 and 123 / 133. A worker holding 180 connections answers each of them
2.4 times less often than one holding 76, so its clients waited ~66 ms where the others waited
~28 (``bench.overload``: that skew alone made 4 in 10 answers miss a 50 ms deadline).

So the workers share a small table in memory (made in the master before it forks, inherited by
every worker: an anonymous shared mapping, one 32-bit count per slot, -1 for a slot no live worker
holds). Each worker writes its own count of open connections; before it accepts, a worker that
holds more than ``SLACK`` connections above the fewest of the others leaves the connection for
``DEFER_SECONDS`` to a worker with fewer, then accepts it if it is still waiting. A connection is
thus delayed by at most that much, and a busy or stuck worker with few connections never leaves
one unanswered. The master gives each worker its slot as it forks it (``pre_fork``), and frees the
slot when the worker exits (``child_exit``), so a restarted worker takes over its slot at zero.

Counts are read without locks: a stale count at worst lets one connection land one slot off.
"""

from __future__ import annotations

import mmap

import numpy as np

SLOTS = 64  # WORKERS is at most 64 (service/config.py); a worker beyond (TTIN) takes part in nothing
SLACK = 1  # connections a worker may hold above the least loaded other before it defers
DEFER_SECONDS = 0.002  # how long a connection is left to the other workers before this one takes it
BURST = 16  # connections one wake-up may accept in a row (each checked against the share)
VACANT = -1

_table: np.ndarray | None = None  # (SLOTS,) int32 in shared memory; made by the master (create)


def create() -> None:
    """In the master, before any worker is forked: the shared table, every slot vacant."""
    global _table
    if _table is None:
        _table = np.frombuffer(mmap.mmap(-1, SLOTS * 4), dtype=np.int32)  # MAP_SHARED: forks see one table
        _table[:] = VACANT


def claim(taken: set[int | None]) -> int | None:
    """In the master, as it forks a worker: a slot no live worker holds (``taken``), its count zeroed;
    None without a table or a free slot."""
    if _table is None:
        return None
    for slot in range(SLOTS):
        if slot not in taken:
            _table[slot] = 0
            return slot
    return None


def vacate(slot: int | None) -> None:
    """In the master, once a worker exited: its slot no longer counts."""
    if _table is not None and slot is not None:
        _table[slot] = VACANT


class Share:
    """One worker's place in the table (``slot`` None: it takes no part, and never defers)."""

    def __init__(self, slot: int | None) -> None:
        self.table = _table if slot is not None else None
        self.slot = slot
        self.mine = 0  # connections accepted and not yet closed
        self.granted = False  # one accept allowed unasked, right after a deferral

    def opened(self) -> None:
        self.mine += 1
        if self.table is not None:
            self.table[self.slot] = self.mine

    def closed(self) -> None:
        self.mine -= 1
        if self.table is not None:
            self.table[self.slot] = self.mine

    def defer(self) -> bool:
        """Whether to leave a waiting connection to the other workers for ``DEFER_SECONDS`` now: this
        worker holds more than ``SLACK`` above the least loaded other (never after :meth:`grant`)."""
        if self.table is None or self.granted:
            return False
        live = self.table[self.table >= 0]
        return len(live) >= 2 and self.mine > live.min() + SLACK  # not alone, and above the least loaded

    def grant(self) -> None:
        """``DEFER_SECONDS`` after a deferral: a connection still waiting was left by the others, so the
        accepts of this one look (:meth:`woken` ends it) go ahead whatever the counts."""
        self.granted = True

    def woken(self) -> None:
        """A look's accepts are over: the next one asks again."""
        self.granted = False


def deferring_server(base: type, share: Share) -> type:
    """A subclass of gevent's ``StreamServer`` (``base``) whose accepts go through ``share``.

    gevent calls ``_do_read`` when the listening socket is readable; gunicorn lets it accept one
    connection per call. Here a worker under its share accepts up to ``BURST`` in a row (its loop
    may be busy for tens of milliseconds between calls under load, and connections waiting that long
    was measured: up to 0.9 s to a first answer); on a deferral it stops watching the socket and
    looks again after ``DEFER_SECONDS``. Every accepted socket is counted once and uncounted once,
    when gevent closes it (``do_close``: after its handler returns, or when no greenlet could be
    spawned for it)."""

    class BalancedServer(base):  # type: ignore[misc, valid-type]
        def _do_read(self) -> None:
            for _ in range(BURST):
                if share.defer():
                    self.stop_accepting()
                    self._timer = self.loop.timer(DEFER_SECONDS)  # stop_accepting() clears it, as gevent's own
                    self._timer.start(self._take_what_was_left)
                    return
                before = share.mine
                super()._do_read()  # one accept, or none waiting, or gevent's own handling of a failure
                if share.mine == before or self._watcher is None:
                    break
            share.woken()

        def _take_what_was_left(self) -> None:
            """``DEFER_SECONDS`` after a deferral: watch the socket again, and take the connection left
            to the others at once if it still waits (if none does, the next one is judged afresh:
            a grant that outlived its connection let this worker take the next one unasked)."""
            self._start_accepting_if_started()
            if self._watcher is not None:
                share.grant()
                self._do_read()

        def do_read(self) -> tuple | None:  # (socket, address), or None: nothing was waiting
            accepted = super().do_read()
            if accepted:
                share.opened()
            return accepted

        def do_close(self, *args) -> None:
            try:
                super().do_close(*args)
            finally:
                share.closed()

    BalancedServer.__name__ = BalancedServer.__qualname__ = f"Balanced{base.__name__}"
    return BalancedServer
