"""One version of a model: loading its weights file, checking its serving metadata against the
network, warming it up, and what the API says of it. No Flask here.

A version that fails to load is still a :class:`ModelVersion`, with its ``error`` (the path in it
relative to the repository: clients never see the server's paths), so readiness and the model
metadata can report it; it is never served.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.io import WeightsFileError, load_model
from model.network import Sequential
from service.observability import metrics

log = logging.getLogger("service.repository.registry")
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

    @functools.cached_property  # asked by every request; the version's metadata and network stay as loaded
    def input_range(self) -> tuple[float, float]:
        """The inputs this version takes: its metadata's ``preprocessing.input_range``, within what its
        dtype holds (without a range, a float64 1e300 would become inf in a float32 pass)."""
        lo, hi = self.metadata.get("preprocessing", {}).get("input_range", [-math.inf, math.inf])
        largest = float(np.finfo(self.dtype).max)
        return max(float(lo), -largest), min(float(hi), largest)

    def info(self) -> dict[str, Any]:
        """The version as ``GET /models/{m}`` lists it."""
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


def load_version(name: str, version: int, path: Path, signature: Signature | None = None,
                 count_failure: bool = True) -> ModelVersion:
    """Read, check and warm up one weights file; a failure is kept in the entry (and counted in
    /metrics when ``count_failure``), never raised."""
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
    except Exception:  # a bug, or a file no rule foresaw: this version fails, the scan and the others go on
        entry.error = f"{name}/{version}/{path.name} could not be loaded (an unexpected error; see the log)"
        log.exception("model %s/%s failed to load unexpectedly", name, version)
    else:
        entry.network, entry.metadata, entry.sha256 = loaded.network, loaded.metadata, loaded.sha256
        entry.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("loaded model %s/%s (%d parameters, sha256 %s)", name, version, entry.network.num_params,
                 entry.sha256[:12])
        return entry
    if count_failure:
        metrics.LOAD_FAILURES.labels(name).inc()
    return entry


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
    preprocessing = metadata.get("preprocessing", {})
    span = preprocessing.get("input_range", [-math.inf, math.inf]) if isinstance(preprocessing, dict) else None
    if not isinstance(span, list) or len(span) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in span) or not span[0] <= span[1]:
        raise ValueError("metadata 'preprocessing' must be an object whose 'input_range' is [low, high], "
                         "two numbers with low <= high")
