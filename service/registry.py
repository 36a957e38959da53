"""The model registry: which versions of which models serve, kept in step with the disk. No Flask here.

A model repository is ``<root>/<name>/<version>/model.npz`` with numeric versions. A scan
(:meth:`ModelRegistry.refresh`) lists what is on disk, applies each model's version policy
(``service/policy.py``), loads, validates and warms up what is new or changed, and swaps the result
in as one immutable :class:`Snapshot`: a request holds the version it started with, and the
unchanged versions are reused, not reloaded. A version that fails to load is never served; it is
kept as *failed* with its reason (readiness and the model metadata report it) until its file
changes, and the version before it keeps serving.

A weights file is read only once it has settled: its modification time at least ``settle_seconds``
in the past, so a copy still being written (``cp``) is left for a later scan. The training CLI
writes to a temporary name and renames it into place, so its versions are complete at once.

Each gunicorn worker keeps its own registry and rescans every ``MODEL_POLL_SECONDS``
(``service/worker.py``); models unloaded through the repository API are recorded in a state file
that every worker reads, so all workers serve the same versions within one poll interval.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.io import WeightsFileError, load_model
from model.network import Sequential
from model.repository import WEIGHTS_FILE, model_dirs, version_dir, versions
from service import metrics
from service.errors import not_found, unavailable
from service.policy import VersionPolicy, model_policy

log = logging.getLogger("service.registry")
Signature = tuple[int, int, int]  # (inode, size, mtime_ns) of a weights file


@dataclass
class ModelVersion:
    """One loaded (or failed) version of a model."""

    name: str
    version: int
    signature: Signature | None = None
    network: Sequential | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    loaded_at: str | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.network is not None and self.error is None

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.metadata["input_shape"])

    @property
    def dtype(self) -> np.dtype:
        return self.network.dtype

    @property
    def input_range(self) -> tuple[float, float]:
        lo, hi = self.metadata.get("preprocessing", {}).get("input_range", [-math.inf, math.inf])
        return float(lo), float(hi)

    def info(self) -> dict[str, Any]:
        base: dict[str, Any] = {"version": self.version, "status": "ready" if self.ready else "failed",
                                "error": self.error}
        if self.ready:
            meta = self.metadata
            base.update(input_shape=list(self.input_shape), labels=self.labels,
                        architecture=meta["architecture"], parameter_count=self.network.num_params,
                        metrics=meta.get("metrics"), training=meta.get("training"),
                        preprocessing=meta.get("preprocessing"), sha256=self.sha256,
                        created_at=meta.get("created_at"), loaded_at=self.loaded_at)
        return base


@dataclass(frozen=True)
class Snapshot:
    """What serves, swapped in whole: model -> version -> entry, ready ones and failed ones apart."""

    serving: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    failed: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    unloaded: frozenset[str] = frozenset()
    scan_error: str | None = None


class ModelRegistry:
    """The models under ``root`` and the versions of each that serve."""

    # Whether this process counts load failures in /metrics: the gRPC processes load the same files as
    # the HTTP workers and set it False, so a bad file is counted once, not once per process kind.
    counts_failures = True

    def __init__(self, root: str | Path, policy: VersionPolicy | None = None, settle_seconds: float = 0.0,
                 state_file: str | Path | None = None) -> None:
        self.root = Path(root)
        self.policy = policy or VersionPolicy()
        self.settle_seconds = settle_seconds
        self.state_file = Path(state_file) if state_file else None
        self.snapshot = Snapshot()
        self.unloaded: set[str] = set()  # without a state file (in-process use), kept here
        self._state_mtime: int | None = None

    @property
    def models(self) -> dict[str, dict[int, ModelVersion]]:
        """Every model on disk and not unloaded -> its versions that serve."""
        snap = self.snapshot
        return {name: snap.serving.get(name, {}) for name in sorted(set(snap.serving) | set(snap.failed))}

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model on record (serving or failed): cheap, for every request's metrics."""
        snap = self.snapshot
        return name in snap.serving or name in snap.failed

    # -- scanning and loading --------------------------------------------------------------------
    def load_all(self) -> ModelRegistry:
        """The first scan, at start: every file present is read, settled or not (a copy still
        under way then fails validation, and is read again once its file changes)."""
        self.refresh(settle=False)
        return self

    def refresh(self, settle: bool = True) -> bool:
        """Scan the repository and swap in what serves now; True when anything changed."""
        old = self.snapshot
        unloaded = frozenset(self.read_unloaded())
        if not self.root.is_dir():
            error = "the model directory (MODEL_DIR) does not exist"  # its path is the operator's, in the log
            if old.scan_error != error:
                log.error("model directory %s does not exist", self.root)
            self.snapshot = Snapshot(scan_error=error, unloaded=unloaded)
            return old.scan_error != error
        serving: dict[str, dict[int, ModelVersion]] = {}
        failed: dict[str, dict[int, ModelVersion]] = {}
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
        changed = self.describe_all(new) != self.describe_all(old)
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
        return self.load_version(name, version, version_dir(self.root, name, version) / WEIGHTS_FILE, signature)

    def load_version(self, name: str, version: int, path: Path, signature: Signature | None = None) -> ModelVersion:
        entry = ModelVersion(name=name, version=version, signature=signature)
        try:
            loaded = load_model(path)
            check_metadata(loaded.network, loaded.metadata)
            # Warm-up: one forward pass, so the first request pays no first-call costs.
            loaded.network.predict_proba(np.zeros((1, loaded.network.input_features), dtype=loaded.network.dtype))
        except (WeightsFileError, ValueError, KeyError, TypeError) as exc:
            # clients see the path within the repository only; the log keeps the server's full path
            entry.error = str(exc).replace(str(path), f"{name}/{version}/{path.name}")
            log.error("model %s/%s failed to load: %s", name, version, exc)
            if self.counts_failures:
                metrics.LOAD_FAILURES.labels(name).inc()
            return entry
        entry.network, entry.metadata, entry.sha256 = loaded.network, loaded.metadata, loaded.sha256
        entry.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("loaded model %s/%s (%d parameters, sha256 %s)", name, version, entry.network.num_params,
                 entry.sha256[:12])
        return entry

    # -- unloading (the repository API) ----------------------------------------------------------
    def read_unloaded(self) -> set[str]:
        if self.state_file is None:
            return set(self.unloaded)
        try:
            return set(json.loads(self.state_file.read_text())["unloaded"])
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring the repository state file %s: %s", self.state_file, exc)
            return set()

    def set_unloaded(self, name: str, unloaded: bool) -> None:
        """Mark a model unloaded (or not) for every worker; this worker rescans at once.

        The read, change and write of the shared state file hold an exclusive ``flock`` on a lock file
        beside it, so two workers changing it at the same instant cannot lose either change (without
        it, three clients unloading three models at once lost one in 4 rounds of 25). The lock is held
        for a small file's read and write only."""
        if self.state_file is None:
            names = self.unloaded
            self.unloaded = names | {name} if unloaded else names - {name}
        else:
            with open(self.state_file.with_name(f".{self.state_file.name}.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                names = self.read_unloaded()
                names = names | {name} if unloaded else names - {name}
                tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
                tmp.write_text(json.dumps({"unloaded": sorted(names)}))
                os.replace(tmp, self.state_file)  # whole or not at all, for the other workers
        self.refresh()

    def state_changed(self) -> bool:
        """Whether the state file changed since the last call (a cheap stat, checked every second)."""
        if self.state_file is None:
            return False
        try:
            mtime = self.state_file.stat().st_mtime_ns
        except OSError:
            mtime = None
        changed, self._state_mtime = mtime != self._state_mtime, mtime
        return changed

    # -- queries ----------------------------------------------------------------------------------
    def failures(self) -> dict[str, str]:
        return {f"{v.name}/{v.version}": v.error for vs in self.snapshot.failed.values() for v in vs.values()}

    def status(self) -> tuple[bool, dict[str, str]]:
        """Readiness: every model (not unloaded) has a serving version; failed versions are reported."""
        snap = self.snapshot
        states = {f"{v.name}/{v.version}": "ready" for vs in snap.serving.values() for v in vs.values()}
        states.update({f"{v.name}/{v.version}": f"failed: {v.error}" for vs in snap.failed.values()
                       for v in vs.values()})
        ready = True
        for name in set(snap.serving) | set(snap.failed):
            if not snap.serving.get(name):
                ready = False
                states.setdefault(name, "no version serves")
        if snap.scan_error:
            states["model_dir"] = snap.scan_error
        elif not snap.serving and not snap.failed:
            states["model_dir"] = "no models found in the model directory (MODEL_DIR)"
        return ready and bool(snap.serving), dict(sorted(states.items()))

    def describe_all(self, snap: Snapshot) -> dict[str, Any]:
        return {name: ({v: e.signature for v, e in snap.serving.get(name, {}).items()},
                       {v: e.signature for v, e in snap.failed.get(name, {}).items()})
                for name in set(snap.serving) | set(snap.failed)} | {"unloaded": sorted(snap.unloaded)}

    def _versions(self, name: str) -> tuple[dict[int, ModelVersion], dict[int, ModelVersion]]:
        snap = self.snapshot
        if name in snap.unloaded:
            raise unavailable(f"model {name!r} is unloaded (POST /v2/repository/models/{name}/load serves it again)",
                              {})
        if name not in snap.serving and name not in snap.failed:
            known = sorted(set(snap.serving) | set(snap.failed))
            raise not_found(f"unknown model {name!r}; available: {known}")
        return snap.serving.get(name, {}), snap.failed.get(name, {})

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """The version named, or the newest serving one: 404 if not served, 503 if it failed to load."""
        serving, failed = self._versions(name)
        if version is None:
            if not serving:
                raise unavailable(f"no version of {name!r} is loaded", {str(k): v.error for k, v in failed.items()})
            return serving[max(serving)]
        if version in serving:
            return serving[version]
        if version in failed:
            raise unavailable(f"{name}/{version} failed to load", {str(version): failed[version].error})
        policy = self.snapshot.policies.get(name, str(self.policy))
        raise not_found(f"model {name!r} has no version {version} serving (version policy {policy}); "
                        f"serving: {sorted(serving)}")

    def policy_of(self, name: str) -> VersionPolicy:
        """The version policy in force for a model (its config.json's, else the server's)."""
        self._versions(name)  # 404 for an unknown model
        return VersionPolicy.parse(self.snapshot.policies.get(name, str(self.policy)))

    def describe(self, name: str) -> dict[str, Any]:
        serving, failed = self._versions(name)
        versions = {**failed, **serving}
        return {"name": name, "latest_version": max(serving, default=None),
                "versions": [versions[k].info() for k in sorted(versions)]}

    def index(self) -> list[dict[str, Any]]:
        """Every model and version on record, with its state (the repository API's index)."""
        snap = self.snapshot
        rows = [{"name": name, "version": str(v), "state": "READY", "reason": ""}
                for name, vs in snap.serving.items() for v in sorted(vs)]
        rows += [{"name": name, "version": str(v), "state": "UNAVAILABLE", "reason": e.error or ""}
                 for name, vs in snap.failed.items() for v, e in sorted(vs.items())]
        rows += [{"name": name, "state": "UNAVAILABLE", "reason": "unloaded"} for name in sorted(snap.unloaded)]
        return sorted(rows, key=lambda r: (r["name"], int(r.get("version", 0))))


def check_metadata(network: Sequential, metadata: dict[str, Any]) -> None:
    """The serving metadata must agree with the network's shape."""
    labels, shape = metadata.get("labels"), metadata.get("input_shape")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("metadata 'labels' must be a list of strings")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError("metadata 'input_shape' must be a list of positive integers")
    if math.prod(shape) != network.input_features:
        raise ValueError(f"input_shape {shape} does not match the network's {network.input_features} inputs")
    out = network.output_features
    if out is not None and out != len(labels):
        raise ValueError(f"{len(labels)} labels for a network with {out} outputs")
