"""The data plane: every serving rule, and no HTTP (the shape of MLServer's ``DataPlane``).

A protocol codec (``service/blueprints/``) decodes a request into names and NumPy arrays, calls one
method here, and encodes what comes back. Batch and gradcheck limits, shape, finiteness and range
checks, version lookup, label mapping, running the model and timing all live here, so a new
protocol adds a codec and no rules. Errors are :class:`service.errors.ServiceError` with a
``loc`` in the caller's own terms (``field`` names where the codec found the array).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.gradcheck import GradCheckResult, gradient_check
from service import metrics
from service.config import Settings
from service.errors import ServiceError, invalid, too_large
from service.registry import ModelRegistry, ModelVersion
from service.slots import Slots


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (from the settings; see the README's configuration table)."""

    max_batch: int = 1024
    gradcheck_max_batch: int = 64
    gradcheck_max_samples: int = 100
    gradcheck_full_max_params: int = 20_000
    gradcheck_max_cost: float = 1e10  # estimated multiply-adds of one gradcheck (~1 s on one core here)
    gradcheck_concurrency: int = 1  # gradchecks at once across the server

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        concurrency = settings.gradcheck_concurrency or max(1, settings.workers - 1)
        return cls(settings.max_batch, settings.gradcheck_max_batch, settings.gradcheck_max_samples,
                   settings.gradcheck_full_max_params, settings.gradcheck_max_cost, concurrency)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model's signature; ``-1`` marks the batch dimension."""

    name: str
    datatype: str  # the Open Inference Protocol's names: FP32, BYTES ...
    shape: tuple[int, ...]


# The tensors every model here takes and gives; each protocol names them from here.
INPUT = "input"
PROBABILITIES = "probabilities"  # (batch, classes) FP32, aligned with the model's labels
LABEL = "label"  # (batch,) BYTES, the most probable class name
# Input datatypes a request may use (converted to the model's float32); others are refused.
INPUT_DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
                   "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}


def signature(entry: ModelVersion) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a model version."""
    return ([TensorSpec(INPUT, "FP32", (-1, *entry.input_shape))],
            [TensorSpec(PROBABILITIES, "FP32", (-1, len(entry.labels))), TensorSpec(LABEL, "BYTES", (-1,))])


@dataclass(frozen=True)
class Inference:
    """The answer to one batch: probabilities (batch, classes) aligned with ``labels``."""

    model: str
    version: int
    labels: list[str]
    probabilities: np.ndarray
    classes: np.ndarray  # (batch,) index of the most probable label

    def predicted(self) -> list[str]:
        return [self.labels[k] for k in self.classes.tolist()]


@dataclass(frozen=True)
class Gradcheck:
    model: str
    version: int
    samples: int
    result: GradCheckResult
    seconds: float


class Runner(Protocol):
    """What runs a validated batch on a model version: inline here, batched in the gunicorn worker
    (``service/batcher.py``, installed after fork); the data plane never knows which."""

    def run(self, entry: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """(rows, features) of ``entry.dtype`` -> (rows, classes) probabilities."""

    def describe(self, entries: list[ModelVersion]) -> dict[str, Any]:
        """The batching state of these versions, for ``GET /models/{m}``."""


class InlineRunner:
    """One forward pass per request, on the caller's thread (tests, ``flask run``, ``BATCHING=off``)."""

    def run(self, entry: ModelVersion, batch: np.ndarray) -> np.ndarray:
        metrics.observe_executed(entry.name, len(batch))
        return entry.network.predict_proba(batch)

    def describe(self, entries: list[ModelVersion]) -> dict[str, Any]:
        return {"enabled": False, "mode": "off"}


class DataPlane:
    """Models by name and version, and the two things a client can run on them."""

    def __init__(self, registry: ModelRegistry, limits: Limits | None = None, state_dir: Path | None = None,
                 runner: Runner | None = None) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self.runner: Runner = runner or InlineRunner()
        # at most gradcheck_concurrency at once across all workers, so one worker stays free for /predict
        self.gradcheck_slots = Slots(self.limits.gradcheck_concurrency, state_dir, "gradcheck")

    # -- metadata ---------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self.registry.models)

    def describe(self, name: str) -> dict[str, Any]:
        info = self.registry.describe(name)
        serving = self.registry.snapshot.serving.get(name, {})
        return {**info, "batching": self.runner.describe([serving[v] for v in sorted(serving)])}

    def readiness(self) -> tuple[bool, dict[str, str]]:
        return self.registry.status()

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The version to serve: the one named, or the newest loaded one (404 / 503 otherwise)."""
        return self.registry.get(name, version)

    def is_ready(self, name: str, version: int | None = None) -> bool:
        """Whether the model (or that version) can serve now; an unknown one is a 404 error."""
        try:
            self.resolve(name, version)
        except ServiceError as exc:
            if exc.status == 503:
                return False
            raise
        return True

    def ready_versions(self, name: str) -> list[int]:
        return [v["version"] for v in self.describe(name)["versions"] if v["status"] == "ready"]

    # -- running ----------------------------------------------------------------------------
    def infer(self, name: str, version: int | None, inputs: np.ndarray, field: str = "inputs") -> Inference:
        """Class probabilities for a batch of samples, in one vectorised forward pass.

        ``inputs`` is (batch, *sample) with a sample either flat (``prod(input_shape)`` values) or
        in the model's ``input_shape``; any real or integer dtype.
        """
        check_batch_size(inputs, self.limits.max_batch, field)
        entry = self.resolve(name, version)
        batch = as_batch(inputs, entry, field)
        metrics.observe_batch(entry.name, len(batch))
        probabilities = self.runner.run(entry, batch)  # validated first: a bad request never joins a batch
        return Inference(entry.name, entry.version, entry.labels, probabilities, probabilities.argmax(axis=1))

    def gradcheck(self, name: str, version: int | None, inputs: np.ndarray, labels: list[str], *, mode: str,
                  epsilon: float, samples: int, seed: int, tolerance: float, field: str = "inputs") -> Gradcheck:
        """The library's gradient check on a float64 copy of the served weights, within the limits."""
        limits = self.limits
        if len(inputs) > limits.gradcheck_max_batch:
            raise too_large(422, "gradcheck_too_large", field, f"gradcheck takes at most {limits.gradcheck_max_batch} "
                            "inputs", limits.gradcheck_max_batch, len(inputs))
        if samples > limits.gradcheck_max_samples:
            raise too_large(422, "gradcheck_too_large", "samples",
                            f"samples is limited to {limits.gradcheck_max_samples}", limits.gradcheck_max_samples,
                            samples)
        if len(labels) != len(inputs):
            raise invalid("labels", f"{len(labels)} labels for {len(inputs)} inputs: one label per input")
        entry = self.resolve(name, version)
        params = entry.network.num_params
        if mode == "full" and params > limits.gradcheck_full_max_params:
            raise too_large(422, "gradcheck_too_large", "mode",
                            f"mode 'full' is limited to models of at most {limits.gradcheck_full_max_params} "
                            f"parameters; {entry.name} has {params}: use 'sampled' or 'directional'",
                            limits.gradcheck_full_max_params, params)
        cost = gradcheck_cost(entry.network, len(inputs), mode, samples)
        if cost > limits.gradcheck_max_cost:
            raise too_large(422, "gradcheck_too_large", "samples",
                            f"this gradcheck would take about {cost:.3g} multiply-adds, over GRADCHECK_MAX_COST="
                            f"{limits.gradcheck_max_cost:.3g}: send fewer inputs or samples",
                            int(limits.gradcheck_max_cost), int(cost))
        batch = as_batch(inputs, entry, field)
        targets = label_indices(labels, entry)
        with self.gradcheck_slots.hold() as held:
            if not held:
                raise ServiceError(503, "gradcheck_busy", f"{limits.gradcheck_concurrency} gradcheck(s) already "
                                   "running, the server's limit (GRADCHECK_CONCURRENCY); retry shortly",
                                   headers={"Retry-After": "1"})
            start = time.perf_counter()
            result = gradient_check(entry.network, batch, targets, mode=mode, epsilon=epsilon, samples=samples,
                                    seed=seed, tolerance=tolerance)
        return Gradcheck(entry.name, entry.version, samples, result, time.perf_counter() - start)


# -- the rules for one batch ----------------------------------------------------------------------
def gradcheck_cost(network, inputs: int, mode: str, samples: int) -> float:
    """Multiply-adds a gradcheck costs, about: two forward passes of the batch per comparison (full:
    one comparison per parameter; sampled and directional: ``samples`` per parameter tensor)."""
    params = network.num_params
    comparisons = params if mode == "full" else samples * len(network.named_params())
    return 2.0 * comparisons * params * inputs


def check_batch_size(inputs: np.ndarray | list[Any], limit: int, field: str = "inputs") -> None:
    if len(inputs) > limit:
        raise too_large(413, "batch_too_large", field, f"batch of {len(inputs)} samples exceeds MAX_BATCH={limit}",
                        limit, len(inputs))


def as_batch(inputs: np.ndarray, entry: ModelVersion, field: str = "inputs") -> np.ndarray:
    """Check samples against the model's input shape, finiteness and range; float (batch, features).

    A sample may be flat (``prod(input_shape)`` values) or nested with the exact ``input_shape``.
    Errors name the offending sample, e.g. ``inputs.3: value 2 at position 24 is outside [0, 1]``.
    """
    shape = entry.input_shape
    size = math.prod(shape)
    if inputs.ndim == 0 or len(inputs) == 0:
        raise invalid(field, "expected a non-empty batch of samples")
    if inputs.shape[1:] not in ((size,), shape):
        expected = f"{size} values" + (f" (or {'x'.join(map(str, shape))})" if len(shape) > 1 else "")
        got = inputs.shape[1:]
        what = "a single number" if not got else f"{got[0]} values" if len(got) == 1 else \
            f"shape {'x'.join(map(str, got))}"
        raise invalid(f"{field}.0" if got else field, f"has {what}, expected {expected}" if got else
                      f"each sample must be a list of {expected}, not a single number")
    batch = inputs.reshape(len(inputs), size)
    lo, hi = entry.input_range
    if not (lo <= batch.min() and batch.max() <= hi):  # one pass each; NaN fails both comparisons
        if batch.dtype.kind == "f":
            finite = np.isfinite(batch)
            if not finite.all():
                i, j = np.argwhere(~finite)[0]
                raise invalid(element_loc(field, i, j, inputs.shape), "Input should be a finite number",
                              "finite_number")
        i, j = np.argwhere(~((batch >= lo) & (batch <= hi)))[0]
        raise invalid(f"{field}.{i}", f"value {float(batch[i, j]):g} at position {j} is outside [{lo:g}, {hi:g}]")
    return np.ascontiguousarray(batch, dtype=entry.dtype)


def element_loc(field: str, i: int, j: int, shape: tuple[int, ...]) -> str:
    """``inputs.1.1`` for a flat sample, ``inputs.1.0.1`` for a nested one."""
    inner = np.unravel_index(j, shape[1:]) if len(shape) > 2 else (j,)
    return ".".join([field, str(i), *map(str, inner)])


def label_indices(labels: list[str], entry: ModelVersion) -> np.ndarray:
    index = {label: i for i, label in enumerate(entry.labels)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if label not in index:
            raise invalid(f"labels.{i}", f"unknown class {label!r}; the model's labels are {entry.labels}")
        out[i] = index[label]
    return out
