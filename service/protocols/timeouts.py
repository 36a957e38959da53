"""A request's own timeout, as each protocol carries it (the queue policy: ``service/batching/queue_policy.py``).

The Open Inference Protocol's ``timeout`` request parameter, in microseconds, as Triton reads it (REST
and gRPC); on every HTTP protocol the ``X-Timeout-Microseconds`` header; over gRPC the call's own
deadline too. When a request carries more than one, the shortest counts; 0 means none.
"""

from __future__ import annotations

from typing import Any

from service.batching.queue_policy import parse_timeout

HEADER = "X-Timeout-Microseconds"
ENVIRON = "HTTP_X_TIMEOUT_MICROSECONDS"  # the header in a WSGI environ
PARAMETER = "timeout"


def of(header: str | None, parameters: dict[str, Any] | None = None) -> int | None:
    """The request's timeout in microseconds (None: none), or a 400 for one that is not a whole number."""
    found = [parse_timeout(header, HEADER) if header is not None else None,
             parse_timeout(parameters.get(PARAMETER), f"parameters.{PARAMETER}") if parameters else None]
    found = [t for t in found if t]
    return min(found) if found else None
