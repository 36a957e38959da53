"""What the repository API changed, shared by every process of one server. No Flask here.

Each gunicorn worker and gRPC process keeps its own registry; what the repository API (REST or gRPC)
decides -- the models it unloaded, and each model's rollout (``rollout.py``) -- is recorded in one
small JSON state file (``$STATE_DIR/repository.json``) that every process reads at each scan, so all
serve alike within one poll interval (and within a second, as each checks the file's modification
time every second). It also keeps each model's last good ``rollout.json``, so that a bad file leaves
every process, a restarted one too, on the same rollout. Without a state file (in-process use: tests,
``flask run``) it is kept in memory.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("service.repository.registry")

State = dict[str, Any]  # {"unloaded": [names], "rollouts": {name: record}, "files": {name: record}}


def empty() -> State:
    return {"unloaded": [], "rollouts": {}, "files": {}}


class SharedState:
    """The repository API's decisions, in the state file or in memory."""

    def __init__(self, state_file: str | Path | None = None) -> None:
        self.state_file = Path(state_file) if state_file else None
        self.memory: State = empty()  # without a state file, kept here
        self._seen: tuple[int, int] | None = None

    def read(self) -> State:
        if self.state_file is None:
            return copy.deepcopy(self.memory)
        try:
            state = json.loads(self.state_file.read_text())
            if not isinstance(state, dict) or not isinstance(state.get("unloaded", []), list) \
                    or not isinstance(state.get("rollouts", {}), dict) or not isinstance(state.get("files", {}), dict):
                raise ValueError("not a repository state")
        except FileNotFoundError:
            return empty()
        except (OSError, ValueError) as exc:
            log.error("ignoring the repository state file %s: %s", self.state_file, exc)
            return empty()
        return {**empty(), **state}

    def update(self, change: Callable[[State], Any]) -> Any:
        """Apply ``change`` to the state (in place) for every process; returns what ``change`` returns.

        The read, change and write of the shared state file hold an exclusive ``flock`` on a lock file
        beside it, so two workers changing it at the same instant cannot lose either change (without
        it, three clients unloading three models at once lost one in 4 rounds of 25). The lock is held
        for a small file's read and write only."""
        if self.state_file is None:
            state = self.read()
            result = change(state)
            self.memory = state
            return result
        with open(self.state_file.with_name(f".{self.state_file.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            state = self.read()
            result = change(state)
            tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
            try:
                tmp.write_text(json.dumps(state, sort_keys=True))
                os.replace(tmp, self.state_file)  # whole or not at all, for the other workers
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()  # a full disk: no half-written file left beside it
                raise
            return result

    def unloaded(self) -> set[str]:
        return set(self.read()["unloaded"])

    def mark_unloaded(self, name: str, unloaded: bool) -> None:
        """Mark a model unloaded (or not) for every process."""
        def change(state: State) -> None:
            names = set(state["unloaded"])
            state["unloaded"] = sorted(names | {name} if unloaded else names - {name})
        self.update(change)

    def changed(self) -> bool:
        """Whether the state file changed since the last call (a cheap stat, checked every second)."""
        if self.state_file is None:
            return False
        try:
            st = self.state_file.stat()
            # the inode too: each write is a new file renamed into place, so two writes within one tick
            # of a coarse clock still differ
            seen: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            seen = None
        changed, self._seen = seen != self._seen, seen
        return changed
