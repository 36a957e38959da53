"""Which models the repository API has unloaded, shared by every process of one server. No Flask here.

Each gunicorn worker and gRPC process keeps its own registry; the models unloaded through the
repository API (REST or gRPC) are recorded in one small JSON state file (``$STATE_DIR/repository.json``)
that every process reads at each scan, so all serve the same models within one poll interval (and
within a second, as each checks the file's modification time every second). Without a state file
(in-process use: tests, ``flask run``) the set is kept in memory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("service.repository.registry")


class UnloadedModels:
    """The set of unloaded model names, in the state file or in memory."""

    def __init__(self, state_file: str | Path | None = None) -> None:
        self.state_file = Path(state_file) if state_file else None
        self.names: set[str] = set()  # without a state file, kept here
        self._mtime: int | None = None

    def read(self) -> set[str]:
        if self.state_file is None:
            return set(self.names)
        try:
            return set(json.loads(self.state_file.read_text())["unloaded"])
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring the repository state file %s: %s", self.state_file, exc)
            return set()

    def mark(self, name: str, unloaded: bool) -> None:
        """Mark a model unloaded (or not) for every process.

        The read, change and write of the shared state file hold an exclusive ``flock`` on a lock file
        beside it, so two workers changing it at the same instant cannot lose either change (without
        it, three clients unloading three models at once lost one in 4 rounds of 25). The lock is held
        for a small file's read and write only."""
        if self.state_file is None:
            self.names = self.names | {name} if unloaded else self.names - {name}
            return
        with open(self.state_file.with_name(f".{self.state_file.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            names = self.read()
            names = names | {name} if unloaded else names - {name}
            tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"unloaded": sorted(names)}))
            os.replace(tmp, self.state_file)  # whole or not at all, for the other workers

    def changed(self) -> bool:
        """Whether the state file changed since the last call (a cheap stat, checked every second)."""
        if self.state_file is None:
            return False
        try:
            mtime = self.state_file.stat().st_mtime_ns
        except OSError:
            mtime = None
        changed, self._mtime = mtime != self._mtime, mtime
        return changed
