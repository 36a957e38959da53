"""The key a client sends so that a rollout routes it to the same version every time (docs/rollouts.md).

HTTP: the ``X-Rollout-Key`` header (every protocol); the Open Inference Protocol (REST and gRPC) also
takes it as the request parameter ``rollout_key``, which wins over the header (gRPC: the
``x-rollout-key`` metadata). Only a hash of it is used; it is never stored or logged.
"""

from __future__ import annotations

from typing import Any

from service.errors import bad_request

HEADER = "X-Rollout-Key"
ENVIRON = "HTTP_X_ROLLOUT_KEY"  # the header in a WSGI environ
METADATA = "x-rollout-key"  # gRPC
PARAMETER = "rollout_key"


def of(header: str | None, parameters: dict[str, Any] | None = None) -> str | None:
    """The request's key: the parameter if it has one, else the header; None for neither (or empty)."""
    value = parameters.get(PARAMETER) if parameters else None
    if value is None:
        return as_sent(header) if header else None
    if not isinstance(value, str) or not value:
        raise bad_request(f"parameters.{PARAMETER} must be a non-empty string")
    return value


def as_sent(header: str) -> str:
    """A header's text as the client wrote it: WSGI hands header bytes over decoded as latin-1 (PEP 3333),
    so a key sent as UTF-8 in the header must become the key a JSON parameter carries, and route alike."""
    try:
        return header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):  # not UTF-8 bytes: the text as it came
        return header
