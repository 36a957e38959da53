"""The model registry: finds, loads, validates and warms up models, and looks them up. No Flask here.

A model repository is ``<root>/<name>/<version>/model.npz`` with numeric versions. Every version
found is loaded at start; one that fails is kept as *failed* with its reason (the service stays
up, and readiness reports it), so a bad file never takes the others down.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.io import WeightsFileError, load_model
from model.network import Sequential
from service.errors import not_found, unavailable

log = logging.getLogger("service.registry")


@dataclass
class ModelVersion:
    """One loaded (or failed) version of a model."""

    name: str
    version: int
    path: Path
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


class ModelRegistry:
    """All versions of all models under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.scan_error: str | None = None

    # -- loading ----------------------------------------------------------------------------
    def load_all(self) -> ModelRegistry:
        if not self.root.is_dir():
            self.scan_error = f"model directory {self.root} does not exist"
            log.error(self.scan_error)
            return self
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                                      key=lambda p: int(p.name)):
                entry = self.load_version(model_dir.name, int(version_dir.name), version_dir / "model.npz")
                self.models.setdefault(model_dir.name, {})[entry.version] = entry
        return self

    def load_version(self, name: str, version: int, path: Path) -> ModelVersion:
        entry = ModelVersion(name=name, version=version, path=path)
        try:
            loaded = load_model(path)
            check_metadata(loaded.network, loaded.metadata)
            # Warm-up: one forward pass, so the first request pays no first-call costs.
            loaded.network.predict_proba(np.zeros((1, loaded.network.input_features), dtype=loaded.network.dtype))
        except (WeightsFileError, ValueError, KeyError, TypeError) as exc:
            entry.error = str(exc)
            log.error("model %s/%s failed to load: %s", name, version, exc)
            return entry
        entry.network, entry.metadata, entry.sha256 = loaded.network, loaded.metadata, loaded.sha256
        entry.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("loaded model %s/%s (%d parameters, sha256 %s)", name, version, entry.network.num_params,
                 entry.sha256[:12])
        return entry

    # -- queries ----------------------------------------------------------------------------
    def failures(self) -> dict[str, str]:
        return {f"{v.name}/{v.version}": v.error for vs in self.models.values() for v in vs.values() if v.error}

    def status(self) -> tuple[bool, dict[str, str]]:
        """Readiness: every version found loaded, and at least one model exists."""
        states = {f"{v.name}/{v.version}": "ready" if v.ready else f"failed: {v.error}"
                  for vs in self.models.values() for v in vs.values()}
        if self.scan_error:
            states["model_dir"] = self.scan_error
        elif not states:
            states["model_dir"] = f"no models found in {self.root}"
        return bool(states) and all(s == "ready" for s in states.values()), states

    def _versions(self, name: str) -> dict[int, ModelVersion]:
        versions = self.models.get(name)
        if not versions:
            raise not_found(f"unknown model {name!r}; available: {sorted(self.models)}")
        return versions

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        versions = self._versions(name)
        if version is None:
            ready = [v for v in versions.values() if v.ready]
            if not ready:
                raise unavailable(f"no version of {name!r} is loaded", {str(k): v.error for k, v in versions.items()})
            return max(ready, key=lambda v: v.version)
        entry = versions.get(version)
        if entry is None:
            raise not_found(f"model {name!r} has no version {version}; available: {sorted(versions)}")
        if not entry.ready:
            raise unavailable(f"{name}/{version} failed to load", {str(version): entry.error})
        return entry

    def describe(self, name: str) -> dict[str, Any]:
        versions = self._versions(name)
        ready = [v.version for v in versions.values() if v.ready]
        return {"name": name, "latest_version": max(ready, default=None),
                "versions": [versions[k].info() for k in sorted(versions)]}


def check_metadata(network: Sequential, metadata: dict[str, Any]) -> None:
    """The serving metadata must agree with the network's shape."""
    labels, shape = metadata.get("labels"), metadata.get("input_shape")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("metadata 'labels' must be a list of strings")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError("metadata 'input_shape' must be a list of positive integers")
    if math.prod(shape) != network.input_features:
        raise ValueError(f"input_shape {shape} does not match the network's {network.input_features} inputs")
    out = network.layers[-1].params["W"].shape[1] if "W" in network.layers[-1].params else None
    if out is not None and out != len(labels):
        raise ValueError(f"{len(labels)} labels for a network with {out} outputs")
