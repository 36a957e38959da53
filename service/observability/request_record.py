"""What every HTTP exchange gets, whether Flask dispatched it or the inference middleware answered it: a request
id, its metrics and its one log line. One home, asked by the app's hooks (``service/app/hooks.py``)
and by the inference middleware (``service/app/inference_middleware.py``)."""

from __future__ import annotations

import os
import re
from typing import Protocol

from service.observability import metrics, tracing
from service.observability.logs import log_request


class Catalogue(Protocol):
    """What serves (``service/repository/snapshot.py``'s ``Snapshot``), as far as a record asks."""

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model on record (serving or failed)."""


REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(supplied: str | None) -> str:
    """The client's ``X-Request-ID`` if it is a safe token, else 32 random hex digits (as ``uuid4().hex``,
    without building a UUID object each request)."""
    return supplied if supplied and REQUEST_ID.fullmatch(supplied) else os.urandom(16).hex()  # "$" takes a "\n"


def record(snapshot: Catalogue, endpoint: str, method: str, path: str, model: str | None, batch_size: int | None,
           status: int, elapsed: float, rid: str) -> None:
    """Count the request in ``/metrics`` (not a scrape of ``/metrics`` itself) and write its log line."""
    if endpoint != "/metrics":
        # a label value only for a model on record: a client naming others makes no new series
        known = model if not model or snapshot.knows(model) else metrics.UNKNOWN_MODEL
        metrics.observe_request(endpoint, known or "", status, elapsed)
    fields = {"method": method, "path": path, "model": model, "batch_size": batch_size, "status": status,
              "latency_ms": round(elapsed * 1000, 3), "request_id": rid}
    if tracing.ENABLED:  # the request's server span is current here (the middleware's, or the Flask hooks')
        fields["trace_id"] = tracing.trace_id()
    log_request(fields)
