"""Gradient checks and explanations: long float64 computations on a copy of a served model.

Both read a served version through the data plane (lookup, shape and range checks, labels), are
bounded by an estimated cost and by slots shared across every worker (``GRADCHECK_CONCURRENCY``, so
at least one worker stays free for ``/predict``), and hand the computation itself to an offload
function (the worker's background thread in the server; inline elsewhere), so the checks and the
slot are taken in the caller's thread and a request over a limit is told so at once. No HTTP here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.attribution import METHODS, Attribution, attribute, rows_needed
from model.gradcheck import GradCheckResult, gradient_check
from model.layers import BatchNorm1d
from service.dataplane.dataplane import DataPlane, Inference, as_batch, check_samples, label_indices
from service.dataplane.semaphore import CrossProcessSemaphore
from service.errors import ServiceError, invalid, too_large
from service.observability import metrics, tracing
from service.repository.model_version import ModelVersion

Offload = Callable[..., Any]  # runs a long computation: fn(*args, **kwargs), somewhere; returns its result


def run_inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


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
    """What an explanation request may choose (defaults documented in ``docs/http-api.md``)."""

    method: str = DEFAULT_METHOD
    output: str = "probability"
    baseline: float | np.ndarray = 0.0
    steps: int = 64
    noise: float = 0.15
    samples: int = 32
    seed: int = 0
    given: frozenset[str] = frozenset()  # the fields the client set, so one its method ignores is refused


class Diagnostics:
    """``/gradcheck`` and ``/explain`` (and the protocols' explanations) on the data plane's models."""

    def __init__(self, plane: DataPlane, state_dir: Path | None = None, run: Offload = run_inline) -> None:
        """``run`` carries out the long computations: inline by default; the HTTP server's worker passes
        its background thread, so its event loop goes on answering other connections meanwhile."""
        self.plane = plane
        self.run = run
        self.limits = plane.limits
        # at most gradcheck_concurrency at once across all workers, so one worker stays free for /predict
        self.gradcheck_slots = CrossProcessSemaphore(self.limits.gradcheck_concurrency, state_dir, "gradcheck")

    def resolve(self, name: str, version: int | None) -> ModelVersion:
        return self.plane.resolve(name, version)

    def gradcheck(self, name: str, version: int | None, inputs: np.ndarray, labels: list[str], *, mode: str,
                  epsilon: float, samples: int, seed: int, tolerance: float, field: str = "inputs") -> Gradcheck:
        """The library's gradient check on a float64 copy of the served weights, within the limits.

        The checks and the slot are taken here, in the caller's thread, so a request over the limit is
        told so at once (503) wherever it lands; only the check itself goes to ``run`` (the worker's
        background thread in the server)."""
        limits = self.limits
        check_samples(inputs, field)
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
        if len(inputs) < 2 and any(isinstance(layer, BatchNorm1d) for layer in entry.network.layers):
            # the check runs the training-mode network, whose BatchNorm needs a batch (as PyTorch's does)
            raise invalid(field, f"{entry.name} has a BatchNorm layer: a gradcheck of it takes 2 inputs or more")
        batch = as_batch(inputs, entry, field)
        targets = label_indices(labels, entry)
        with self.gradcheck_slots.hold() as held:
            if not held:
                raise ServiceError(503, "gradcheck_busy", f"{limits.gradcheck_concurrency} gradcheck(s) already "
                                   "running, the server's limit (GRADCHECK_CONCURRENCY); retry shortly",
                                   headers={"Retry-After": "1"})
            start = time.perf_counter()
            with tracing.span("gradcheck", {"model.name": entry.name, "model.version": entry.version,
                                            "gradcheck.mode": mode, "gradcheck.samples": samples,
                                            "batch.rows": len(batch)}):
                result = self.run(gradient_check, entry.network, batch, targets, mode=mode, epsilon=epsilon,
                                  samples=samples, seed=seed, tolerance=tolerance)
        return Gradcheck(entry.name, entry.version, samples, result, time.perf_counter() - start)


    def explain(self, name: str, version: int | None, inputs: np.ndarray, targets: list[str] | None,
                options: ExplainOptions, field: str = "inputs") -> Explanation:
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
        check_samples(inputs, field)
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
            with tracing.span("explain", {"model.name": entry.name, "model.version": entry.version,
                                          "explain.method": options.method, "batch.rows": len(batch)}):
                result = self.run(attribute, entry.network, batch, classes, method=options.method,
                                  output=options.output, baseline=start, steps=options.steps, noise=options.noise,
                                  samples=options.samples, seed=options.seed)
        return Explanation(inference, [entry.labels[k] for k in classes.tolist()], result,
                           time.perf_counter() - began)


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
