"""A worker's budget for request bodies being read: large uploads wait their turn, small ones never do.

Each connection may send a body of up to ``MAX_BODY_BYTES``, and the worker reads a body whole before
the app runs. Without a bound on the sum, a hundred clients that send 15 MB each and then stall took
two workers from 143 MB to 1.7 GB (the Deployment gives the pod 1 GiB). So a body larger than
``SMALL_BODY`` reserves its declared length (a chunked one, ``MAX_BODY_BYTES``) from the worker's
``BODY_BUFFER_BYTES`` before a byte of it is read. One that does not fit waits, unread (the client's
bytes stay in the kernel's socket buffers), until enough is released, for at most half its
``REQUEST_TIMEOUT``; then it is a 503 with ``Retry-After``. The other half is the body's time to
arrive in: a waiter given the whole timeout would, behind stalled holders, only get room too late
and end in a 408. A budget with nothing reserved always takes one body, so one body of
``MAX_BODY_BYTES`` is never refused. Small bodies (the usual request: a 1-image MNIST body is 4 kB)
do not count, so stalled uploads never delay them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import gevent.event

SMALL_BODY = 64 * 1024  # bytes: bodies up to this size are read at once, outside the budget


class BodyBudget:
    """Bytes of large request bodies one worker holds while reading them (one event loop: no locks)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.released = gevent.event.Event()

    @contextlib.contextmanager
    def reserve(self, size: int, timeout: float) -> Iterator[bool]:
        """Yields True holding ``size`` bytes of the budget, or False if they were not free in ``timeout``."""
        if size <= SMALL_BODY:
            yield True
            return
        deadline = time.monotonic() + timeout
        while self.used and self.used + size > self.limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield False
                return
            self.released.clear()
            self.released.wait(remaining)
        self.used += size
        try:
            yield True
        finally:
            self.used -= size
            self.released.set()
