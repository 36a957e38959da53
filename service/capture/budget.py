"""DirectoryBudget: the disk budget every process writing a capture directory shares, and its recovery.

No process knows the others; the directory and the kernel's locks are the whole protocol:

* **Liveness** is an ``flock``: a process holds ``LOCK_EX`` on its open segment for as long as it
  writes it, and the kernel drops the lock when the process dies, ``kill -9`` included (pids are
  reused in containers; locks are not). A segment another process cannot lock is live.
* **Claims.** A segment's name ends in the bytes it may grow to (its claim), so the space used is
  the sum over every ``*.jsonl`` in the directory of its claim if it is live, else its size. A
  process opens a segment only under an exclusive ``flock`` on ``.budget.lock`` and only if that
  sum plus the new claim is within the budget (``rotation.py`` claims; this module counts).
* **Recovery.** A process killed inside a write can leave a line cut short. Whoever scans the
  directory under the budget lock truncates any segment that no live process holds back to just
  after its last ``"\\n"``: a record (one line) is whole or absent.

Only ``*.jsonl`` files count; operators free space by moving files out of the directory. ``flock``
needs a local file system, or NFS with working locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".jsonl"
BUDGET_LOCK = ".budget.lock"
_TAIL_CHUNK = 64 * 1024

log = logging.getLogger(__name__)


class CaptureDirError(RuntimeError):
    """The capture directory cannot be used (missing parent, not a directory, read-only, no ``flock``).

    Raised when a journal starts, so the server can refuse to start with ``str(error)``, which names
    the path and the reason.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"capture directory {path}: {reason}")
        self.path, self.reason = str(path), reason


def segment_claim(name: str) -> int | None:
    """The claim encoded in a segment's file name (its last ``-`` field), or None if it has none."""
    field = name[: -len(SUFFIX)].rsplit("-", 1)[-1] if name.endswith(SUFFIX) else ""
    return int(field) if field.isdigit() else None


class DirectoryBudget:
    """What a directory's segments use against its budget, counted under the budget lock.

    Not thread-safe: its journal calls it under the journal's own lock.

    Parameters
    ----------
    directory : path
        Created if missing, but not its parents; it must be writable and lockable.
    host : str
        This host's name as segment names spell it (the probe file that proves a segment can be made
        there is named after it, and removed at once).

    Raises
    ------
    CaptureDirError
        The directory cannot be created, written or locked.
    """

    def __init__(self, directory: Path, host: str) -> None:
        self.directory = directory
        self._clean: dict[str, tuple[int, int]] = {}  # dead segments seen whole: name -> (size, mtime_ns)
        self._fd = self._open(host)

    def _open(self, host: str) -> int:
        """The budget lock's descriptor, once the directory proved it can be created in and locked."""
        directory = self.directory
        try:
            directory.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise CaptureDirError(directory, "its parent directory does not exist") from None
        except FileExistsError:
            raise CaptureDirError(directory, "is not a directory") from None
        except OSError as e:
            raise CaptureDirError(directory, f"cannot be created: {e.strerror or e}") from None
        if not directory.is_dir():
            raise CaptureDirError(directory, "is not a directory")
        try:
            fd = os.open(directory / BUDGET_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise CaptureDirError(directory, f"cannot create or open {BUDGET_LOCK}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            # the lock file may predate a read-only mount or a change of owner: prove a segment can be made
            probe = directory / f".probe-{host}-{os.getpid()}-{time.time_ns()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            probe.unlink()
        except OSError as e:
            os.close(fd)
            raise CaptureDirError(directory, f"cannot be written or locked: {e.strerror or e}") from None
        return fd

    def reopen_after_fork(self) -> None:
        """A forked child's own descriptor: it shares its parent's open file description, and so its
        parent's lock, which it must not take for its own.

        Raises
        ------
        OSError
            The lock file cannot be opened any more (the directory gone since).
        """
        os.close(self._fd)
        self._fd = -1
        self._fd = os.open(self.directory / BUDGET_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the budget lock: no other process claims a segment meanwhile."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def scan(self, recover: bool, own: str | None = None, own_claim: int = 0) -> tuple[int, int]:
        """Bytes used against the budget and the number of ``*.jsonl`` files.

        ``own`` is the caller's open segment, counted by ``own_claim`` (or its size, if larger). With
        ``recover`` (only under :meth:`locked`) a dead segment's cut-short last line is truncated away.
        """
        used = files = 0
        seen = set()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(SUFFIX):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # moved away meanwhile
                    continue
                files += 1
                seen.add(name)
                if name == own:
                    used += max(own_claim, stat.st_size)
                elif self._clean.get(name) == (stat.st_size, stat.st_mtime_ns):
                    used += stat.st_size  # dead, seen whole before, unchanged since
                else:
                    used += self._inspect(entry.path, name, stat.st_size, recover)
        if recover:  # forget the segments moved away
            self._clean = {name: known for name, known in self._clean.items() if name in seen}
        return used, files

    def _inspect(self, path: str, name: str, size: int, recover: bool) -> int:
        """The bytes one segment of another process (or a dead one of ours) counts for."""
        try:
            fd = os.open(path, (os.O_RDWR if recover else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError:  # not ours to repair (another owner): counted, never written
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return size
            recover = False
        except OSError:
            return size
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # live: it may grow to its claim
                return max(size, segment_claim(name) or 0)
            size = os.fstat(fd).st_size
            whole = size == 0 or os.pread(fd, 1, size - 1) == b"\n"
            if not whole and recover:
                cut = _after_last_newline(fd, size)
                log.warning("capture journal %s: %s ended in a cut-short line; truncated from %d to %d bytes",
                            self.directory, name, size, cut)
                os.ftruncate(fd, cut)
                os.fsync(fd)
                size, whole = cut, True
            if whole and recover:
                # Only under the budget lock, where no segment is being created: without it this
                # could be a new file its creator has not locked yet, which would pass for dead.
                self._clean[name] = (size, os.fstat(fd).st_mtime_ns)
            return size
        except OSError:
            return size
        finally:
            os.close(fd)  # releases the lock if it was taken


def _after_last_newline(fd: int, size: int) -> int:
    """The offset just after the last ``"\\n"`` of the file (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0

