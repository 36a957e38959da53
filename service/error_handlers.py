"""One error type, one JSON shape: ``{"error": {"code", "message", "details"}}`` for every failure."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from service.exceptions import ServiceError

log = logging.getLogger("service.errors")

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
              415: "unsupported_media_type", 422: "validation_error", 500: "internal_error",
              503: "unavailable"}


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    return response


def location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def is_branch(part: Any) -> bool:
    """A union member's tag in a pydantic error path, e.g. ``list[float]``."""
    return isinstance(part, str) and "[" in part


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc": "inputs.3.0", "message", "type"}]`` (never echoing the input).

    Where a value failed every member of a union (a sample is a flat list *or* a nested one),
    only the member with the fewest errors is reported, the likeliest one the client meant, and
    the member tags are dropped from the path.
    """
    errors = exc.errors(include_url=False, include_input=False)
    # per union: member -> (errors, -deepest path); fewest errors wins, then the one that got furthest
    branches: dict[tuple[Any, ...], dict[str, tuple[int, int]]] = {}
    for e in errors:
        for k, part in enumerate(e["loc"]):
            if is_branch(part):
                scores = branches.setdefault(tuple(e["loc"][:k]), {})
                count, depth = scores.get(part, (0, 0))
                scores[part] = (count + 1, min(depth, -len(e["loc"])))
                break
    chosen = {prefix: min(scores, key=scores.get) for prefix, scores in branches.items()}
    details = []
    for e in errors:
        loc = e["loc"]
        tags = [k for k, part in enumerate(loc) if is_branch(part)]
        if tags and chosen.get(tuple(loc[:tags[0]])) != loc[tags[0]]:
            continue
        details.append({"loc": location(tuple(p for p in loc if not is_branch(p))), "message": e["msg"],
                        "type": e["type"]})
    return details


def validation_error_response(exc: ValidationError) -> Response:
    details = validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(400, "bad_request", "request body is not valid JSON", details)
    first = details[0] if details else {"loc": "", "message": "invalid"}
    where = f" at {first['loc']}" if first["loc"] else ""
    return error_response(422, "validation_error", f"{first['message']}{where}", details)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return validation_error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.response is not None:  # a ready response passed to abort(), e.g. by flask-openapi3
            return exc.response
        status = exc.code or 500
        response = error_response(status, HTTP_CODES.get(status, "http_error"), exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = g.get("request_id", "-")
        log.exception("unhandled error (request_id=%s)", request_id)
        return error_response(500, "internal_error",
                              f"internal server error; the server log has the details under request id {request_id}")
