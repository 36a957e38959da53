"""The worker's background thread: long CPU-bound work (a gradcheck, an explanation) off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gevent.threadpool import ThreadPool

T = TypeVar("T")


class BackgroundThread:
    """One native thread per worker process, made in the worker (after fork), on its event loop's thread.

    :meth:`run` waits for the work without blocking the event loop, which keeps answering its other
    connections meanwhile (NumPy's matrix products release the GIL). One thread, so such work runs one
    at a time per worker, as it did inline: several at once only fought over the same core (16
    concurrent gradchecks: 9 instead of 17/s). The worker hands :meth:`run` to the data plane's
    diagnostics (``Diagnostics.run``), so nothing below the HTTP server knows about gevent.
    """

    def __init__(self) -> None:
        # Made here, not on first use: a pool belongs to the hub of the thread that makes it, and a
        # call from that hub's own loop would otherwise run the work inline, on the loop.
        self._pool = ThreadPool(1)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.apply(fn, args, kwargs)
