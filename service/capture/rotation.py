"""Rotation: which segment a journal writes now, when it claims the next, and how much it claims.

A journal writes one segment at a time. When a write does not fit what is left of it, the segment is
closed and a new one claimed under the directory's budget lock (``budget.py``). Claims start small
(``MIN_SEGMENT``) and double up to the journal's ``segment_bytes``: a live segment reserves its whole
claim, so a process that writes little (a gRPC process nobody calls much) holds little of the budget.
While the budget is full, or after the disk refused a write, no new segment is tried for
``RECHECK_SECONDS``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import time

from service.capture.budget import SUFFIX, DirectoryBudget
from service.capture.segment import Segment

RECHECK_SECONDS = 1.0  # while full (or failing) the directory is looked at again at most this often
MIN_SEGMENT = 64 * 1024
MAX_SEGMENT = 16 * 1024 * 1024
CLAIM_SHARE = 4  # a claim takes at most 1/CLAIM_SHARE of the free budget

log = logging.getLogger(__name__)


def default_segment_bytes(max_bytes: int) -> int:
    """A sixteenth of the budget, within 64 KiB .. 16 MiB, and never more than the budget."""
    return min(max_bytes, max(MIN_SEGMENT, min(MAX_SEGMENT, max_bytes // 16)))


def host_name() -> str:
    """This host's name as segment file names spell it."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:63] or "host"


class CaptureWriteError(OSError):
    """The disk refused a write (full file system, I/O error, volume gone read-only).

    Whatever part of the write landed was truncated away and the segment abandoned, so the files
    still hold whole lines only; the journal then refuses writes with this error for
    ``RECHECK_SECONDS`` before trying a fresh segment. ``written`` is how many of the records given
    to ``Journal.append_records`` were written before it.
    """

    def __init__(self, message: str, cause: OSError | None = None, written: int = 0) -> None:
        super().__init__(cause.errno if cause is not None else errno.EIO, message)
        self.written = written


class Rotation:
    """One journal's current segment and its claims. Not thread-safe: the journal holds its lock.

    Parameters
    ----------
    budget : DirectoryBudget
        The directory's shared budget.
    host : str
        This host's name as the budget's probe file spelled it (:func:`host_name`).
    kind : str
        The first field of the segments' file names.
    max_bytes, segment_bytes : int
        The directory's budget, and the largest claim (a record larger than that claims its size).
    """

    def __init__(self, budget: DirectoryBudget, host: str, kind: str, max_bytes: int, segment_bytes: int) -> None:
        self.budget, self.host, self.kind = budget, host, kind
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.segment: Segment | None = None  # the one being written, if any
        self.error: OSError | None = None  # what the disk last refused, while its wait lasts
        self._seq = 0
        self._next_claim = min(segment_bytes, MIN_SEGMENT)
        self._full_until = 0.0

    def room_for(self, size: int) -> bool:
        """Whether ``size`` bytes fit the current segment, after claiming a new one if they do not.

        Raises
        ------
        CaptureWriteError
            The disk refused closing the old segment or creating the new one (the segment is abandoned),
            or did within the last ``RECHECK_SECONDS``.
        """
        self.check_in_place()
        if self.segment is not None and size <= self.segment.room:
            return True
        if size > self.max_bytes:
            return False
        if time.monotonic() < self._full_until:
            if self.error is not None:
                raise CaptureWriteError(f"capture directory {self.budget.directory}: still failing: {self.error}",
                                        self.error)
            return False
        try:
            self.close_segment()
            return self._claim(size)
        except OSError as e:
            self.fail(e)
            raise CaptureWriteError(f"capture directory {self.budget.directory}: cannot rotate its segment: {e}",
                                    e) from e

    def waiting(self) -> bool:
        """Whether a new claim would be refused without a look (a full budget or a refusing disk, within
        its wait), with no current segment to write meanwhile."""
        return (self.segment is None or self.segment.room <= 0) and time.monotonic() < self._full_until

    def check_in_place(self) -> None:
        """Let go of a segment that was moved away or removed (the next write claims a new one)."""
        if self.segment is not None and not self.segment.in_place():
            log.warning("capture journal %s: segment %s was moved away; writing a new one", self.budget.directory,
                        self.segment.name)
            segment, self.segment = self.segment, None
            with contextlib.suppress(OSError):
                segment.close()

    def _claim(self, size: int) -> bool:
        with self.budget.locked():
            used, _ = self.scan(recover=True)
            free = self.max_bytes - used
            if size > free:
                self._full_until = time.monotonic() + RECHECK_SECONDS
                self.error = None
                return False
            # the budget's last bytes too, not only whole segments; but at most a quarter of what is free,
            # so that on a small budget (a 64 KiB feedback folder) one process's open segment never
            # holds all of it while the others find no room
            claim = max(size, min(self._next_claim, free // CLAIM_SHARE))
            self._next_claim = min(self.segment_bytes, 2 * self._next_claim)
            self._seq += 1
            name = f"{self.kind}-{time.time_ns()}-{self.host}-{os.getpid()}-{self._seq:06d}-{claim}{SUFFIX}"
            self.segment = Segment(self.budget.directory, name, claim)
        self.error = None
        return True

    def scan(self, recover: bool) -> tuple[int, int]:
        """The directory's (bytes used, files), the current segment counted by its claim."""
        segment = self.segment
        return self.budget.scan(recover, segment.name, segment.claim) if segment is not None else \
            self.budget.scan(recover)

    def fail(self, error: OSError) -> None:
        """Abandon the current segment after the disk refused something, cut back to its whole lines."""
        log.warning("capture journal %s: %s", self.budget.directory, error)
        if self.segment is not None:
            self.segment.abandon()
            self.segment = None
        self.error = error
        self._full_until = time.monotonic() + RECHECK_SECONDS

    def close_segment(self) -> None:
        if self.segment is not None:
            segment, self.segment = self.segment, None
            segment.close()

    def close(self) -> None:
        """The current segment closed (as well as the disk lets it) and the budget's lock file too."""
        with contextlib.suppress(OSError):
            self.close_segment()
        self.budget.close()

    def after_fork_in_child(self) -> None:
        """A forked child leaves its parent's segment and lock alone and claims small again."""
        if self.segment is not None:
            self.segment.leave_to_parent()
            self.segment = None
        self._next_claim = min(self.segment_bytes, MIN_SEGMENT)
        try:
            self.budget.reopen_after_fork()
        except OSError as e:  # the directory gone since: this child's appends fail (and are counted) for good
            log.warning("capture journal %s: %s", self.budget.directory, e)
            self.error, self._full_until = e, float("inf")
