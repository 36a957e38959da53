"""What every request through Flask gets before and after its view: a request id, the body decoded
once (content coding, strict JSON for the own protocol), the response's headers and compression, and
its record (metrics and the log line, ``service/observability/request_record.py``)."""

from __future__ import annotations

import time
from typing import Any

from flask import Request, Response, current_app, g, request

from service.errors import ServiceError, bad_request, invalid
from service.observability import request_record, tracing
from service.protocols import content_coding, json_codec

JSON_BODY_BLUEPRINTS = {"inference"}
BODY_METHODS = {"POST", "PUT", "PATCH"}


class StrictJSONRequest(Request):
    """A request whose malformed JSON body is a 400 that says what is wrong (the one place it is answered)."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise bad_request(f"request body is not valid JSON: {e}")


def before() -> None:
    req = request._get_current_object()  # one proxy lookup, not one per attribute (the hot path)
    ctx = g._get_current_object()
    ctx.start = time.perf_counter()
    ctx.request_id = request_record.request_id(req.headers.get("X-Request-ID"))
    if tracing.ENABLED:
        ctx.server_span = server_span(req)
    coding = req.headers.get("Content-Encoding")
    if coding and req.method in BODY_METHODS and req.routing_exception is None:
        # Every protocol's body, decompressed once here (protocols/content_coding.py: bounded by MAX_BODY_BYTES);
        # werkzeug's cached body is then what get_data() and get_json() read.
        limit = current_app.extensions["settings"].max_body_bytes
        req._cached_data = content_coding.decode(req.get_data(), coding, limit)
    # This service's own protocol takes JSON only; the standard protocols' codecs read their bodies
    # themselves (an Open Inference Protocol body may be JSON followed by raw tensor bytes).
    if req.method == "POST" and req.routing_exception is None and req.blueprint in JSON_BODY_BLUEPRINTS:
        if not req.is_json:
            raise ServiceError(415, "unsupported_media_type",
                               f"send the body as application/json (got {req.mimetype or 'no content type'})")
        # Parse once, strictly (a 400 for malformed JSON); flask-openapi3 then reads the cached result.
        # Only an object can be a request; flask-openapi3 would re-parse a JSON string as JSON text.
        json_codec.check_value_count(req.get_data(), current_app.extensions["dataplane"].max_values)
        if not isinstance(req.get_json(silent=False), dict):
            raise invalid("", "Input should be a valid dictionary (a JSON object)", "model_type")


def server_span(req: Request) -> tracing.ServerSpan:
    """The request's server span (``service/observability/tracing.py``), current until :func:`teardown`:
    named by its method and route template (only the method for a path no route matches)."""
    attributes = {"http.request.method": req.method, "url.path": req.path, "url.scheme": req.scheme}
    name = req.method
    if req.url_rule is not None:
        attributes["http.route"] = route = tracing.http_route(req.url_rule.rule)
        name = f"{req.method} {route}"
    return tracing.ServerSpan(name, tracing.environ_header(req.environ), attributes)


def compressible(req: Request, response: Response) -> bool:
    """A body held in memory and not encoded yet (files, the page's assets, stream by themselves)."""
    return (req.method != "HEAD" and not response.direct_passthrough and not response.is_streamed
            and "Content-Encoding" not in response.headers and response.status_code not in (204, 304))


def after(response: Response) -> Response:
    req = request._get_current_object()
    ctx = g._get_current_object()
    start = getattr(ctx, "start", None)
    elapsed = time.perf_counter() - start if start is not None else 0.0
    endpoint = req.url_rule.rule if req.url_rule else "unmatched"
    model = getattr(ctx, "model", None)
    request_id = getattr(ctx, "request_id", "")
    response.headers["X-Request-ID"] = request_id
    response.headers["X-Content-Type-Options"] = "nosniff"  # an API's bodies are never to be sniffed
    if "Accept-Encoding" in req.headers and compressible(req, response):
        body, coding = content_coding.for_client(response.get_data(), req.headers["Accept-Encoding"])
        if coding is not None:
            response.set_data(body)
            response.headers["Content-Encoding"] = coding
        response.vary.add("Accept-Encoding")
    request_record.record(current_app.extensions["model_registry"].snapshot, endpoint, req.method, req.path, model,
                          getattr(ctx, "batch_size", None), response.status_code, elapsed, request_id)
    span = getattr(ctx, "server_span", None)
    if span is not None:
        attributes = {"http.response.status_code": response.status_code}
        if model:
            attributes["model.name"] = model
        span.finish(response.status_code >= 500, attributes)
    return response


def teardown(exc: BaseException | None) -> None:
    """A server span that :func:`after` did not finish (an error past the handlers) ends here, failed."""
    span = getattr(g._get_current_object(), "server_span", None)
    if span is not None:
        span.finish(True)
