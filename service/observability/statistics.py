"""Per model version inference statistics (Triton's statistics extension), summed over all workers.

The store is Prometheus counters, the one ``/metrics`` already relies on (``service/observability/metrics.py``):
under ``python -m service`` every gunicorn worker writes its own memory-mapped file in
``PROMETHEUS_MULTIPROC_DIR`` and a reader sums all of them (``MultiProcessCollector``). So there is
no lock between workers on the hot path (an increment is a write to the worker's own page), no
extra service to run, and a worker that is replaced keeps its counts (its files stay and are
summed). In-process (tests, ``flask run``) the default registry holds them.

Only a request that reached an existing model version is counted, under that version's name and
number, so the series are bounded by the model repository, never by what a client names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from prometheus_client.metrics_core import Metric

from service.observability import metrics

# Triton's duration statistics, as seconds in Prometheus (its base unit) and nanoseconds in the API
PHASES = ("success", "fail", "compute_input", "compute_infer", "compute_output")
REQUESTS = Counter("nn_inference_requests_total", "Inference requests that reached a model version",
                   ["model", "version", "outcome"])
SAMPLES = Counter("nn_inference_samples_total", "Samples inferred successfully", ["model", "version"])
DURATION = Counter("nn_inference_duration_seconds_total", "Time spent per phase of inference (Triton's statistics)",
                   ["model", "version", "phase"])
LAST = Gauge("nn_last_inference_timestamp_seconds", "When the model version last ran an inference",
             ["model", "version"], multiprocess_mode="max")


@dataclass
class VersionStats:
    """Cumulative statistics of one model version: counts, and nanoseconds per phase."""

    successes: int = 0
    failures: int = 0
    samples: int = 0
    last_inference_ms: int = 0
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))


class Recorder:
    """The labelled children of one model version, created once (this runs on every inference)."""

    def __init__(self, model: str, version: int) -> None:
        v = str(version)
        self.success = REQUESTS.labels(model, v, "success")
        self.fail = REQUESTS.labels(model, v, "fail")
        self.samples = SAMPLES.labels(model, v)
        self.last = LAST.labels(model, v)
        self.seconds = {phase: DURATION.labels(model, v, phase) for phase in PHASES}

    def succeeded(self, samples: int, compute_input: float, compute_infer: float, compute_output: float) -> None:
        self.success.inc()
        self.samples.inc(samples)
        seconds = self.seconds
        seconds["success"].inc(compute_input + compute_infer + compute_output)
        seconds["compute_input"].inc(compute_input)
        seconds["compute_infer"].inc(compute_infer)
        seconds["compute_output"].inc(compute_output)
        self.last.set(time.time())

    def failed(self, seconds: float) -> None:
        self.fail.inc()
        self.seconds["fail"].inc(seconds)
        self.last.set(time.time())


_recorders: dict[tuple[str, int], Recorder] = {}


def recorder(model: str, version: int) -> Recorder:
    """The recorder of an existing model version (callers pass only resolved versions)."""
    key = (model, version)
    rec = _recorders.get(key)
    if rec is None:
        rec = _recorders[key] = Recorder(model, version)
    return rec


def read(families: list[Metric] | None = None) -> dict[tuple[str, int], VersionStats]:
    """Every model version's statistics so far, summed over all workers (``families``: an earlier
    ``metrics.collect()``, else read now)."""
    names = {REQUESTS._name, SAMPLES._name, DURATION._name, LAST._name}
    out: dict[tuple[str, int], VersionStats] = {}
    for family in families if families is not None else metrics.collect():
        if family.name not in names:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = sample.labels
            stats = out.setdefault((labels["model"], int(labels["version"])), VersionStats())
            if family.name == REQUESTS._name:
                if labels["outcome"] == "success":
                    stats.successes += round(sample.value)
                else:
                    stats.failures += round(sample.value)
            elif family.name == SAMPLES._name:
                stats.samples += round(sample.value)
            elif family.name == DURATION._name:
                stats.ns[labels["phase"]] += round(sample.value * 1e9)
            else:
                stats.last_inference_ms = max(stats.last_inference_ms, round(sample.value * 1000))
    return out
