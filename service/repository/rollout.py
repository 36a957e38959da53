"""Rollouts: how one model's traffic is shared between its versions. No Flask here.

A rollout names a **primary** version, **canary** versions with a percentage of the traffic each (the
primary takes the rest), a **shadow** version that is sent a copy of the primary's requests (off the
request path, ``service/dataplane/shadow.py``), and an optional **auto_rollback** guard
(``service/dataplane/rollouts.py``). A request that names no version is routed by it: by the key the
client sends (``X-Rollout-Key``, or the V2 parameter ``rollout_key``: one key, one version, in every
process) or by a random draw; a request that names a version gets that version, always.

It is set through the repository API (kept in the shared state, ``shared_state.py``) or by a file
``rollout.json`` in the model's directory, for people who deploy by files. The newer of the two is in
force: a file written after an API call wins, and an API call (a promotion, a rollback) after the
file. A bad file is reported (``GET /models/{m}``, the log) and ignored: the rollout before it stays.
The versions a rollout names are loaded whatever the version policy says, so ``latest:1`` cannot
drop the primary when a new version appears.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.repository import MAX_VERSION

log = logging.getLogger("service.repository.registry")

ROLLOUT_FILE = "rollout.json"
MAX_CANARIES = 8
SOURCES = ("api", "file", "guard")  # who set the rollout in force: the repository API, the file, the guard


class AutoRollback(BaseModel):
    """When a canary's traffic goes back to the primary by itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_error_rate: float = Field(0.05, ge=0, le=1, strict=True, description="Largest share of a canary's requests "
                                  "that may fail on the server's side (client errors do not count)")
    max_disagreement: float | None = Field(None, ge=0, le=1, strict=True, description="Largest share of a canary's "
                                           "samples whose label may differ from the primary's on the same input")
    min_requests: int = Field(100, ge=1, le=1_000_000, strict=True, description="Requests (samples, for "
                              "disagreement) a canary must have served in one process before the guard judges it")


class RolloutSpec(BaseModel):
    """A model's rollout: the body of ``PUT /v2/repository/models/{m}/rollout`` and of ``rollout.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, json_schema_extra={
        "examples": [{"primary": 2, "canary": {"3": 10}, "shadow": 3,
                      "auto_rollback": {"max_error_rate": 0.01, "min_requests": 200}}]})

    primary: int = Field(..., ge=1, le=MAX_VERSION, strict=True,
                         description="The version that takes the traffic not sent to a canary")
    canary: dict[int, Annotated[float, Field(strict=True)]] = Field(
        default_factory=dict, description="Version -> percent of the traffic (0 < percent, at most 100 in all)")
    shadow: int | None = Field(None, ge=1, le=MAX_VERSION, strict=True, description="A version sent a copy of "
                               "the primary's requests, whose answers are compared and never returned")
    auto_rollback: AutoRollback | None = Field(None, description="Off unless set")

    @model_validator(mode="after")
    def check(self) -> RolloutSpec:
        if len(self.canary) > MAX_CANARIES:
            raise ValueError(f"at most {MAX_CANARIES} canary versions")
        for version, percent in self.canary.items():
            if not 1 <= version <= MAX_VERSION:
                raise ValueError(f"canary version {version} is not a version number (1 to {MAX_VERSION})")
            if version == self.primary:
                raise ValueError(f"version {version} is the primary; a canary is another version")
            if not 0 < percent <= 100:
                raise ValueError(f"canary {version}: percent {percent:g} is not in (0, 100]")
        if sum(self.canary.values()) > 100 + 1e-9:
            raise ValueError(f"the canaries take {sum(self.canary.values()):g} percent, more than 100")
        if self.shadow is not None and self.shadow == self.primary:
            raise ValueError(f"version {self.shadow} is the primary; a shadow is another version")
        return self

    def versions(self) -> set[int]:
        """Every version this rollout names (all are loaded)."""
        return {self.primary, *self.canary, *([self.shadow] if self.shadow is not None else [])}

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class Rollout:
    """The rollout in force for a model: what it says, who set it and when (Unix seconds)."""

    spec: RolloutSpec
    source: str  # one of SOURCES
    changed_at: float
    note: str = ""  # what the last change did, e.g. "promoted 3" or why the guard rolled back
    since: float | None = None  # the last change by a person (API, file); a guard's rollback keeps it

    @property
    def generation(self) -> float:
        """What the guard's evidence is counted under: set by the last change an operator made, and kept
        by the guard's own rollbacks, so removing one canary leaves the others' evidence counting (it
        started again at zero, in every process, after each rollback)."""
        return self.changed_at if self.since is None else self.since

    def choose(self, key: str | None, rng: random.Random) -> tuple[int, bool]:
        """(version, whether it is a canary) for one request: by ``key`` when the client sent one
        (the same key always lands on the same version, in any process), else by a random draw.

        A request is judged by each canary in turn (by version), with a point of its own (the key's hash
        salted with the version, or a draw): canary ``v`` takes it when that point falls below its
        percent of what the canaries before it left.
        The shares are exact (the product telescopes to each percent), and a change to one canary moves
        the keys of the others only in proportion: with canaries ``{3: 10, 4: 10}``, the guard removing 3
        keeps 90 % of 4's keys on 4, raising 3 to 20 keeps 89 %, and a new canary after them moves
        none. Slices of one hash laid end to end (as before 2026-12-08) moved all of them.
        """
        left = 100.0  # percent of the requests no canary before this one took
        for version, percent in sorted(self.spec.canary.items()):
            point = key_point(key, version) if key is not None else rng.random() * 100
            if left <= percent or point < percent / left * 100:
                return version, True
            left -= percent
        return self.spec.primary, False

    def describe(self) -> dict[str, Any]:
        return {**self.spec.as_json(), "source": self.source, "changed_at": self.changed_at,
                **({"note": self.note} if self.note else {})}


def key_point(key: str, version: int) -> float:
    """A client's key, as canary ``version`` sees it -> a point in [0, 100): a hash salted with the
    version (each canary's points independent of the others'), the same in every process and across
    restarts."""
    try:
        data = key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate beyond surrogateescape's (a JSON "\ud800"): any stable bytes
        data = key.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8, salt=version.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


def from_record(record: Any) -> Rollout | None:
    """A rollout kept in the shared state (``{"spec", "source", "changed_at", "note"}``; ``spec`` None: the
    API cleared it); raises ValueError for a record that is not one."""
    if not isinstance(record, dict) or not isinstance(record.get("changed_at"), int | float):
        raise ValueError("not a rollout record")
    if record.get("spec") is None:
        return None
    source = record.get("source")
    if source not in SOURCES:
        raise ValueError(f"unknown rollout source {source!r}")
    since = record.get("since")
    return Rollout(RolloutSpec.model_validate(record["spec"]), source, float(record["changed_at"]),
                   str(record.get("note", "")), float(since) if isinstance(since, int | float) else None)


def to_record(rollout: Rollout | None, changed_at: float) -> dict[str, Any]:
    if rollout is None:
        return {"spec": None, "changed_at": changed_at}
    return {"spec": rollout.spec.as_json(), "source": rollout.source, "changed_at": rollout.changed_at,
            "note": rollout.note, "since": rollout.generation}


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``canary.3: percent 120 is not in (0, 100]; shadow: ...``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(map(str, error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


class RolloutFiles:
    """Each model's ``rollout.json``, read again only when it changes; a bad one keeps the last good."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, int, int]] = {}  # model -> (inode, size, mtime) of the file read
        self.good: dict[str, Rollout | None] = {}  # model -> the last good rollout from its file
        self.errors: dict[str, str] = {}  # model -> why its file is ignored

    def read(self, name: str, model_dir: Path) -> Rollout | None:
        """The model's file rollout (or None: no file, or none good yet)."""
        path = model_dir / ROLLOUT_FILE
        try:
            st = path.stat()
        except OSError:
            self.seen.pop(name, None)
            self.good.pop(name, None)
            self.errors.pop(name, None)
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self.seen.get(name) == signature:
            return self.good.get(name)
        self.seen[name] = signature
        try:
            if st.st_size > 64 * 1024:
                raise ValueError(f"{st.st_size} bytes, more than a rollout needs (64 KiB)")
            spec = RolloutSpec.model_validate(json.loads(path.read_text()))
        except ValidationError as exc:
            self.report(name, path, describe_errors(exc))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.report(name, path, str(exc))
        except RecursionError:  # JSON nested deeper than the parser goes: no rollout is
            self.report(name, path, "nested too deeply")
        else:
            self.errors.pop(name, None)
            self.good[name] = Rollout(spec, "file", st.st_mtime)
        return self.good.get(name)

    def report(self, name: str, path: Path, why: str) -> None:
        kept = "keeping the rollout before it" if self.good.get(name) else "no rollout from it"
        self.errors[name] = f"{ROLLOUT_FILE} ignored ({kept}): {why}"
        log.error("ignoring %s (%s): %s", path, kept, why)


def in_force(api: Rollout | None, api_changed_at: float | None, file: Rollout | None) -> Rollout | None:
    """The newer of the API's rollout (or its clearing, at ``api_changed_at``) and the file's."""
    if file is None:
        return api
    if api_changed_at is None or file.changed_at > api_changed_at:
        return file
    return api
