"""The rollout operations of the repository API, transport-free (``docs/rollouts.md``): read, set,
clear, promote and roll back a model's rollout (``service/repository/rollout.py``), for every process.

A change is checked against the repository first: every version it names must be on disk and load
(a 409 says which does not, and nothing changes). Each change is made under the shared state's lock
(``ModelRegistry.change_rollout``), so concurrent calls lose none, and records that the API made it
and when -- never which token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from model.repository import WEIGHTS_FILE, version_dir
from service.dataplane.dataplane import DataPlane
from service.errors import ServiceError
from service.protocols.repository import model_dir_exists
from service.repository.model_version import load_version
from service.repository.rollout import Rollout, RolloutSpec

log = logging.getLogger("service.rollout")


def conflict(message: str) -> ServiceError:
    return ServiceError(409, "rollout_conflict", message)


def describe(plane: DataPlane, name: str) -> dict[str, Any]:
    """The model's rollout in force, why its file is ignored (if it is), and the evidence so far."""
    model_dir_exists(plane, name)
    return {"name": name, **plane.rollouts.describe(name)}


def check_versions(plane: DataPlane, name: str, spec: RolloutSpec) -> None:
    """409 unless every version the rollout names is on disk and loads."""
    snap = plane.registry.snapshot
    for version in sorted(spec.versions()):
        if version in snap.serving.get(name, {}):
            continue
        failed = snap.failed.get(name, {}).get(version)
        path = version_dir(plane.registry.root, name, version) / WEIGHTS_FILE
        if failed is None and not path.is_file():
            raise conflict(f"model {name!r} has no version {version} in the repository")
        error = failed.error if failed is not None else load_version(name, version, path, count_failure=False).error
        if error:
            raise conflict(f"{name}/{version} does not load: {error}")


def change(plane: DataPlane, name: str, build: Callable[[Rollout | None], tuple[RolloutSpec | None, str]]
           ) -> dict[str, Any]:
    """Replace the rollout by ``build(the rollout in force)``: (spec or None, note), decided under the
    shared state's lock from the rollout every process sees now, not this process's copy of it (up to
    a second old), so a promote or a roll back never undoes a change another worker just made."""
    model_dir_exists(plane, name)
    notes: list[str] = []

    def apply(current: Rollout | None) -> Rollout | None:
        spec, note = build(current)
        if spec is not None:
            check_versions(plane, name, spec)
        notes.append(note)
        return Rollout(spec, "api", 0.0, note) if spec is not None else None

    plane.registry.change_rollout(name, apply)
    log.info("rollout of %s changed by the repository API: %s", name, notes[-1])
    return describe(plane, name)


def set_rollout(plane: DataPlane, name: str, spec: RolloutSpec) -> dict[str, Any]:
    return change(plane, name, lambda current: (spec, f"set {spec.as_json()}"))


def clear(plane: DataPlane, name: str) -> dict[str, Any]:
    """No rollout: requests naming no version go to the newest serving version again."""
    return change(plane, name, lambda current: (None, "cleared"))


def in_force(name: str, rollout: Rollout | None) -> RolloutSpec:
    if rollout is None:
        raise conflict(f"model {name!r} has no rollout")
    return rollout.spec


def promote(plane: DataPlane, name: str, version: int | None = None) -> dict[str, Any]:
    """All traffic to the canary (or the shadow): it becomes the primary; the guard stays as it was."""

    def promoted(current: Rollout | None) -> tuple[RolloutSpec, str]:
        spec = in_force(name, current)
        candidates = sorted(spec.canary) + ([spec.shadow] if spec.shadow is not None else [])
        chosen = version
        if chosen is None:
            if len(spec.canary) == 1 or (not spec.canary and spec.shadow is not None):
                chosen = candidates[0]
            else:
                raise conflict(f"name the version to promote: the rollout of {name!r} has "
                               f"{'no canary or shadow' if not candidates else f'canaries {sorted(spec.canary)}'}")
        if chosen not in candidates:
            raise conflict(f"version {chosen} is not a canary or the shadow of {name!r} (they are {candidates})")
        return (RolloutSpec(primary=chosen, auto_rollback=spec.auto_rollback),
                f"promoted {chosen} (the primary was {spec.primary})")

    return change(plane, name, promoted)


def roll_back(plane: DataPlane, name: str) -> dict[str, Any]:
    """All traffic to the primary: the canaries and the shadow are removed."""

    def back(current: Rollout | None) -> tuple[RolloutSpec, str]:
        spec = in_force(name, current)
        if not spec.canary and spec.shadow is None:
            raise conflict(f"the rollout of {name!r} has no canary or shadow to roll back")
        removed = [f"canary {v}" for v in sorted(spec.canary)] + ([f"shadow {spec.shadow}"] if spec.shadow else [])
        return (RolloutSpec(primary=spec.primary, auto_rollback=spec.auto_rollback),
                f"rolled back ({', '.join(removed)} removed)")

    return change(plane, name, back)
