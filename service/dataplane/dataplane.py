"""The data plane: every serving rule, and no HTTP (the shape of MLServer's ``DataPlane``).

A protocol codec (``service/app/blueprints/``) decodes a request into names and NumPy arrays, calls one
method here, and encodes what comes back. Batch and gradcheck limits, shape, finiteness and range
checks, version lookup, label mapping, running the model and timing all live here, so a new
protocol adds a codec and no rules (gradient checks and explanations, the long computations on a
float64 copy, are ``diagnostics.py``, on top of this). Errors are :class:`service.errors.ServiceError` with a
``loc`` in the caller's own terms (``field`` names where the codec found the array).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.batching import rules
from service.batching.queue_policy import QueuePolicy, Ticket
from service.batching.rules import Observer
from service.capture.capture import Capture
from service.config import Settings
from service.dataplane.rollouts import Rollouts
from service.errors import ServiceError, invalid, too_large
from service.observability import accuracy, drift, metrics, statistics
from service.observability.statistics import VersionStats
from service.repository.model_version import ModelVersion
from service.repository.registry import ModelRegistry
from service.repository.version_policy import VersionPolicy


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (from the settings: ``docs/configuration.md``)."""

    max_batch: int = 1024
    gradcheck_max_batch: int = 64
    gradcheck_max_samples: int = 100
    gradcheck_full_max_params: int = 20_000
    gradcheck_max_cost: float = 1e10  # estimated multiply-adds of one gradcheck (~1 s on one core here)
    gradcheck_concurrency: int = 1  # gradchecks and explanations at once across the server
    explain_max_batch: int = 64
    explain_max_steps: int = 1024
    explain_max_samples: int = 256
    explain_max_cost: float = 1e10  # estimated multiply-adds of one explanation

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        concurrency = settings.gradcheck_concurrency or max(1, settings.workers - 1)
        return cls(settings.max_batch, settings.gradcheck_max_batch, settings.gradcheck_max_samples,
                   settings.gradcheck_full_max_params, settings.gradcheck_max_cost, concurrency,
                   settings.explain_max_batch, settings.explain_max_steps, settings.explain_max_samples,
                   settings.explain_max_cost)


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


class Runner(Protocol):
    """What runs a validated batch on a model version: inline here, or a batcher the front end chooses
    (``service/batching/``: the HTTP worker's after fork, the gRPC process's at start), handed over by
    :meth:`DataPlane.serve_with`; the data plane never knows which."""

    def warm(self, entries: list[ModelVersion]) -> None:
        """Prepare for these versions before their first request (a batcher measures its cost tables)."""

    #: Called with (version, rows) after each forward pass that ran (set by :meth:`DataPlane.serve_with`).
    observe: Observer | None

    def run(self, entry: ModelVersion, batch: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        """(rows, features) of ``entry.dtype`` -> (rows, classes) probabilities. A request with a
        ``ticket`` is not computed once its deadline passed (``ticket.error()``), and is marked running
        (``ticket.start()``) when its pass starts."""

    def describe(self, entries: list[ModelVersion]) -> dict[str, Any]:
        """The batching state of these versions, for ``GET /models/{m}``."""


class InlineRunner:
    """One forward pass per request, on the caller's thread (tests, ``flask run``, ``BATCHING=off``).

    With ``slots``, at most that many passes run at once (a gRPC process's ``GRPC_THREADS`` without
    batching); a request waiting for a slot is still *waiting* in the queue policy's count
    (``MAX_QUEUE_SIZE``), and one whose deadline passes meanwhile is answered then, uncomputed.
    """

    observe: Observer | None = None

    def __init__(self, slots: int | None = None) -> None:
        self.slots = threading.BoundedSemaphore(slots) if slots else None

    def warm(self, entries: list[ModelVersion]) -> None:
        return None

    def run(self, entry: ModelVersion, batch: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        if self.slots is None:
            return self._run(entry, batch, ticket)
        remaining = ticket.remaining() if ticket is not None else None
        if not self.slots.acquire(timeout=max(remaining, 0.0) if remaining is not None else None):
            raise ticket.error()  # the deadline passed while waiting for a slot
        try:
            return self._run(entry, batch, ticket)
        finally:
            self.slots.release()

    def _run(self, entry: ModelVersion, batch: np.ndarray, ticket: Ticket | None) -> np.ndarray:
        if ticket is not None:
            if ticket.expired():
                raise ticket.error()
            ticket.start()
        metrics.observe_executed(entry.name, len(batch))
        return rules.forward(entry, batch, None, self.observe, entry.network.predict_proba, batch)

    def describe(self, entries: list[ModelVersion]) -> dict[str, Any]:
        return {"enabled": False, "mode": "off"}


class DataPlane:
    """Models by name and version, and inference on them (``diagnostics.py`` adds the checks)."""

    def __init__(self, registry: ModelRegistry, limits: Limits | None = None, runner: Runner | None = None,
                 capture: Capture | None = None, drift_window: int = 0, shadow_queue: int = 4096,
                 queue: QueuePolicy | None = None) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self.queue = queue or QueuePolicy()  # deadlines and MAX_QUEUE_SIZE (service/batching/queue_policy.py)
        self.capture = capture  # sampled inferences to CAPTURE_DIR (service/capture/)
        self.drift = drift.DriftMonitor(drift_window) if drift_window else None
        self.runner: Runner = runner or InlineRunner()
        self.runner.observe = self.observe_pass if self.drift is not None else None
        self.rollouts = Rollouts(registry, shadow_queue)  # routing between versions, comparisons, the guard

    @classmethod
    def from_settings(cls, registry: ModelRegistry, settings: Settings) -> DataPlane:
        """The data plane every front end builds: limits, capture (``CAPTURE_DIR``) and drift from the settings."""
        capture = None
        if settings.capture_dir is not None:
            capture = Capture(settings.capture_dir, settings.capture_sample_rate, settings.capture_max_bytes,
                              settings.capture_queue)
        return cls(registry, Limits.from_settings(settings), capture=capture, drift_window=settings.drift_window,
                   shadow_queue=settings.shadow_queue,
                   queue=QueuePolicy(settings.max_queue_size, settings.default_timeout_microseconds))

    def serve_with(self, runner: Runner) -> None:
        """Run every inference through ``runner`` from now on, warmed on every version serving now."""
        runner.warm([entry for versions in self.registry.snapshot.serving.values() for entry in versions.values()])
        runner.observe = self.observe_pass if self.drift is not None else None
        self.runner = runner
        self.publish_signal()

    def publish_signal(self) -> None:
        """The autoscaling signal at 0 for every model serving, from a serving process's start: an HPA
        that cannot read a metric of its rule does not scale down, and a labelled gauge appears only once
        first set (a worker without batching showed none until its first request)."""
        for name in self.registry.snapshot.serving:
            for state in ("waiting", "running"):
                metrics.queue_gauge(name, state)

    def observe_pass(self, entry: ModelVersion, rows: np.ndarray) -> None:
        """The rows of a forward pass that ran, each scored for its version's drift (``DRIFT_WINDOW``):
        once per pass, so merged one-sample requests cost one vectorised score (it cost 4.5 % of a
        worker's samples scored per request, ``py-spy``)."""
        self.drift.observe(entry.name, entry.version, entry.metadata, rows)

    def tick(self) -> None:
        """The plane's periodic work, about once a second (the repository watcher's loop): the drift
        gauges of samples not yet published."""
        if self.drift is not None:
            self.drift.flush()

    # -- metadata ---------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self.registry.snapshot.models)

    def describe(self, name: str) -> dict[str, Any]:
        snap = self.registry.snapshot  # one state for both
        info = snap.describe(name)
        serving = snap.serving.get(name, {})
        families = metrics.collect()  # the multiprocess files read once for all four readers
        labelled = accuracy.read(families) if self.capture is not None else {}
        drifts = drift.read(families) if self.drift is not None else {}
        served = statistics.read(families)
        for row in info["versions"]:
            key = (name, row["version"])
            if key in labelled:
                right, wrong = labelled[key]
                row["feedback"] = {"labelled": right + wrong, "right": right,
                                   "accuracy": round(right / (right + wrong), 6) if right + wrong else None}
            if key in drifts:
                total, count = drifts[key]
                row["drift"] = {"score": round(total / count, 4) if count else None, "samples": count}
            if key in served:
                stats = served[key]
                row["requests"] = {"succeeded": stats.successes, "failed": stats.failures,
                                   "mean_ms": round(stats.ns["success"] / stats.successes / 1e6, 4)
                                   if stats.successes else None}
        return {**info, **self.rollouts.describe(name, families),
                "batching": self.runner.describe([serving[v] for v in sorted(serving)])}

    def readiness(self) -> tuple[bool, dict[str, str]]:
        return self.registry.snapshot.status()

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The version named, or the one a request naming none is described by: the rollout's primary
        when it serves, else the newest loaded one (404 / 503 otherwise)."""
        return self.registry.snapshot.get(name, version)

    def is_ready(self, name: str, version: int | None = None) -> bool:
        """Whether the model (or that version) can serve now; an unknown one is a 404 error."""
        try:
            self.resolve(name, version)
        except ServiceError as exc:
            if exc.status == 503:
                return False
            raise
        return True

    def max_values(self) -> int:
        """The most numbers any valid request may carry: the largest batch any route takes (MAX_BATCH,
        GRADCHECK_MAX_BATCH, EXPLAIN_MAX_BATCH and an explanation's baseline) of the largest model's
        samples, plus room for the other fields (labels, parameters)."""
        features = max((e.network.input_features for vs in self.registry.snapshot.models.values() for e in vs.values()),
                       default=0)
        limits = self.limits
        rows = max(limits.max_batch, limits.gradcheck_max_batch, limits.explain_max_batch + 1)
        return rows * max(features, 1) + 4096

    def ready_versions(self, name: str) -> list[int]:
        return [v["version"] for v in self.registry.snapshot.describe(name)["versions"] if v["status"] == "ready"]

    def version_policy(self, name: str) -> VersionPolicy:
        """The policy choosing the model's served versions (its own config.json's, else the server's)."""
        return self.registry.snapshot.policy_of(name)

    def statistics(self, name: str | None = None, version: int | None = None) -> list[tuple[str, int, VersionStats]]:
        """Inference statistics of every serving version (of one model, or one version), summed over
        the workers; a version that served no request yet is listed with zeros."""
        if name is None:
            keys = [(n, v) for n, versions in sorted(self.registry.snapshot.models.items()) for v in sorted(versions)]
        elif version is None:
            keys = [(name, v) for v in self.ready_versions(name)]  # a 404 for an unknown model
        else:
            keys = [(name, self.resolve(name, version).version)]
        recorded = statistics.read()
        return [(n, v, recorded.get((n, v)) or VersionStats()) for n, v in keys]

    # -- running ----------------------------------------------------------------------------
    def infer(self, name: str, version: int | None, inputs: np.ndarray, field: str = "inputs",
              request_id: str | None = None, route_key: str | None = None, timeout_us: int | None = None,
              received: float | None = None) -> Inference:
        """Class probabilities for a batch of samples, in one vectorised forward pass.

        ``inputs`` is (batch, *sample) with a sample either flat (``prod(input_shape)`` values) or
        in the model's ``input_shape``; any real or integer dtype. Without a ``version`` the model's
        rollout chooses one (by ``route_key`` when the client sent one: ``rollouts.py``); with one,
        that version serves. A request with a ``request_id`` may be captured (``CAPTURE_DIR``); every
        sample computed counts towards its version's drift score (per pass: :meth:`observe_pass`). The
        queue policy applies (``timeout_us``, the request's own timeout, counted from ``received``, a
        ``time.perf_counter()``): a 503 when the process's queue is full, a 504 when the deadline passes
        before the batch runs.
        """
        check_batch_size(inputs, self.limits.max_batch, field)
        if version is None:
            entry, rollout, canary = self.rollouts.route(name, route_key)
        else:
            entry, rollout, canary = self.resolve(name, version), None, False
        stats = statistics.recorder(entry.name, entry.version)  # only versions that exist are counted
        start = time.perf_counter()
        ticket = None
        try:
            ticket = self.queue.admit(entry.name, timeout_us, received)  # refused: counted as failed, as Triton
            batch = as_batch(inputs, entry, field)
            prepared = time.perf_counter()
            # validated first: a bad request never joins a batch; the runner may merge this one with others
            probabilities = self.runner.run(entry, batch, ticket)
            computed = time.perf_counter()
            if not math.isfinite(probabilities.sum()):  # weights that overflow: the version is broken
                raise ServiceError(500, "model_failed", f"{entry.name}/{entry.version} answered non-finite "
                                   "probabilities")
            classes = probabilities.argmax(axis=1)
        except BaseException as exc:  # a bad sample (a 422) or a bug: the request failed on this version
            stats.failed(time.perf_counter() - start)
            if rollout is not None:
                self.rollouts.failed(rollout, entry, canary, exc)
            raise
        finally:
            if ticket is not None:
                self.queue.release(ticket)
        stats.succeeded(len(batch), prepared - start, computed - prepared, time.perf_counter() - computed)
        if rollout is not None:
            self.rollouts.served(rollout, entry, canary, batch, probabilities, classes)
        metrics.observe_batch(entry.name, len(batch))
        result = Inference(entry.name, entry.version, entry.labels, probabilities, classes)
        if self.capture is not None and request_id is not None and self.capture.sample_rate > 0:
            self.capture.offer(request_id, entry.name, entry.version, result.predicted(), batch, probabilities)
        return result


# -- the rules for one batch ----------------------------------------------------------------------
def check_samples(inputs: np.ndarray | list[Any], field: str = "inputs") -> None:
    """A 422 for inputs that are no batch of samples (a V2 tensor of shape [] is a single number)."""
    if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
        raise invalid(field, "expected a batch of samples (the first dimension), not a single number")


def check_batch_size(inputs: np.ndarray | list[Any], limit: int, field: str = "inputs") -> None:
    check_samples(inputs, field)
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
    lo, hi = entry.input_range  # within what the network's dtype holds
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


def label_indices(labels: list[str], entry: ModelVersion, field: str = "labels") -> np.ndarray:
    index = {label: i for i, label in enumerate(entry.labels)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if label not in index:
            raise invalid(f"{field}.{i}", f"unknown class {label!r}; the model's labels are {entry.labels}")
        out[i] = index[label]
    return out
