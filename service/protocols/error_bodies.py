"""Each protocol's error body: one :class:`service.errors.ServiceError`, rendered in the shape its
protocol documents. Transport-free: the Flask handlers, the inference middleware and the HTTP worker's own
refusals all render through :func:`rendered`, so an error reads the same whichever layer answers it.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from service.errors import ServiceError
from service.protocols.schemas import ErrorBody, ErrorResponse

Renderer = Callable[[ServiceError], tuple[int, bytes]]


def error_body(exc: ServiceError) -> bytes:
    """This service's own ``{"error": {"code", "message", "details"}}``, built through its schema."""
    body = ErrorResponse(error=ErrorBody(code=exc.code, message=exc.message, details=exc.details))
    return body.model_dump_json().encode()


def own_error(exc: ServiceError) -> tuple[int, bytes]:
    return exc.status, error_body(exc)


def standard_error(exc: ServiceError) -> tuple[int, bytes]:
    """TF Serving / KServe V1 and the Open Inference Protocol: ``{"error": "..."}``, and 400 where this
    service says 422 (those protocols know no 422)."""
    return (400 if exc.status == 422 else exc.status), orjson.dumps({"error": exc.message})


# By path prefix, not by route, so a URL that matches no route (a 404) still answers in its protocol's shape.
RENDERERS: dict[str, Renderer] = {"/v1/": standard_error, "/v2": standard_error}


def rendered(path: str, exc: ServiceError) -> tuple[int, bytes]:
    """(status, body) of an error under ``path``, in its protocol's shape."""
    renderer = next((r for prefix, r in RENDERERS.items() if path.startswith(prefix)), own_error)
    return renderer(exc)
