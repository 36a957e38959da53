"""What serves, at one instant: an immutable :class:`Snapshot` of every model's serving and failed
versions, and every question asked of it (lookup, readiness, the API's descriptions). No Flask here.

The registry (``service/repository/registry.py``) swaps a new snapshot in whole after each scan, so a request
that took ``registry.snapshot`` once sees one consistent state and holds the version it started
with, whatever a rescan does meanwhile.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from service.errors import not_found, unavailable
from service.repository.model_version import ModelVersion
from service.repository.rollout import Rollout
from service.repository.version_policy import VersionPolicy

Versions = dict[int, ModelVersion]


@dataclass(frozen=True)
class Snapshot:
    """Model -> version -> entry, ready ones and failed ones apart; each model's policy (as text) and
    rollout (``rollout.py``), and why a rollout file is ignored."""

    serving: dict[str, Versions] = field(default_factory=dict)
    failed: dict[str, Versions] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    unloaded: frozenset[str] = frozenset()
    scan_error: str | None = None
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    rollout_errors: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, Versions]:
        """Every model on disk and not unloaded -> its versions that serve."""
        return {name: self.serving.get(name, {}) for name in sorted(set(self.serving) | set(self.failed))}

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model on record (serving or failed): cheap, for every request's metrics."""
        return name in self.serving or name in self.failed

    def signatures(self) -> dict[str, Any]:
        """What identifies this state's files: two snapshots with equal signatures serve the same."""
        return {name: ({v: e.signature for v, e in self.serving.get(name, {}).items()},
                       {v: e.signature for v, e in self.failed.get(name, {}).items()})
                for name in set(self.serving) | set(self.failed)} | {"unloaded": sorted(self.unloaded)} | {
            "rollouts": {name: r.describe() for name, r in self.rollouts.items()}}

    # -- lookup -----------------------------------------------------------------------------------
    def versions(self, name: str) -> tuple[Versions, Versions]:
        """(serving, failed) versions of a model: 503 if unloaded, 404 if unknown."""
        if name in self.unloaded:
            raise unavailable(f"model {name!r} is unloaded (POST /v2/repository/models/{name}/load serves it again)",
                              {})
        if not self.knows(name):
            raise not_found(f"unknown model {name!r}; available: {sorted(set(self.serving) | set(self.failed))}")
        return self.serving.get(name, {}), self.failed.get(name, {})

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """The version named, or the one a request naming none is served by: the rollout's primary when it
        serves, else the newest serving one (so metadata, configuration and explanations describe the
        version answering). 404 if not served, 503 if it failed to load."""
        serving, failed = self.versions(name)
        if version is None:
            if not serving:
                raise unavailable(f"no version of {name!r} is loaded", {str(k): v.error for k, v in failed.items()})
            rollout = self.rollouts.get(name)
            if rollout is not None and rollout.spec.primary in serving:
                return serving[rollout.spec.primary]
            return serving[max(serving)]
        if version in serving:
            return serving[version]
        if version in failed:
            raise unavailable(f"{name}/{version} failed to load", {str(version): failed[version].error})
        raise not_found(f"model {name!r} has no version {version} serving (version policy "
                        f"{self.policies[name]}); serving: {sorted(serving)}")

    def route(self, name: str, key: str | None, rng: random.Random) -> tuple[ModelVersion, Rollout | None, bool]:
        """(entry, the rollout that routed it, whether it is a canary) for a request naming no version.

        Without a rollout: the newest serving version. With one: the version it chooses for ``key``
        (or a random draw); when that version does not serve (its file failed, or was removed), the
        primary, and when the primary does not either, the newest serving version."""
        rollout = self.rollouts.get(name)
        if rollout is None:
            return self.get(name), None, False
        version, canary = rollout.choose(key, rng)
        serving = self.serving.get(name, {})
        if version in serving:
            return serving[version], rollout, canary
        if rollout.spec.primary in serving:
            return serving[rollout.spec.primary], rollout, False
        return self.get(name), rollout, False

    def policy_of(self, name: str) -> VersionPolicy:
        """The version policy in force for a model (its config.json's, else the server's)."""
        self.versions(name)  # 404 for an unknown model
        return VersionPolicy.parse(self.policies[name])

    # -- what the API says ------------------------------------------------------------------------
    def failures(self) -> dict[str, str]:
        return {f"{v.name}/{v.version}": v.error for vs in self.failed.values() for v in vs.values()}

    def status(self) -> tuple[bool, dict[str, str]]:
        """Readiness: every model (not unloaded) has a serving version; failed versions are reported."""
        states = {f"{v.name}/{v.version}": "ready" for vs in self.serving.values() for v in vs.values()}
        states.update({f"{v.name}/{v.version}": f"failed: {v.error}" for vs in self.failed.values()
                       for v in vs.values()})
        ready = True
        for name in set(self.serving) | set(self.failed):
            if not self.serving.get(name):
                ready = False
                states.setdefault(name, "no version serves")
        if self.scan_error:
            states["model_dir"] = self.scan_error
        elif not self.serving and not self.failed:
            states["model_dir"] = "no models found in the model directory (MODEL_DIR)"
        return ready and bool(self.serving), dict(sorted(states.items()))

    def describe(self, name: str) -> dict[str, Any]:
        """A model and each version on record (``GET /models/{m}``)."""
        serving, failed = self.versions(name)
        versions = {**failed, **serving}
        return {"name": name, "latest_version": max(serving, default=None),
                "versions": [versions[k].info() for k in sorted(versions)]}

    def index(self) -> list[dict[str, Any]]:
        """Every model and version on record, with its state (the repository API's index)."""
        rows = [{"name": name, "version": str(v), "state": "READY", "reason": ""}
                for name, vs in self.serving.items() for v in sorted(vs)]
        rows += [{"name": name, "version": str(v), "state": "UNAVAILABLE", "reason": e.error or ""}
                 for name, vs in self.failed.items() for v, e in sorted(vs.items())]
        rows += [{"name": name, "state": "UNAVAILABLE", "reason": "unloaded"} for name in sorted(self.unloaded)]
        return sorted(rows, key=lambda r: (r["name"], int(r.get("version", 0))))
