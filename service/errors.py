"""The service's one error type, its constructors, and pydantic errors in its shape. No Flask here.

Everything that refuses a request raises :class:`ServiceError`: the data plane, the registry and
every protocol codec. How it is rendered is each protocol's business (``service/app/error_handlers.py``
renders it once per protocol); what it says is decided here.

``details`` is ``None`` or a list of ``{"loc", "message", "type"}`` naming the offending field in
dotted form (``inputs.3.0``); limit errors add ``limit`` and ``got``.
"""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import ValidationError

QUOTE_LIMIT = 80  # characters of a client's value that an error message repeats
# A container is quoted a few levels and items deep: ``repr`` of a list nested 1,000 deep (JSON's parser
# takes 1,024) raised RecursionError inside the error path, a 500; and of a large one built it whole.
_CONTAINER = reprlib.Repr()  # Python 3.11's takes no arguments
_CONTAINER.maxlevel = 3
for _kind in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_CONTAINER, _kind, 8)
_CONTAINER.maxstring = _CONTAINER.maxlong = _CONTAINER.maxother = QUOTE_LIMIT


def quote(value: Any) -> str:
    """A client's value for an error message: ``repr`` (quotes; newlines, control characters and lone
    surrogates escaped, so it can forge no log line and breaks no encoder), cut to ``QUOTE_LIMIT``."""
    text = repr(value) if isinstance(value, str | int | float | bool | None) else _CONTAINER.repr(value)
    return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}...({len(text)} characters)"


def encodable(text: str) -> str:
    """``text`` with any lone surrogate escaped (``\\ud800``): valid UTF-8 for every encoder."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ServiceError(Exception):
    """An error answered to the client with ``status`` and a stable machine-readable ``code``.

    Its message and details are made encodable here, once: a location built from a client's key
    (``extra`` fields) or any text that slipped past :func:`quote` cannot break the error body."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        message = encodable(message)
        if details is not None:
            details = [{k: encodable(v) if isinstance(v, str) else v for k, v in d.items()} for d in details]
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


# Status -> code for errors the HTTP layer raises itself (404 route, 405 method, 413 body ...).
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
              413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
              422: "validation_error", 431: "header_fields_too_large", 500: "internal_error", 501: "not_implemented",
              503: "unavailable"}


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, "bad_request", message)


def not_found(message: str) -> ServiceError:
    return ServiceError(404, "not_found", message)


def unavailable(message: str, reasons: dict[str, str]) -> ServiceError:
    """A 503: the model version exists but failed to load; ``reasons`` maps ``"<version>"`` to why."""
    return ServiceError(503, "model_unavailable", message,
                        [{"loc": "version", "message": f"version {version}: {reason}", "type": "model_unavailable"}
                         for version, reason in reasons.items()])


def invalid(loc: str, message: str, kind: str = "value_error") -> ServiceError:
    """A 422 for one field, in the same shape as pydantic's errors."""
    where = f"{loc}: " if loc else ""
    return ServiceError(422, "validation_error", f"{where}{message}", [{"loc": loc, "message": message, "type": kind}])


def too_large(status: int, code: str, loc: str, message: str, limit: int, got: int) -> ServiceError:
    """A limit was exceeded: ``details`` names the field, the limit and what was sent."""
    return ServiceError(status, code, message,
                        [{"loc": loc, "message": message, "type": "limit_exceeded", "limit": limit, "got": got}])


def internal(request_id: str) -> ServiceError:
    """A bug: the body names the request id to find in the log, and nothing else."""
    return ServiceError(500, "internal_error",
                        f"internal server error; the server log has the details under request id {request_id}")


# -- pydantic's errors in this shape --------------------------------------------------------------
def location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def is_branch(part: Any) -> bool:
    """A union member's tag in a pydantic error path, e.g. ``list[float]``."""
    return isinstance(part, str) and "[" in part


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc": "inputs.3.0", "message", "type"}]`` (never echoing the input).

    Where a value failed every member of a union, only the member with the fewest errors is
    reported, the likeliest one the client meant, and the member tags are dropped from the path.
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
        details.append({"loc": location(tuple(p for p in loc if not is_branch(p))),
                        "message": e["msg"].removeprefix("Value error, "),  # a validator's own words
                        "type": e["type"]})
    return details


def from_validation_error(exc: ValidationError) -> ServiceError:
    """A pydantic failure as a 422 (a 400 if the JSON itself was unreadable) naming the first field."""
    details = validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return ServiceError(400, "bad_request", "request body is not valid JSON", details)
    first = details[0] if details else {"loc": "", "message": "invalid"}
    where = f" at {first['loc']}" if first["loc"] else ""
    return ServiceError(422, "validation_error", f"{first['message']}{where}", details)
