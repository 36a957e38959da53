"""Prometheus metrics, correct across gunicorn workers.

``python -m service`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory) before gunicorn starts,
so every worker writes its samples there and ``/metrics`` aggregates them with
``MultiProcessCollector``; the gunicorn config marks dead workers. In-process (tests, ``flask run``)
the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

REQUESTS = Counter("nn_requests_total", "HTTP requests answered", ["endpoint", "model", "status"])
LATENCY = Histogram("nn_request_duration_seconds", "Time to answer a request", ["endpoint", "model"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
BATCH = Histogram("nn_batch_size", "Samples per /predict request", ["model"],
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
LOAD_FAILURES = Counter("nn_model_load_failures_total", "Model versions that failed to load", ["model"])


def render() -> tuple[bytes, str]:
    """The exposition text for ``/metrics`` and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
