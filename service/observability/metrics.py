"""Prometheus metrics, correct across gunicorn workers.

``python -m service`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory) before gunicorn starts,
so every worker writes its samples there and ``/metrics`` aggregates them with
``MultiProcessCollector``; the gunicorn config marks dead workers. In-process (tests, ``flask run``)
the default registry is used.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as _values
from prometheus_client.metrics_core import Metric

from service.observability import process

if _values.ValueClass is not _values.MutexValue:  # multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
    # Before any metric exists (every module that makes one imports this one first): prometheus_client
    # asks its process identifier before every sample it writes, to notice a fork; ours answers
    # without a system call (observability/process.py).
    _values.ValueClass = _values.MultiProcessValue(process.current)

UNKNOWN_MODEL = "(unknown)"  # the one label value of every model name that is not on record

REQUESTS = Counter("nn_requests_total", "HTTP requests answered", ["endpoint", "model", "status"])
LATENCY = Histogram("nn_request_duration_seconds", "Time to answer a request", ["endpoint", "model"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
BATCH = Histogram("nn_batch_size", "Samples per inference request (kind=request) and per forward pass run "
                  "(kind=executed: requests merged by the batcher)", ["model", "kind"],
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
BODIES_REFUSED = Counter("nn_request_bodies_refused_total",
                         "Large bodies refused with a 503: BODY_BUFFER_BYTES stayed full for REQUEST_TIMEOUT")
QUEUE = Histogram("nn_batch_queue_seconds", "Time a request waited in the batcher before its forward pass started",
                  ["model"], buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0))
REQUEST_TIMEOUTS = Counter("nn_request_timeouts_total", "Requests whose body did not arrive within REQUEST_TIMEOUT")
LOAD_FAILURES = Counter("nn_model_load_failures_total", "Model versions that failed to load", ["model"])
# The queue policy (service/batching/queue_policy.py) and the autoscaling signal: requests in the data plane
# now, summed over the live processes, by whether they wait for their forward pass or run in it.
QUEUE_REQUESTS = Gauge("nn_requests_in_progress", "Inference requests in the data plane now, waiting for their "
                       "forward pass or running in it", ["model", "state"], multiprocess_mode="livesum")
SHED = Counter("nn_requests_shed_total", "Inference requests refused by the queue policy: queue_full (MAX_QUEUE_SIZE) "
               "or deadline (not computed: the deadline passed first)", ["reason"])
for _reason in ("queue_full", "deadline"):
    SHED.labels(_reason)  # zeros before the first refusal


def observe_request(endpoint: str, model: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency (labelled children cached: this runs every request)."""
    key = (endpoint, model, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (REQUESTS.labels(endpoint, model, str(status)),
                                              LATENCY.labels(endpoint, model))
    children[0].inc()
    children[1].observe(seconds)


_request_children: dict[tuple[str, str, int], tuple] = {}


def observe_batch(model: str, size: int) -> None:
    """One inference request's samples."""
    _child(BATCH, (model, "request")).observe(size)


def observe_executed(model: str, size: int) -> None:
    """One forward pass's samples (several requests' when the batcher merged them)."""
    _child(BATCH, (model, "executed")).observe(size)


def observe_queue(model: str, seconds: float) -> None:
    _child(QUEUE, (model,)).observe(seconds)


def queue_gauge(model: str, state: str) -> Any:
    """The gauge of one model's requests in one state (``waiting`` or ``running``)."""
    return _child(QUEUE_REQUESTS, (model, state))


def _child(metric, labels: tuple[str, ...]):
    """The labelled child, cached (these run on every request; model names are the served ones only)."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


_children: dict[tuple, Any] = {}


def registry() -> CollectorRegistry:
    """What every process recorded: their files summed under ``python -m service``, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed)
        return summed
    from prometheus_client import REGISTRY

    return REGISTRY


def collect() -> list[Metric]:
    """Every metric family recorded so far, summed over the processes: one read of the multiprocess
    files, which a caller needing several families (``GET /models/<name>``) shares among their readers."""
    return list(registry().collect())


def render() -> tuple[bytes, str]:
    """The exposition text for ``/metrics`` and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


# The capture journal (service/capture/): inferences recorded to CAPTURE_DIR and feedback events. Every
# child is made here, so a scrape shows zeros before the first capture and the labels stay these.
CAPTURE_KINDS = ("capture", "feedback")
CAPTURE_OUTCOMES = ("written", "dropped_queue", "dropped_budget", "dropped_error")
CAPTURE_RECORDS = Counter("nn_capture_records_total",
                          "Captured inferences (kind=capture) and feedback events (kind=feedback): written to "
                          "CAPTURE_DIR, or dropped because the queue was full, the disk budget (CAPTURE_MAX_BYTES) "
                          "was full, or the disk refused the write", ["kind", "outcome"])
CAPTURE_BYTES = Counter("nn_capture_bytes_total", "Bytes written to CAPTURE_DIR", ["kind"])
for _kind in CAPTURE_KINDS:
    CAPTURE_BYTES.labels(_kind)
    for _outcome in CAPTURE_OUTCOMES:
        CAPTURE_RECORDS.labels(_kind, _outcome)
