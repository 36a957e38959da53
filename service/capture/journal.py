"""Journal: one process's segment files in a directory whose disk budget every process shares.

Each process appends to segment files of its own (no lock shared on the write path), one
``os.write`` per batch of whole lines, and rotates to a new segment once it has written what it
claimed. The budget holds across processes and restarts without any process knowing the others:

* **Liveness** is an ``flock``: a process holds ``LOCK_EX`` on its open segment for as long as it
  writes it, and the kernel drops the lock when the process dies, ``kill -9`` included (pids are
  reused in containers; locks are not). A segment another process cannot lock is live.
* **Claims.** A segment's name ends in the bytes it may grow to (its claim), so the space used is
  the sum over every ``*.jsonl`` in the directory of its claim if it is live, else its size. A
  process opens a segment only under an exclusive ``flock`` on ``.budget.lock`` and only if that
  sum plus the new claim is within ``max_bytes``; it never writes past the claim. So what is on
  disk never exceeds ``max_bytes``, however many processes write and however often they restart.
* **Recovery.** A process killed inside a write can leave a line cut short. Whoever scans the
  directory under the budget lock truncates any segment that no live process holds back to just
  after its last ``"\\n"``: a record (one line) is whole or absent.

Only ``*.jsonl`` files count; operators free space by moving files out of the directory. Nothing
is written outside it (a read-only container with the directory a mounted volume works). ``flock``
needs a local file system, or NFS with working locks.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import time
import weakref
from pathlib import Path
from typing import Any

KINDS = ("capture", "feedback")
SUFFIX = ".jsonl"
BUDGET_LOCK = ".budget.lock"
RECHECK_SECONDS = 1.0  # while full (or failing) the directory is looked at again at most this often
MIN_SEGMENT = 64 * 1024
MAX_SEGMENT = 16 * 1024 * 1024
_TAIL_CHUNK = 64 * 1024

log = logging.getLogger(__name__)


class CaptureDirError(RuntimeError):
    """The capture directory cannot be used (missing parent, not a directory, read-only, no ``flock``).

    Raised by :class:`Journal` at start, so the server can refuse to start with ``str(error)``,
    which names the path and the reason.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"capture directory {path}: {reason}")
        self.path, self.reason = str(path), reason


class CaptureWriteError(OSError):
    """The disk refused a write (full file system, I/O error, volume gone read-only).

    Whatever part of the write landed was truncated away and the segment abandoned, so the files
    still hold whole lines only; the journal then refuses writes with this error for
    ``RECHECK_SECONDS`` before trying a fresh segment. ``written`` is how many of the records given
    to :meth:`Journal.append_records` were written before it.
    """

    def __init__(self, message: str, cause: OSError | None = None, written: int = 0) -> None:
        super().__init__(cause.errno if cause is not None else errno.EIO, message)
        self.written = written


def default_segment_bytes(max_bytes: int) -> int:
    """A sixteenth of the budget, within 64 KiB .. 16 MiB, and never more than the budget."""
    return min(max_bytes, max(MIN_SEGMENT, min(MAX_SEGMENT, max_bytes // 16)))


def segment_claim(name: str) -> int | None:
    """The claim encoded in a segment's file name (its last ``-`` field), or None if it has none."""
    field = name[: -len(SUFFIX)].rsplit("-", 1)[-1] if name.endswith(SUFFIX) else ""
    return int(field) if field.isdigit() else None


class Journal:
    """Append-only JSON Lines segments of one kind, written by this process within a shared budget.

    Thread-safe. Appends run on a background thread (``Recorder.flush``) or, for feedback, on the
    request's own (a durable append waits for ``fsync``); none of them ever blocks on another
    process except for the moment a new segment is claimed.

    Parameters
    ----------
    directory : path
        The capture directory (``CAPTURE_DIR``). Created if missing, but not its parents.
    kind : {"capture", "feedback"}
        The first field of this journal's file names.
    max_bytes : int
        The budget of all ``*.jsonl`` files in ``directory``, all processes together (``CAPTURE_MAX_BYTES``).
    segment_bytes : int, optional
        What one segment claims at most; :func:`default_segment_bytes` of ``max_bytes`` by default.
        The first claims are smaller (64 KiB, then doubling), and a record larger than that claims its size.

    Raises
    ------
    CaptureDirError
        The directory cannot be created, written or locked.
    """

    def __init__(self, directory: Path | str, kind: str, max_bytes: int, segment_bytes: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if segment_bytes is not None and segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        self.directory = Path(directory)
        self.kind = kind
        self.max_bytes = max_bytes
        self.segment_bytes = min(max_bytes, segment_bytes or default_segment_bytes(max_bytes))
        # A native lock even under gevent's monkey-patching, which replaces ``_thread.allocate_lock``
        # (threading.Lock) but not the C ``_thread.RLock``: appends run on native threads, where a
        # gevent lock would need a hub of its own.
        self._lock = _thread.RLock()
        self._host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:63] or "host"
        self._seq = 0
        # Claims start small and double up to segment_bytes: a live segment reserves its whole claim,
        # so a process that captures little (a gRPC process nobody calls much) holds little of the budget.
        self._next_claim = min(self.segment_bytes, MIN_SEGMENT)
        self._closed = False
        self._written_total = 0
        self._clean: dict[str, tuple[int, int]] = {}  # dead segments seen whole: name -> (size, mtime_ns)
        self._reset_segment()
        self._full_until = 0.0
        self._error: OSError | None = None
        self._budget_fd = self._open_directory()
        try:
            with self._budget_locked():
                self._scan(recover=True)
        except OSError as e:
            os.close(self._budget_fd)
            raise CaptureDirError(self.directory, f"cannot be read: {e.strerror or e}") from None
        reset_after_fork(self)

    # -- public -------------------------------------------------------------------------------------

    def append(self, lines: bytes, durable: bool = False) -> bool:
        """Append whole lines (``lines`` ends in ``"\\n"``) with one write, all of them or none.

        Returns False, having written nothing, when no claim fits the budget; the caller counts the
        drop. ``durable`` waits for ``fsync`` before returning (feedback).

        Raises
        ------
        CaptureWriteError
            The disk refused the write (nothing of it is left in the file).
        """
        if not lines.endswith(b"\n"):
            raise ValueError("a journal appends whole lines: the bytes must end in a newline")
        with self._lock:
            self._check_open()
            if not self._room_for(len(lines)):
                return False
            self._write(lines, 0)
            if durable:
                try:
                    self._sync()
                except OSError as e:  # written, maybe not to the disk: cut off and reported as not written
                    self._written -= len(lines)
                    self._written_total -= len(lines)
                    self._fail(e)
                    raise CaptureWriteError(f"capture directory {self.directory}: fsync failed: {e}", e) from e
            return True

    def append_records(self, records: list[bytes]) -> int:
        """Append records (each whole lines) in order, in as few writes as the segments allow.

        Returns how many were written: a prefix of ``records``. The rest did not fit the budget.

        Raises
        ------
        CaptureWriteError
            The disk refused a write; its ``written`` says how many records were written before.
        """
        if not all(record.endswith(b"\n") for record in records):
            raise ValueError("a journal appends whole lines: every record must end in a newline")
        with self._lock:
            self._check_open()
            done = 0
            while done < len(records):
                room = self._claim - self._written if self._fd is not None else 0
                end, size = done, 0
                while end < len(records) and size + len(records[end]) <= room:
                    size += len(records[end])
                    end += 1
                if end == done:  # not even the next one fits what is left: a new segment for it
                    if not self._room_for(len(records[done])):
                        break
                    continue
                self._write(b"".join(records[done:end]), done)
                done = end
            return done

    def sync(self) -> None:
        """``fsync`` what this journal wrote to its current segment (and the segment's directory entry)."""
        with self._lock:
            if not self._closed:
                try:
                    self._sync()
                except OSError as e:
                    raise CaptureWriteError(f"capture directory {self.directory}: fsync failed: {e}", e) from e

    def close(self) -> None:
        """Close the current segment (fsynced; its lock released, so its space counts by size). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self._close_segment()
            if self._budget_fd >= 0:
                os.close(self._budget_fd)

    def usage(self) -> dict[str, Any]:
        """What the directory holds against the budget, for ``GET /models`` and metrics.

        ``used_bytes`` counts live segments by their claim (as claiming does); ``written_bytes`` is
        what this journal wrote since it started; ``files`` counts ``*.jsonl`` files. Read without the
        budget lock, so it may be a moment out of date.
        """
        with self._lock:
            used, files = self._scan(recover=False)
            return {"directory": str(self.directory), "max_bytes": self.max_bytes, "used_bytes": used,
                    "files": files, "written_bytes": self._written_total, "segment_bytes": self.segment_bytes,
                    "segment": self._name}

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def segment(self) -> Path | None:
        """The segment being written, if any."""
        return self.directory / self._name if self._name else None

    # -- start and fork -----------------------------------------------------------------------------

    def _open_directory(self) -> int:
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
            probe = directory / f".probe-{self._host}-{os.getpid()}-{time.time_ns()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            probe.unlink()
        except OSError as e:
            os.close(fd)
            raise CaptureDirError(directory, f"cannot be written or locked: {e.strerror or e}") from None
        return fd

    def _after_fork_in_child(self) -> None:
        # A forked child shares its parent's open file descriptions, and so its parent's locks: it
        # must neither write the parent's segment nor take the parent's budget lock as its own.
        self._lock = _thread.RLock()  # the parent's may have been held by a thread that is not here
        if self._closed:
            return
        if self._fd is not None:
            os.close(self._fd)  # closing a copy releases no lock while the parent holds its own
        self._reset_segment()
        self._written_total = 0
        self._next_claim = min(self.segment_bytes, MIN_SEGMENT)
        os.close(self._budget_fd)
        try:
            self._budget_fd = os.open(self.directory / BUDGET_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:  # the directory gone since: this child's appends fail (and are counted) for good
            log.warning("capture journal %s: %s", self.directory, e)
            self._budget_fd = -1
            self._error, self._full_until = e, float("inf")

    # -- segments -----------------------------------------------------------------------------------

    def _reset_segment(self) -> None:
        self._fd: int | None = None
        self._name: str | None = None
        self._claim = 0
        self._written = 0
        self._dirty = False
        self._entry_synced = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("append to a closed journal")

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` bytes fit the current segment, after claiming a new one if they do not."""
        if self._fd is not None and self._written + size <= self._claim:
            return True
        if size > self.max_bytes:
            return False
        if time.monotonic() < self._full_until:
            if self._error is not None:
                raise CaptureWriteError(f"capture directory {self.directory}: still failing: {self._error}",
                                        self._error)
            return False
        try:
            self._close_segment()
            return self._claim_segment(size)
        except OSError as e:
            self._fail(e)
            raise CaptureWriteError(f"capture directory {self.directory}: cannot rotate its segment: {e}", e) from e

    def _claim_segment(self, size: int) -> bool:
        with self._budget_locked():
            used, _ = self._scan(recover=True)
            free = self.max_bytes - used
            if size > free:
                self._full_until = time.monotonic() + RECHECK_SECONDS
                self._error = None
                return False
            # the budget's last bytes too, not only whole segments
            claim = max(size, min(self._next_claim, free))
            self._next_claim = min(self.segment_bytes, 2 * self._next_claim)
            self._seq += 1
            name = f"{self.kind}-{time.time_ns()}-{self._host}-{os.getpid()}-{self._seq:06d}-{claim}{SUFFIX}"
            fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                         0o666)
            try:
                # A new file, but someone's usage() may be looking at it this very moment (it takes
                # no budget lock): wait for that, it lasts a few system calls.
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                os.close(fd)
                raise
        self._fd, self._name, self._claim, self._written = fd, name, claim, 0
        self._dirty, self._entry_synced, self._error = False, False, None
        return True

    def _write(self, data: bytes, records_before: int) -> None:
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                raise OSError(errno.ENOSPC, f"short write: {n} of {len(data)} bytes")
        except OSError as e:
            self._fail(e)
            raise CaptureWriteError(f"capture directory {self.directory}: write to {self._name} failed: {e}", e,
                                    records_before) from e
        self._written += n
        self._written_total += n
        self._dirty = True

    def _fail(self, error: OSError) -> None:
        """Abandon the current segment after the disk refused something, cut back to its whole lines."""
        log.warning("capture journal %s: %s", self.directory, error)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._written)
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._reset_segment()
        self._error = error
        self._full_until = time.monotonic() + RECHECK_SECONDS

    def _sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        if not self._entry_synced:  # a new file's name must reach the disk as well as its bytes
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._entry_synced = True

    def _close_segment(self) -> None:
        if self._fd is None:
            return
        try:
            self._sync()
        finally:
            os.close(self._fd)  # releases its lock: from now on it counts by its size
            self._reset_segment()

    # -- the directory ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _budget_locked(self):
        fcntl.flock(self._budget_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._budget_fd, fcntl.LOCK_UN)

    def _scan(self, recover: bool) -> tuple[int, int]:
        """Bytes used against the budget and the number of ``*.jsonl`` files; with ``recover`` (only
        under the budget lock) a dead segment's cut-short last line is truncated away."""
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
                if name == self._name:
                    used += max(self._claim, stat.st_size)
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


def reset_after_fork(owner: Any) -> None:
    """Call ``owner._after_fork_in_child()`` in every forked child (gunicorn forks its workers after
    loading the app), without keeping ``owner`` alive."""
    ref = weakref.ref(owner)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=after_in_child)
