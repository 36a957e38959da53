"""Version policies: which of a model's versions on disk are served (TF Serving's and Triton's rule).

``latest`` / ``latest:N``
    the newest N versions that load (default N = 1). A newest version that fails to load is
    reported and skipped, so the one before it keeps serving.
``all``
    every version that loads.
``specific:1,3``
    exactly those versions (the ones that exist and load).

The server's policy is ``VERSION_POLICY``; a model may set its own in ``<root>/<model>/config.json``
as ``{"version_policy": "latest:2"}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from model.repository import CONFIG_FILE

log = logging.getLogger("service.repository.registry")


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        if not isinstance(text, str):  # a config.json's {"version_policy": 2}: a bad policy, not a crash
            raise ValueError(f"a version policy is text such as 'latest:1', got {type(text).__name__}")
        kind, _, arg = text.strip().lower().partition(":")
        try:
            if kind == "latest":
                count = int(arg) if arg else 1
                if count >= 1:
                    return cls("latest", count)
            elif kind == "all" and not arg:
                return cls("all")
            elif kind == "specific" and arg:
                versions = tuple(sorted({int(v) for v in arg.split(",")}))
                if all(v >= 1 for v in versions):
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(f"version policy {text!r}: use latest, latest:N, all or specific:V1,V2")

    def candidates(self, found: list[int]) -> list[int]:
        """Versions to try, newest first; ``done`` says when enough serve."""
        newest_first = sorted(found, reverse=True)
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first

    def done(self, serving: int) -> bool:
        return self.kind == "latest" and serving >= self.count

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


MAX_CONFIG_BYTES = 64 * 1024


def model_policy(model_dir: Path, default: VersionPolicy) -> VersionPolicy:
    """The model's own policy from its config.json, else ``default`` (a bad file is logged and ignored)."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return default
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"more than a configuration needs ({MAX_CONFIG_BYTES // 1024} KiB)")
        return VersionPolicy.parse(json.loads(path.read_text())["version_policy"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("ignoring %s (using %s): %s", path, default, exc)
        return default
    except RecursionError:  # JSON nested deeper than the parser goes
        log.error("ignoring %s (using %s): nested too deeply", path, default)
        return default
