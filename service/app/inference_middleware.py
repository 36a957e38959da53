"""The inference middleware: the inference routes' common case answered as plain WSGI in front of Flask,
by the same rules, for a third less CPU.

Why (``docs/architecture.md`` has the profile and the figures): with the 784-300-10 MNIST
model the forward pass is ~4% of a worker's time and the HTTP stack most of the rest. Flask's
request and app contexts, werkzeug's request and response objects, URL matching, the hooks and
flask-openapi3's wrapper cost a one-sample ``/predict`` about as much CPU as gunicorn itself does.
``python -m bench.cpu_per_request``: 1,420 -> 952 µs of CPU per MNIST request, 1,137 -> 753 per XOR.

What it takes (:data:`ROUTES`): ``POST /predict`` with an ``application/json`` body, and TF
Serving's ``POST /v1/models/{m}[/versions/{n}]:predict`` and the Open Inference Protocol's ``POST
/v2/models/{m}[/versions/{n}]/infer`` (JSON, or with the binary tensor data extension; not an
explanation), each with a ``Content-Length`` within ``MAX_BODY_BYTES``, not
``Content-Encoding``-compressed, and a body that decodes by the protocol's own codec. Everything
else -- another route, a path Flask's converters would refuse, a body the rules refuse, a
compressed one -- goes to Flask untouched (the body it read is put back), so every decoding error
is still answered in one place, by the same handlers; nothing a request can do happens twice, since
the middleware hands over before the data plane is asked. From the data plane on it does what the Flask
views do, with the same functions: ``DataPlane.infer``, the protocol's answer builder
(``service/protocols/``), errors rendered by ``protocols/error_bodies.py``'s :func:`rendered`, the
response compressed by ``protocols/content_coding.py``, the request id, metrics and log line of
``observability/request_record.py``. The integration tests run through it (every inference they
send that succeeds), and ``tests/test_inference_middleware.py`` compares its answers with Flask's, header by
header.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from werkzeug.http import HTTP_STATUS_CODES

from model.repository import NAME_PATTERN
from service.batching.queue_policy import queue_full
from service.dataplane.dataplane import INPUT, DataPlane, Inference
from service.errors import ServiceError, internal
from service.observability import request_record, tracing
from service.protocols import content_coding, json_codec, predict, rollout_key, timeouts, v1_http, v2_http
from service.protocols.error_bodies import rendered
from service.protocols.schemas import VERSION_PATTERN, PredictRequest

log = logging.getLogger("service.errors")  # where Flask's handler logs an unexpected error

JSON = "application/json"
# werkzeug's wording, as Flask's answers say it: the same status line whichever layer answers
STATUS_LINES = {code: f"{code} {phrase.upper()}" for code, phrase in HTTP_STATUS_CODES.items()}
# The environ key a server sets to when it had the request, where that is earlier than the middleware's
# call (the HTTP worker's turn before parsing): its deadline and its duration count from there.
RECEIVED = "service.received"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Call:
    """A decoded request: the data plane's arguments, and how to answer its result."""

    model: str
    version: int | None
    inputs: np.ndarray
    field: str
    respond: Callable[[Inference], tuple[bytes, Headers]]  # body, and its Content-Type (and any other) headers
    route_key: str | None = None  # a rollout's sticky key (protocols/rollout_key.py)
    timeout_us: int | None = None  # the request's own timeout (protocols/timeouts.py)


@dataclass(frozen=True)
class Route:
    """One family of views the middleware answers for.

    ``path``: a full match, with groups ``name`` and ``version`` where the URL names them, and no
    wider than the Flask route's converters and path model (a path they refuse goes to Flask, which
    refuses it); ``rules``: the Flask rule of each form (unversioned, versioned), the metrics' endpoint
    label; ``decode(body, environ, name, version, plane)``: the :class:`Call`, or None to hand over.
    """

    path: re.Pattern[str]
    rules: tuple[str, str]
    decode: Callable[[bytes, dict[str, Any], str | None, int | None, DataPlane], Call | None]
    # what the middleware takes: /predict is JSON only (a 415 otherwise, from Flask); the standard protocols read
    # any body, but a form's content type is left to Flask, where werkzeug may parse the form first
    content_types: frozenset[str] = frozenset({"", JSON, "application/octet-stream"})


def json_answer(body: Any) -> tuple[bytes, Headers]:
    return json_codec.dumps(body), [("Content-Type", JSON)]


def decode_predict(body: bytes, environ: dict[str, Any], name: str | None, version: int | None,
                   plane: DataPlane) -> Call | None:
    """``POST /predict``: the app's ``_before`` hook (count, parse, an object) and the view's model."""
    json_codec.check_value_count(body, plane.max_values)
    doc, batch = json_codec.loads_samples(body, (b"inputs",))  # batch: rows of plain numbers, parsed straight
    if not isinstance(doc, dict):
        return None
    request = PredictRequest.model_validate(doc)
    samples = json_codec.samples(request.inputs, body) if batch is None else batch
    return Call(request.model, request.version, samples, "inputs", lambda result: json_answer(predict.answer(result)),
                rollout_key.of(environ.get(rollout_key.ENVIRON)), timeouts.of(environ.get(timeouts.ENVIRON)))


def v1_answer(result: Inference, rows: bool) -> tuple[bytes, Headers]:
    body, headers = json_answer(v1_http.answer(result, rows))
    return body, [*headers, (v1_http.VERSION_HEADER, str(result.version))]


def decode_v1(body: bytes, environ: dict[str, Any], name: str | None, version: int | None,
              plane: DataPlane) -> Call:
    call = v1_http.decode(body, plane.max_values)
    return Call(name, version, call.batch, call.field, lambda result: v1_answer(result, call.rows),
                rollout_key.of(environ.get(rollout_key.ENVIRON)), timeouts.of(environ.get(timeouts.ENVIRON)))


def decode_v2(body: bytes, environ: dict[str, Any], name: str | None, version: int | None,
              plane: DataPlane) -> Call | None:
    call = v2_http.decode(body, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"), name, version, plane.max_values)
    if call.explaining:  # an explanation runs off the event loop, through Flask's view
        return None

    return Call(name, call.version, call.tensor, INPUT,
                lambda result: v2_http.framed(*v2_http.encode_outputs(call.request, result)),
                rollout_key.of(environ.get(rollout_key.ENVIRON), call.request.parameters),
                timeouts.of(environ.get(timeouts.ENVIRON), call.request.parameters))


VERSION = rf"(?:/versions/(?P<version>{VERSION_PATTERN}))?"
ROUTES = {  # by the path's first 4 characters: one dictionary look-up decides most requests
    "/pre": Route(re.compile(r"/predict"), ("/predict", "/predict"), decode_predict, frozenset({JSON})),
    "/v1/": Route(re.compile(rf"/v1/models/(?P<name>{NAME_PATTERN}){VERSION}:predict"),
                  ("/v1/models/<model:name>:predict", "/v1/models/<model:name>/versions/<version:version>:predict"),
                  decode_v1),
    "/v2/": Route(re.compile(rf"/v2/models/(?P<name>{NAME_PATTERN}){VERSION}/infer"),
                  ("/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer"), decode_v2),
}


class InferenceMiddleware:
    """WSGI middleware: answers what it can of the inference routes, hands everything else to ``inner``."""

    def __init__(self, inner: WSGIApp, plane: DataPlane, max_body: int) -> None:
        self.inner, self.plane, self.max_body = inner, plane, max_body

    @staticmethod
    def of(app: Any) -> InferenceMiddleware | None:
        """The middleware in front of ``app`` (``create_app`` puts it there), for a server that asks
        :meth:`respond` itself (the HTTP worker); None for an app without one."""
        middleware = getattr(app, "wsgi_app", None)
        return middleware if isinstance(middleware, InferenceMiddleware) else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = self.respond(environ)
        if answer is None:
            return self.inner(environ, start_response)
        status, headers, out = answer
        start_response(STATUS_LINES[status], headers)
        return [out]

    def respond(self, environ: dict[str, Any], taken: tuple[Route, re.Match[str], int] | None = None
                ) -> tuple[int, Headers, bytes] | None:
        """(status, headers, body) for a request the middleware answers, counted and logged; None for one it
        leaves to ``inner`` (with the body it read put back in ``wsgi.input``). The WSGI call above and
        the HTTP worker (``service/http_server/worker.py``), which writes the answer itself, both ask this;
        ``taken``: what :meth:`takes` already said of this environ (the worker asks before a request's turn)."""
        taken = taken or self.takes(environ)
        if taken is None:
            return None
        route, match, length = taken
        start = environ.get(RECEIVED) or time.perf_counter()  # deadlines and durations count from here
        decoding = time.time_ns() if tracing.ENABLED else 0
        body = environ["wsgi.input"].read(length)
        name, version = match.groupdict().get("name"), match.groupdict().get("version")
        if self.plane.queue.full():  # MAX_QUEUE_SIZE: refused before its body is parsed, the cheapest answer
            if tracing.ENABLED:  # a refused request is traced too (its log line has the trace id)
                return self.refuse_traced(environ, route.rules[version is not None], name, start, decoding)
            return self.refuse(environ, route.rules[version is not None], name, start)
        call = self.decode(route, body, environ, name, int(version) if version else None)
        if call is None:  # Flask answers, from the same bytes
            environ["wsgi.input"] = io.BytesIO(body)
            return None
        path = environ["PATH_INFO"]
        rid = request_record.request_id(environ.get("HTTP_X_REQUEST_ID"))
        if tracing.ENABLED:  # the span is named now the middleware answers; decoding was timed from the start
            return self.traced(environ, route.rules[version is not None], path, call, rid, start, decoding,
                               time.time_ns())
        return self.finish(environ, route.rules[version is not None], path, call, rid, start)

    def traced(self, environ: dict[str, Any], rule: str, path: str, call: Call, rid: str, start: float,
               decoding: int, decoded: int) -> tuple[int, Headers, bytes]:
        """What :meth:`finish` does, under the request's server span (``service/observability/tracing.py``)."""
        route = tracing.http_route(rule)
        server = tracing.ServerSpan(f"POST {route}", tracing.environ_header(environ), {
            "http.request.method": "POST", "http.route": route, "url.path": path,
            "url.scheme": environ.get("wsgi.url_scheme", "http"), "model.name": call.model}, decoding)
        tracing.between("decode", decoding, decoded)
        status = 500
        try:
            status, headers, out = self.finish(environ, rule, path, call, rid, start)
            return status, headers, out
        finally:
            server.finish(status >= 500, {"http.response.status_code": status})

    def finish(self, environ: dict[str, Any], rule: str, path: str, call: Call, rid: str,
               start: float) -> tuple[int, Headers, bytes]:
        """The decoded request answered, counted and logged."""
        status, out, headers, batch_size = self.answer(path, call, rid, start)
        headers = [headers[0], ("Content-Length", ""), *headers[1:], ("X-Request-ID", rid),
                   ("X-Content-Type-Options", "nosniff")]
        accept = environ.get("HTTP_ACCEPT_ENCODING")
        if accept is not None:  # as service/app.py's hook compresses a response
            out, coding = content_coding.for_client(out, accept)
            if coding is not None:
                headers.append(("Content-Encoding", coding))
            headers.append(("Vary", "Accept-Encoding"))
        headers[1] = ("Content-Length", str(len(out)))
        request_record.record(self.plane.registry.snapshot, rule, "POST", path, call.model, batch_size, status,
                              time.perf_counter() - start, rid)
        return status, headers, out

    def refuse(self, environ: dict[str, Any], rule: str, name: str | None, start: float) -> tuple[int, Headers, bytes]:
        """The queue policy's 503 (``queue_full``, with ``Retry-After``), counted and logged."""
        path = environ["PATH_INFO"]
        rid = request_record.request_id(environ.get("HTTP_X_REQUEST_ID"))
        error = queue_full(self.plane.queue.max_queue_size)
        self.plane.queue.shed("queue_full")
        status, out = rendered(path, error)
        headers = [("Content-Type", JSON), ("Content-Length", str(len(out))), *error.headers.items(),
                   ("X-Request-ID", rid), ("X-Content-Type-Options", "nosniff")]
        request_record.record(self.plane.registry.snapshot, rule, "POST", path, name, None, status,
                              time.perf_counter() - start, rid)
        return status, headers, out

    def refuse_traced(self, environ: dict[str, Any], rule: str, name: str | None, start: float,
                      received: int) -> tuple[int, Headers, bytes]:
        """What :meth:`refuse` does, under the request's server span."""
        route = tracing.http_route(rule)
        server = tracing.ServerSpan(f"POST {route}", tracing.environ_header(environ), {
            "http.request.method": "POST", "http.route": route, "url.path": environ["PATH_INFO"],
            "url.scheme": environ.get("wsgi.url_scheme", "http"), "model.name": name or ""}, received)
        try:
            return self.refuse(environ, rule, name, start)
        finally:
            server.finish(True, {"http.response.status_code": 503})

    def takes(self, environ: dict[str, Any]) -> tuple[Route, re.Match[str], int] | None:
        """The route, its path's match and the body's length if this request is one the middleware may answer."""
        path = environ.get("PATH_INFO", "")
        route = ROUTES.get(path[:4])
        if route is None or environ.get("REQUEST_METHOD") != "POST" or "HTTP_CONTENT_ENCODING" in environ:
            return None
        match = route.path.fullmatch(path)
        if match is None:
            return None
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() not in route.content_types:
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or int(length) > self.max_body:
            return None
        return route, match, int(length)

    def decode(self, route: Route, body: bytes, environ: dict[str, Any], name: str | None,
               version: int | None) -> Call | None:
        """The route's decoded request, or None where any rule refuses the body (Flask then answers
        with the rule's error). Nothing here has side effects, so anything unforeseen is handed over
        too: Flask's handlers then meet it again and answer it as they answer every failure."""
        try:
            return route.decode(body, environ, name, version, self.plane)
        except Exception:
            return None

    def answer(self, path: str, call: Call, rid: str, received: float) -> tuple[int, bytes, Headers, int | None]:
        """(status, body, headers starting with Content-Type, batch size) from the data plane, errors as
        Flask renders them."""
        batch_size = None
        try:
            result = self.plane.infer(call.model, call.version, call.inputs, field=call.field, request_id=rid,
                                      route_key=call.route_key, timeout_us=call.timeout_us, received=received)
            batch_size = len(result.classes)
            if tracing.ENABLED:
                encoding = time.time_ns()
                out, headers = call.respond(result)
                tracing.between("encode", encoding, time.time_ns())
            else:
                out, headers = call.respond(result)
        except ServiceError as exc:
            status, out = rendered(path, exc)
            return status, out, [("Content-Type", JSON), *exc.headers.items()], batch_size
        except Exception:  # a bug or a model failure: a 500 naming the request id, the traceback in the log
            log.exception("unhandled error (request_id=%s)", rid)
            status, out = rendered(path, internal(rid))
            return status, out, [("Content-Type", JSON)], batch_size
        return 200, out, headers, batch_size
