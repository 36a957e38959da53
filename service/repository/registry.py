"""The model registry: keeps what serves in step with the disk. No Flask here.

A model repository is ``<root>/<name>/<version>/model.npz`` with numeric versions. A scan
(:meth:`ModelRegistry.refresh`) lists what is on disk, applies each model's version policy
(``service/repository/version_policy.py``), loads, validates and warms up what is new or changed
(``service/repository/model_version.py``), and swaps the result in as one immutable snapshot
(``service/repository/snapshot.py``, which answers every question about what serves): a request holds the
version it started with, and the unchanged versions are reused, not reloaded. A version that fails
to load is never served; it is kept as *failed* with its reason (readiness and the model metadata
report it) until its file changes, and the version before it keeps serving.

A weights file is read only once it has settled: its modification time at least ``settle_seconds``
in the past, so a copy still being written (``cp``) is left for a later scan. The training CLI
writes to a temporary name and renames it into place, so its versions are complete at once.

Each gunicorn worker (and gRPC process) keeps its own registry and rescans every
``MODEL_POLL_SECONDS`` (``service/http_server/worker.py``); models unloaded and rollouts set through the
repository API are shared through a state file (``service/repository/shared_state.py``), and rollout
files are read at each scan (``service/repository/rollout.py``), so all serve the same versions, routed
the same way, within one poll interval.
"""

from __future__ import annotations

import _thread
import ctypes
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.repository import WEIGHTS_FILE, model_dirs, version_dir, versions
from service.repository import rollout as rollouts
from service.repository.model_version import ModelVersion, Signature, load_version
from service.repository.rollout import Rollout, RolloutFiles
from service.repository.shared_state import SharedState
from service.repository.snapshot import Snapshot, Versions
from service.repository.version_policy import VersionPolicy, model_policy

log = logging.getLogger("service.repository.registry")


class ModelRegistry:
    """The models under ``root`` and the versions of each that serve: ``snapshot``, rescanned on demand."""

    # Whether this process counts load failures in /metrics: the gRPC processes load the same files as
    # the HTTP workers and set it False, so a bad file is counted once, not once per process kind.
    counts_failures = True

    def __init__(self, root: str | Path, policy: VersionPolicy | None = None, settle_seconds: float = 0.0,
                 state_file: str | Path | None = None) -> None:
        self.root = Path(root)
        self.policy = policy or VersionPolicy()
        self.settle_seconds = settle_seconds
        self.shared = SharedState(state_file)
        self.rollout_files = RolloutFiles()
        self.snapshot = Snapshot()
        # Scans from more than one thread (a gRPC process: its watcher, a repository call, the rollout
        # guard) take turns; a native lock, as under gevent only the event loop's thread scans anyway.
        self._scanning = _thread.RLock()
        # run after every scan, whoever scanned (the watcher, a repository call, a rollout change): what
        # mirrors the snapshot elsewhere, as a gRPC process's health service does, changes with it
        self.on_refresh: list[Callable[[], None]] = []
        self._record_error: str | None = None  # why the last record for the others failed (logged once)

    def load_all(self) -> ModelRegistry:
        """The first scan, at start: every file present is read, settled or not (a copy still
        under way then fails validation, and is read again once its file changes)."""
        self.refresh(settle=False)
        return self

    def refresh(self, settle: bool = True, eager: str | None = None) -> bool:
        """Scan the repository and swap in what serves now; True when anything changed. ``eager``: a
        model whose files are read settled or not (the repository API's load: they are meant to be ready)."""
        with self._scanning:
            before = serving_entries(self.snapshot)
            changed = self.scan(settle, eager)
            if before - serving_entries(self.snapshot):  # versions gone: their memory freed by now
                release_freed_memory()
            for hook in self.on_refresh:
                try:
                    hook()
                except Exception:  # the scan's change stands: a hook's failure must not undo or hide it
                    log.exception("a hook after the model repository scan failed")
            return changed

    def scan(self, settle: bool, eager: str | None = None) -> bool:
        old = self.snapshot
        state = self.shared.read()
        unloaded = frozenset(state["unloaded"])
        if not self.root.is_dir():
            error = "the model directory (MODEL_DIR) does not exist"  # its path is the operator's, in the log
            if old.scan_error != error:
                log.error("model directory %s does not exist", self.root)
            self.snapshot = Snapshot(scan_error=error, unloaded=unloaded)
            return old.scan_error != error
        serving: dict[str, Versions] = {}
        failed: dict[str, Versions] = {}
        policies: dict[str, str] = {}
        in_force: dict[str, Rollout] = {}
        on_disk: set[str] = set()
        for model_dir in model_dirs(self.root):
            name = model_dir.name
            on_disk.add(name)
            if name in unloaded:
                continue
            policy = model_policy(model_dir, self.policy)
            policies[name] = str(policy)
            rollout = self.rollout_of(name, model_dir, state["rollouts"].get(name), state["files"].get(name))
            known = {v: e.signature for table in (old.serving, old.failed) for v, e in table.get(name, {}).items()}
            found = self.settled_versions(model_dir, self.settle_seconds if settle and name != eager else 0.0, known)
            serving[name], failed[name] = {}, {}
            for version in policy.candidates(list(found)):
                entry = self.entry(old, name, version, found[version])
                (serving if entry.ready else failed)[name][version] = entry
                if policy.done(len(serving[name])):
                    break
            if rollout is not None:
                in_force[name] = rollout
                for version in sorted(rollout.spec.versions() & set(found) - set(serving[name]) - set(failed[name])):
                    entry = self.entry(old, name, version, found[version])  # named by the rollout: loaded too
                    (serving if entry.ready else failed)[name][version] = entry
        errors = {name: why for name, why in self.rollout_files.errors.items() if name in policies}
        # an unloaded model whose directory is gone is no model at all (404, not in the index); its mark
        # stays in the shared state, so a directory put back comes back unloaded, as it was left
        new = Snapshot(serving, failed, policies, unloaded & on_disk, rollouts=in_force, rollout_errors=errors)
        changed = new.signatures() != old.signatures()
        self.snapshot = new  # one assignment: a request sees the old snapshot or the new, never half
        if changed:
            log.info("serving %s", {name: sorted(vs) for name, vs in serving.items()})
        return changed

    def rollout_of(self, name: str, model_dir: Path, record: object, kept: object = None,
                   write: Callable[[Callable[[dict], Any]], Any] | None = None) -> Rollout | None:
        """The rollout in force for a model: the newer of its file's and the API's (shared state).
        ``write`` changes the shared state (default: under its lock; inside :meth:`change_rollout`,
        which holds it already, the state being changed)."""
        file = self.agreed_file_rollout(name, self.rollout_files.read(name, model_dir), kept,
                                        write or self.record_for_others)
        api, api_changed_at = None, None
        if record is not None:
            try:
                api, api_changed_at = rollouts.from_record(record), float(record["changed_at"])
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring the repository state's rollout of %s: %s", name, exc)
        return rollouts.in_force(api, api_changed_at, file)

    def agreed_file_rollout(self, name: str, file: Rollout | None, kept: object,
                            write: Callable[[Callable[[dict], Any]], Any]) -> Rollout | None:
        """The file's rollout as every process of this server has it. A good file's is recorded in the
        shared state (``kept``: the record there); while the file is bad, that record -- the last good
        file any process read -- is in force, not each process's own memory of one: a process started
        after the file went bad (a restarted gRPC process) would otherwise route by none."""
        files = self.rollout_files
        if name not in files.seen:  # no file: nothing to keep
            if kept is not None:
                write(lambda state: state["files"].pop(name, None))
            return None
        if name not in files.errors:  # a good file: record it, once, for the others
            record = rollouts.to_record(file, file.changed_at) if file is not None else None
            if record is not None and record != kept:
                write(lambda state: state["files"].__setitem__(name, record))
            return file
        if kept is not None:
            try:
                agreed = rollouts.from_record(kept)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring the repository state's last good rollout file of %s: %s", name, exc)
            else:
                if agreed is not None:
                    files.errors[name] = files.errors[name].replace("(no rollout from it)",
                                                                    "(keeping the rollout before it)")
                return agreed
        return file

    def record_for_others(self, change: Callable[[dict], Any]) -> None:
        """``shared.update(change)`` for a scan, whose failure (a full disk, a read-only ``STATE_DIR``) is
        logged, once while it lasts, and not raised: the file's rollout is in force in this process
        anyway, and a scan that raised loaded nothing new, in any model, and stopped a process's start."""
        try:
            self.shared.update(change)
        except OSError as exc:
            if self._record_error != str(exc):
                log.error("could not record a rollout file's rollout in the repository state (%s); this "
                          "process follows the file, another may not until it can be written", exc)
            self._record_error = str(exc)
        else:
            self._record_error = None

    def settled_versions(self, model_dir: Path, settle_seconds: float,
                         known: dict[int, Signature] | None = None) -> dict[int, Signature]:
        """Numbered version directories whose weights file has settled -> the file's signature. A version
        loaded already (``known``: its signature then) whose file is being replaced keeps that signature,
        so it serves on until the new file settles (it was dropped: a lone version left nothing serving)."""
        out: dict[int, Signature] = {}
        known = known or {}
        now = time.time()
        for version in versions(model_dir):
            try:
                st = (model_dir / str(version) / WEIGHTS_FILE).stat()
            except OSError:
                continue  # no weights file (yet)
            if now - st.st_mtime < settle_seconds:  # still being written, perhaps: the next scan looks again
                if version in known:
                    out[version] = known[version]
                continue
            out[version] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    def entry(self, old: Snapshot, name: str, version: int, signature: Signature) -> ModelVersion:
        """The loaded version, reused when its file has not changed, else loaded now."""
        for table in (old.serving, old.failed):
            previous = table.get(name, {}).get(version)
            if previous is not None and previous.signature == signature:
                return previous
        return load_version(name, version, version_dir(self.root, name, version) / WEIGHTS_FILE, signature,
                            self.counts_failures)

    # -- the repository API ----------------------------------------------------------------------
    def set_unloaded(self, name: str, unloaded: bool) -> None:
        """Mark a model unloaded (or not) for every process; this one rescans at once, a model loaded
        with its files read even if just copied (the others read them once they settle)."""
        self.shared.mark_unloaded(name, unloaded)
        self.refresh(eager=None if unloaded else name)

    def change_rollout(self, name: str, change: Callable[[Rollout | None], Rollout | None]) -> Rollout | None:
        """Replace a model's rollout for every process by ``change(the rollout in force)`` (None clears it),
        under the shared state's lock, so concurrent changes lose nothing; this process rescans at once.
        ``change`` may raise (a ServiceError) to refuse, or return the rollout it was given to leave it:
        then nothing is written."""
        model_dir = self.root / name

        def apply(state: dict) -> Rollout | None:
            current = self.rollout_of(name, model_dir, state["rollouts"].get(name), state["files"].get(name),
                                      write=lambda change: change(state))
            new = change(current)
            if new is current:  # nothing to change: nothing written
                return current
            # strictly after both the record and the file it replaces, even on a coarse clock
            stamp = max(time.time(), (current.changed_at if current else 0.0) + 1e-6)
            if new is not None:
                new = Rollout(new.spec, new.source, stamp, new.note, new.since if new.source == "guard" else None)
            state["rollouts"][name] = rollouts.to_record(new, stamp)
            return new

        with self._scanning:
            result = self.shared.update(apply)
            self.refresh()
        return result

    def state_changed(self) -> bool:
        """Whether another process changed the shared state since the last call (then rescan)."""
        return self.shared.changed()


def serving_entries(snapshot: Snapshot) -> set[tuple[str, int, int]]:
    """(model, version, id of its loaded entry) of every version a snapshot serves."""
    return {(name, version, id(entry)) for name, vs in snapshot.serving.items() for version, entry in vs.items()}


def release_freed_memory() -> None:
    """Give the memory of versions no longer served back to the system (glibc's ``malloc_trim``).

    A version's arrays are freed when the last request using it ends, but glibc keeps freed memory
    below its heap top for reuse, so a process's RSS could stay as high as with the versions loaded
    (a reload of three MNIST versions gave back 0.65-0.74 of what they took, depending on what came
    before). A no-op where the C library has no ``malloc_trim``.
    """
    trim = getattr(_PROCESS, "malloc_trim", None)
    if trim is not None:
        trim(0)


# The symbols this process has loaded, libc's among them (dlopen(NULL)): found once, with no search for
# the library (ctypes.util.find_library runs ldconfig in a subprocess, on each call)
_PROCESS = ctypes.CDLL(None)
