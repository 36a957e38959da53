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
``MODEL_POLL_SECONDS`` (``service/http_server/worker.py``); models unloaded through the repository API are
shared through a state file (``service/repository/unloaded_models.py``), so all serve the same versions
within one poll interval.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from model.repository import WEIGHTS_FILE, model_dirs, version_dir, versions
from service.repository.model_version import ModelVersion, Signature, load_version
from service.repository.snapshot import Snapshot, Versions
from service.repository.unloaded_models import UnloadedModels
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
        self.unloaded = UnloadedModels(state_file)
        self.snapshot = Snapshot()

    def load_all(self) -> ModelRegistry:
        """The first scan, at start: every file present is read, settled or not (a copy still
        under way then fails validation, and is read again once its file changes)."""
        self.refresh(settle=False)
        return self

    def refresh(self, settle: bool = True) -> bool:
        """Scan the repository and swap in what serves now; True when anything changed."""
        old = self.snapshot
        unloaded = frozenset(self.unloaded.read())
        if not self.root.is_dir():
            error = "the model directory (MODEL_DIR) does not exist"  # its path is the operator's, in the log
            if old.scan_error != error:
                log.error("model directory %s does not exist", self.root)
            self.snapshot = Snapshot(scan_error=error, unloaded=unloaded)
            return old.scan_error != error
        serving: dict[str, Versions] = {}
        failed: dict[str, Versions] = {}
        policies: dict[str, str] = {}
        for model_dir in model_dirs(self.root):
            name = model_dir.name
            if name in unloaded:
                continue
            policy = model_policy(model_dir, self.policy)
            policies[name] = str(policy)
            found = self.settled_versions(model_dir, self.settle_seconds if settle else 0.0)
            serving[name], failed[name] = {}, {}
            for version in policy.candidates(list(found)):
                entry = self.entry(old, name, version, found[version])
                (serving if entry.ready else failed)[name][version] = entry
                if policy.done(len(serving[name])):
                    break
        new = Snapshot(serving, failed, policies, unloaded)
        changed = new.signatures() != old.signatures()
        self.snapshot = new  # one assignment: a request sees the old snapshot or the new, never half
        if changed:
            log.info("serving %s", {name: sorted(vs) for name, vs in serving.items()})
        return changed

    def settled_versions(self, model_dir: Path, settle_seconds: float) -> dict[int, Signature]:
        """Numbered version directories whose weights file has settled -> the file's signature."""
        out: dict[int, Signature] = {}
        now = time.time()
        for version in versions(model_dir):
            try:
                st = (model_dir / str(version) / WEIGHTS_FILE).stat()
            except OSError:
                continue  # no weights file (yet)
            if now - st.st_mtime < settle_seconds:
                continue  # still being written, perhaps: the next scan looks again
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
        """Mark a model unloaded (or not) for every process; this one rescans at once."""
        self.unloaded.mark(name, unloaded)
        self.refresh()

    def state_changed(self) -> bool:
        """Whether another process changed the shared state since the last call (then rescan)."""
        return self.unloaded.changed()
