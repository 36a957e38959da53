"""CrossProcessSemaphore: at most N holders at once, across every worker process of the server, taken without waiting.

Each slot is a lock file in the server's state directory, held with ``flock`` for as long as the
work runs; the kernel releases it if the process dies, so a killed worker never leaks a slot.
Without a directory (one process: tests, a development server) a semaphore does the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path


class CrossProcessSemaphore:
    """At most ``count`` holders at once across the server's processes (one ``flock``ed file each)."""

    def __init__(self, count: int, directory: str | Path | None = None, name: str = "slot") -> None:
        self.count = count
        self.paths = [Path(directory) / f"{name}-{i}.lock" for i in range(count)] if directory else None
        self.semaphore = threading.BoundedSemaphore(count)

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """Yields True while holding a slot, or False at once when all are taken."""
        if self.paths is None:
            got = self.semaphore.acquire(blocking=False)
            try:
                yield got
            finally:
                if got:
                    self.semaphore.release()
            return
        for path in self.paths:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        yield False
