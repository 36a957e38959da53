"""Segment: one open file of a journal, written by this process only, never past its claim."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path


class Segment:
    """A new segment file, created and locked (``LOCK_EX`` for as long as it is open: it is live).

    Not thread-safe: its journal calls it under the journal's own lock.

    Parameters
    ----------
    directory : Path
        Where the file is made (``O_EXCL``: a name is never reused).
    name : str
        Its file name, which ends in ``claim`` (``budget.segment_claim``).
    claim : int
        The bytes it may grow to.

    Raises
    ------
    OSError
        The file cannot be created or locked.
    """

    def __init__(self, directory: Path, name: str, claim: int) -> None:
        self.directory, self.name, self.claim = directory, name, claim
        self.written = 0
        self._dirty = False
        self._entry_synced = False  # a new file's name must reach the disk as well as its bytes
        # read and write: abandon() reads back what a failed write left
        fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o666)
        try:
            # A new file, but someone's usage() may be looking at it this very moment (it takes no
            # budget lock): wait for that, it lasts a few system calls.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd

    def in_place(self) -> bool:
        """Whether its name still names this file: an operator may move a segment away at any time,
        and lines written to a file no longer in the directory (or unlinked, moved to another disk)
        would be fsynced, answered as stored, and never seen again."""
        try:
            there = os.stat(self.directory / self.name)
        except OSError:
            return False
        mine = os.fstat(self.fd)
        return (there.st_ino, there.st_dev) == (mine.st_ino, mine.st_dev)

    @property
    def room(self) -> int:
        """Bytes left of the claim."""
        return self.claim - self.written

    def write(self, data: bytes) -> None:
        """One ``write(2)`` of ``data``; a short write is an ``OSError`` (ENOSPC) like a refused one."""
        n = os.write(self.fd, data)
        if n != len(data):
            raise OSError(errno.ENOSPC, f"short write: {n} of {len(data)} bytes")
        self.written += n
        self._dirty = True

    def sync(self) -> None:
        """``fsync`` its bytes, and once its directory entry."""
        if self._dirty:
            os.fsync(self.fd)
            self._dirty = False
        if not self._entry_synced:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._entry_synced = True

    def close(self) -> None:
        """Synced, then closed: its lock released, so from now on it counts by its size."""
        try:
            self.sync()
        finally:
            os.close(self.fd)

    def abandon(self) -> None:
        """Cut back to ``written`` (whole lines: a failed write's part goes) and closed, errors ignored;
        one that never held a byte is removed (a disk refusing every write left one empty file a second,
        for good). One whose bytes were on it -- written, then their fsync failed -- is cut back to
        nothing but kept: another process may have read them, and its index forgets them only when it
        finds the file shorter (a file gone is one an operator moved away, whose entries stay known)."""
        if self.written == 0:
            with contextlib.suppress(OSError):
                size = os.fstat(self.fd).st_size
                if size == 0 or b"\n" not in os.pread(self.fd, size, 0):  # no whole line: none was read
                    os.unlink(self.directory / self.name)  # still under its lock: no one counts it meanwhile
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, self.written)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def leave_to_parent(self) -> None:
        """In a forked child: close this copy of the parent's descriptor (which releases no lock while
        the parent holds its own)."""
        os.close(self.fd)
