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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.attribution import METHODS, Attribution, attribute, rows_needed
from model.gradcheck import GradCheckResult, gradient_check
from service import metrics, statistics
from service.config import Settings
from service.errors import ServiceError, invalid, too_large
from service.policy import VersionPolicy
from service.registry import ModelRegistry, ModelVersion
from service.slots import Slots
from service.statistics import VersionStats

Offload = Callable[..., Any]  # runs a long computation: fn(*args, **kwargs), somewhere; returns its result


def run_inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (from the settings; see the README's configuration table)."""

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


@dataclass(frozen=True)
class Gradcheck:
    model: str
    version: int
    samples: int
    result: GradCheckResult
    seconds: float


@dataclass(frozen=True)
class Explanation:
    """Attributions (batch, features) float64 of each input's target class, beside the batch's inference."""

    inference: Inference
    targets: list[str]
    result: Attribution
    seconds: float


# The explanation a protocol gives when the client names no method (V1's :explain, V2's output).
DEFAULT_METHOD = "integrated_gradients"
# Which request fields each method reads; a field sent to a method that ignores it is refused.
METHOD_FIELDS = {"integrated_gradients": {"baseline", "steps"}, "smoothgrad": {"noise", "samples", "seed"}}


@dataclass(frozen=True)
class ExplainOptions:
    """What an explanation request may choose (defaults documented in the README)."""

    method: str = DEFAULT_METHOD
    output: str = "probability"
    baseline: float | np.ndarray = 0.0
    steps: int = 64
    noise: float = 0.15
    samples: int = 32
    seed: int = 0
    given: frozenset[str] = frozenset()  # the fields the client set, so one its method ignores is refused


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
    """Models by name and version, and the three things a client can run on them."""

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

    def max_values(self) -> int:
        """The most numbers any valid request may carry: MAX_BATCH samples of the largest model, plus
        room for the other fields (labels, parameters)."""
        features = max((e.network.input_features for vs in self.registry.models.values() for e in vs.values()),
                       default=0)
        return self.limits.max_batch * max(features, 1) + 4096

    def ready_versions(self, name: str) -> list[int]:
        return [v["version"] for v in self.describe(name)["versions"] if v["status"] == "ready"]

    def version_policy(self, name: str) -> VersionPolicy:
        """The policy choosing the model's served versions (its own config.json's, else the server's)."""
        return self.registry.policy_of(name)

    def statistics(self, name: str | None = None, version: int | None = None) -> list[tuple[str, int, VersionStats]]:
        """Inference statistics of every serving version (of one model, or one version), summed over
        the workers; a version that served no request yet is listed with zeros."""
        if name is None:
            keys = [(n, v) for n, versions in sorted(self.registry.models.items()) for v in sorted(versions)]
        elif version is None:
            self.describe(name)  # the 404 for an unknown model
            keys = [(name, v) for v in self.ready_versions(name)]
        else:
            keys = [(name, self.resolve(name, version).version)]
        recorded = statistics.read()
        return [(n, v, recorded.get((n, v)) or VersionStats()) for n, v in keys]

    # -- running ----------------------------------------------------------------------------
    def infer(self, name: str, version: int | None, inputs: np.ndarray, field: str = "inputs") -> Inference:
        """Class probabilities for a batch of samples, in one vectorised forward pass.

        ``inputs`` is (batch, *sample) with a sample either flat (``prod(input_shape)`` values) or
        in the model's ``input_shape``; any real or integer dtype.
        """
        check_batch_size(inputs, self.limits.max_batch, field)
        entry = self.resolve(name, version)
        stats = statistics.recorder(entry.name, entry.version)  # only versions that exist are counted
        start = time.perf_counter()
        try:
            batch = as_batch(inputs, entry, field)
            prepared = time.perf_counter()
            # validated first: a bad request never joins a batch; the runner may merge this one with others
            probabilities = self.runner.run(entry, batch)
            computed = time.perf_counter()
            classes = probabilities.argmax(axis=1)
        except BaseException:  # a bad sample (a 422) or a bug: the request failed on this version
            stats.failed(time.perf_counter() - start)
            raise
        stats.succeeded(len(batch), prepared - start, computed - prepared, time.perf_counter() - computed)
        metrics.observe_batch(entry.name, len(batch))
        return Inference(entry.name, entry.version, entry.labels, probabilities, classes)

    def gradcheck(self, name: str, version: int | None, inputs: np.ndarray, labels: list[str], *, mode: str,
                  epsilon: float, samples: int, seed: int, tolerance: float, field: str = "inputs",
                  run: Offload = run_inline) -> Gradcheck:
        """The library's gradient check on a float64 copy of the served weights, within the limits.

        The checks and the slot are taken here, in the caller's thread, so a request over the limit is
        told so at once (503) wherever it lands; only the check itself goes to ``run`` (the worker's
        background thread in the server)."""
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
            result = run(gradient_check, entry.network, batch, targets, mode=mode, epsilon=epsilon, samples=samples,
                         seed=seed, tolerance=tolerance)
        return Gradcheck(entry.name, entry.version, samples, result, time.perf_counter() - start)


    def explain(self, name: str, version: int | None, inputs: np.ndarray, targets: list[str] | None,
                options: ExplainOptions, field: str = "inputs", run: Offload = run_inline) -> Explanation:
        """Attributions from the backward pass of a float64 copy of the served weights, within the limits.

        ``targets`` names a class per input (None: each input's predicted class). The work is bounded
        by an estimated cost and shares the gradcheck's slots (GRADCHECK_CONCURRENCY), so at least
        one worker stays free for /predict.
        """
        limits = self.limits
        if options.method not in METHODS:
            raise invalid("method", f"unknown method {options.method!r}; one of {list(METHODS)}")
        for name_ in sorted(options.given & set().union(*METHOD_FIELDS.values())):
            if name_ not in METHOD_FIELDS.get(options.method, set()):
                uses = next(m for m, fields in METHOD_FIELDS.items() if name_ in fields)
                raise invalid(name_, f"{name_} applies to method '{uses}' only, not to '{options.method}'")
        if len(inputs) > limits.explain_max_batch:
            raise too_large(422, "explain_too_large", field, f"an explanation takes at most "
                            f"{limits.explain_max_batch} inputs (EXPLAIN_MAX_BATCH)", limits.explain_max_batch,
                            len(inputs))
        if options.steps > limits.explain_max_steps:
            raise too_large(422, "explain_too_large", "steps", f"steps is limited to {limits.explain_max_steps} "
                            "(EXPLAIN_MAX_STEPS)", limits.explain_max_steps, options.steps)
        if options.samples > limits.explain_max_samples:
            raise too_large(422, "explain_too_large", "samples", f"samples is limited to "
                            f"{limits.explain_max_samples} (EXPLAIN_MAX_SAMPLES)", limits.explain_max_samples,
                            options.samples)
        if targets is not None and len(targets) != len(inputs):
            raise invalid("targets", f"{len(targets)} targets for {len(inputs)} inputs: one class name per input")
        entry = self.resolve(name, version)
        cost = explain_cost(entry.network, options, len(inputs))
        if cost > limits.explain_max_cost:
            fits = int(limits.explain_max_cost // explain_cost(entry.network, options, 1))
            knob = {"integrated_gradients": "steps", "smoothgrad": "samples"}.get(options.method)
            instead = (f"send at most {fits} inputs with these settings" if fits else "send one input") + \
                (f", or fewer {knob}" if knob else "")
            raise too_large(422, "explain_too_large", knob or field,
                            f"this explanation would take about {cost:.3g} multiply-adds, over EXPLAIN_MAX_COST="
                            f"{limits.explain_max_cost:.3g}: {instead}", int(limits.explain_max_cost), int(cost))
        batch = as_batch(inputs, entry, field)
        start = as_baseline(options.baseline, entry)
        metrics.observe_batch(entry.name, len(batch))
        probabilities = entry.network.predict_proba(batch)
        inference = Inference(entry.name, entry.version, entry.labels, probabilities, probabilities.argmax(axis=1))
        classes = label_indices(targets, entry, "targets") if targets is not None else inference.classes
        with self.gradcheck_slots.hold() as held:
            if not held:
                raise ServiceError(503, "explain_busy", f"{limits.gradcheck_concurrency} gradcheck(s) or "
                                   "explanation(s) already running, the server's limit (GRADCHECK_CONCURRENCY); "
                                   "retry shortly", headers={"Retry-After": "1"})
            began = time.perf_counter()
            result = run(attribute, entry.network, batch, classes, method=options.method, output=options.output,
                         baseline=start, steps=options.steps, noise=options.noise, samples=options.samples,
                         seed=options.seed)
        return Explanation(inference, [entry.labels[k] for k in classes.tolist()], result,
                           time.perf_counter() - began)


# -- the rules for one batch ----------------------------------------------------------------------
def explain_cost(network, options: ExplainOptions, inputs: int) -> float:
    """Multiply-adds an explanation costs, about: a forward and an input-gradient backward pass
    (each about one multiply-add per parameter) for every row it runs (``rows_needed``)."""
    return 2.0 * network.num_params * rows_needed(options.method, inputs, options.steps, options.samples)


def as_baseline(baseline: float | np.ndarray, entry: ModelVersion, field: str = "baseline") -> float | np.ndarray:
    """Integrated gradients' starting point: a number, or one sample (flat or in the input shape),
    within the model's input range as any input is (so the path stays where the model was trained)."""
    size = math.prod(entry.input_shape)
    arr = np.asarray(baseline, dtype=np.float64)
    if arr.ndim and arr.shape not in ((size,), entry.input_shape):
        raise invalid(field, f"has shape {'x'.join(map(str, arr.shape))}, expected a number or {size} values"
                      + (f" (or {'x'.join(map(str, entry.input_shape))})" if len(entry.input_shape) > 1 else ""))
    flat = arr.reshape(-1)
    lo, hi = entry.input_range
    outside = ~((flat >= lo) & (flat <= hi))  # NaN is outside too
    if outside.any():
        j = int(np.argwhere(outside)[0][0])
        raise invalid(f"{field}.{j}" if arr.ndim else field, f"value {float(flat[j]):g} is outside the model's "
                      f"input range [{lo:g}, {hi:g}]")
    return float(arr) if arr.ndim == 0 else flat


def gradcheck_cost(network, inputs: int, mode: str, samples: int) -> float:
    """Multiply-adds a gradcheck costs, about: two forward passes of the batch per comparison (full:
    one comparison per parameter; sampled and directional: ``samples`` per parameter tensor)."""
    params = network.num_params
    comparisons = params if mode == "full" else samples * len(network.named_params())
    return 2.0 * comparisons * params * inputs


def check_batch_size(inputs: np.ndarray | list[Any], limit: int, field: str = "inputs") -> None:
    if isinstance(inputs, np.ndarray) and inputs.ndim == 0:  # e.g. a V2 tensor of shape []
        raise invalid(field, "expected a batch of samples (the first dimension), not a single number")
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


def label_indices(labels: list[str], entry: ModelVersion, field: str = "labels") -> np.ndarray:
    index = {label: i for i, label in enumerate(entry.labels)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if label not in index:
            raise invalid(f"{field}.{i}", f"unknown class {label!r}; the model's labels are {entry.labels}")
        out[i] = index[label]
    return out
