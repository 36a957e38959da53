"""Journal: one process's segment files in a directory whose disk budget every process shares.

Each process appends to segment files of its own (no lock shared on the write path), one
``os.write`` per batch of whole lines, and rotates to a new segment once it has written what it
claimed. A segment is claimed under the directory's budget lock, only if every segment's claim or
size plus the new claim is within ``max_bytes`` (``budget.py``: liveness by ``flock``, claims in
file names, recovery of lines cut short by a killed process); it is never written past its claim.
So what is on disk never exceeds ``max_bytes``, however many processes write and however often
they restart. Nothing is written outside the directory (a read-only container with the directory
a mounted volume works).
"""

from __future__ import annotations

import _thread
import os
import weakref
from pathlib import Path
from typing import Any

from service.capture.budget import BUDGET_LOCK, CaptureDirError, DirectoryBudget, segment_claim
from service.capture.rotation import RECHECK_SECONDS, CaptureWriteError, Rotation, default_segment_bytes, host_name

__all__ = ["BUDGET_LOCK", "RECHECK_SECONDS", "CaptureDirError", "CaptureWriteError", "Journal", "default_segment_bytes",
           "segment_claim"]

KINDS = ("capture", "feedback")


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
        self._closed = False
        self._written_total = 0
        host = host_name()
        budget = DirectoryBudget(self.directory, host)
        self._rotation = Rotation(budget, host, kind, max_bytes, self.segment_bytes)
        try:
            with budget.locked():
                budget.scan(recover=True)
        except OSError as e:
            budget.close()
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
            if not self._rotation.room_for(len(lines)):
                return False
            self._write(lines, 0)
            if durable:
                segment = self._rotation.segment
                try:
                    segment.sync()
                except OSError as e:  # written, maybe not to the disk: cut off and reported as not written
                    segment.written -= len(lines)
                    self._written_total -= len(lines)
                    self._rotation.fail(e)
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
            self._rotation.check_in_place()
            done = 0
            while done < len(records):
                room = self._rotation.segment.room if self._rotation.segment is not None else 0
                end, size = done, 0
                while end < len(records) and size + len(records[end]) <= room:
                    size += len(records[end])
                    end += 1
                if end == done:  # not even the next one fits what is left: a new segment for it
                    try:
                        if not self._rotation.room_for(len(records[done])):
                            break
                    except CaptureWriteError as e:
                        e.written = done  # those went to the segment just closed
                        raise
                    continue
                self._write(b"".join(records[done:end]), done)
                done = end
            return done

    def refusing(self) -> bool:
        """Whether an append of a record that does not fit the current segment would be refused now
        without a look (a full budget or a refusing disk, within its ``RECHECK_SECONDS``)."""
        return self._rotation.waiting()

    def failing(self) -> bool:
        """Whether that refusal is the disk's (else the budget's)."""
        return self._rotation.error is not None

    def sync(self) -> None:
        """``fsync`` what this journal wrote to its current segment (and the segment's directory entry)."""
        with self._lock:
            if not self._closed and self._rotation.segment is not None:
                try:
                    self._rotation.segment.sync()
                except OSError as e:
                    raise CaptureWriteError(f"capture directory {self.directory}: fsync failed: {e}", e) from e

    def close(self) -> None:
        """Close the current segment (fsynced; its lock released, so its space counts by size). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._rotation.close()

    def usage(self) -> dict[str, Any]:
        """What the directory holds against the budget, for ``GET /models`` and metrics.

        ``used_bytes`` counts live segments by their claim (as claiming does); ``written_bytes`` is
        what this journal wrote since it started; ``files`` counts ``*.jsonl`` files. Read without the
        budget lock, so it may be a moment out of date.
        """
        with self._lock:
            used, files = self._rotation.scan(recover=False)
            segment = self._rotation.segment
            return {"directory": str(self.directory), "max_bytes": self.max_bytes, "used_bytes": used,
                    "files": files, "written_bytes": self._written_total, "segment_bytes": self.segment_bytes,
                    "segment": segment.name if segment is not None else None}

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def segment(self) -> Path | None:
        """The segment being written, if any."""
        segment = self._rotation.segment
        return self.directory / segment.name if segment is not None else None

    # -- internals ----------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # A forked child shares its parent's open file descriptions, and so its parent's locks: it
        # must neither write the parent's segment nor take the parent's budget lock as its own.
        self._lock = _thread.RLock()  # the parent's may have been held by a thread that is not here
        if not self._closed:
            self._written_total = 0
            self._rotation.after_fork_in_child()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("append to a closed journal")

    def _write(self, data: bytes, records_before: int) -> None:
        segment = self._rotation.segment
        try:
            segment.write(data)
        except OSError as e:
            self._rotation.fail(e)
            raise CaptureWriteError(f"capture directory {self.directory}: write to {segment.name} failed: {e}", e,
                                    records_before) from e
        self._written_total += len(data)


def reset_after_fork(owner: Any) -> None:
    """Call ``owner._after_fork_in_child()`` in every forked child (gunicorn forks its workers after
    loading the app), without keeping ``owner`` alive."""
    ref = weakref.ref(owner)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=after_in_child)
