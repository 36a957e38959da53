"""``POST /predict``'s common case answered in front of Flask: the same rules, a third of the CPU less.

Why (the README's "The fast lane" has the profile and the figures): with the 784-300-10 MNIST
model the forward pass is ~4% of a worker's time and the HTTP stack most of the rest. Flask's
request and app contexts, werkzeug's request and response objects, URL matching, the hooks and
flask-openapi3's wrapper cost a one-sample ``/predict`` about as much CPU as gunicorn itself does.
``python -m bench.cpu_per_request``: 1,420 -> 952 µs of CPU per MNIST request, 1,137 -> 753 per XOR.

What it takes: ``POST /predict`` with a ``Content-Length`` within ``MAX_BODY_BYTES``, an
``application/json`` body that is not ``Content-Encoding``-compressed, and that parses and validates
(a JSON object, ``PredictRequest``, numbers only). Everything else -- another route, a body the rules
refuse, a compressed one -- goes to Flask untouched (the body it read is put back), so every error
is still answered in one place, by the same handlers; nothing a request can do happens twice, since
the lane hands over before the data plane is asked. From the data plane on it does what the Flask
path does, with the same functions: ``DataPlane.infer``, :func:`service.protocols.predict.answer`,
errors rendered by ``service/error_handlers.py``'s :func:`rendered`, the response compressed by
``service/encoding.py``, the request id, metrics and log line of ``service/exchange.py``. The
integration tests run through it (every ``/predict`` they send that succeeds), and
``tests/test_fast_lane.py`` compares its answers with Flask's, header by header.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError

from service import encoding, exchange, jsonio
from service.dataplane import DataPlane
from service.error_handlers import rendered
from service.errors import ServiceError, internal
from service.protocols.predict import answer
from service.schemas import PredictRequest

log = logging.getLogger("service.errors")  # where Flask's handler logs an unexpected error

PATH = "/predict"
JSON = "application/json"
STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastLane:
    """WSGI middleware: answers what it can of ``POST /predict``, hands everything else to ``inner``."""

    def __init__(self, inner: WSGIApp, plane: DataPlane, max_body: int) -> None:
        self.inner, self.plane, self.max_body = inner, plane, max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = self.takes(environ)
        if length is None:
            return self.inner(environ, start_response)
        start = time.perf_counter()
        body = environ["wsgi.input"].read(length)
        parsed = self.parse(body)
        if parsed is None:  # Flask answers, from the same bytes
            environ["wsgi.input"] = io.BytesIO(body)
            return self.inner(environ, start_response)
        request, inputs = parsed
        rid = exchange.request_id(environ.get("HTTP_X_REQUEST_ID"))
        status, out, headers, batch_size = self.answer(request, inputs, rid)
        headers = [("Content-Type", JSON), ("Content-Length", ""), ("X-Request-ID", rid),
                   ("X-Content-Type-Options", "nosniff"), *headers]
        accept = environ.get("HTTP_ACCEPT_ENCODING")
        if accept is not None:  # as service/app.py's hook compresses a response
            out, coding = encoding.for_client(out, accept)
            if coding is not None:
                headers.append(("Content-Encoding", coding))
            headers.append(("Vary", "Accept-Encoding"))
        headers[1] = ("Content-Length", str(len(out)))
        exchange.record(self.plane.registry.snapshot, PATH, "POST", PATH, request.model, batch_size, status,
                        time.perf_counter() - start, rid)
        start_response(STATUS_LINES[status], headers)
        return [out]

    def takes(self, environ: dict[str, Any]) -> int | None:
        """The body's length if this request is one the lane may answer, else None."""
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST" \
                or "HTTP_CONTENT_ENCODING" in environ:
            return None
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != JSON:
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or int(length) > self.max_body:
            return None
        return int(length)

    def parse(self, body: bytes) -> tuple[PredictRequest, Any] | None:
        """The validated request and its samples, or None where any rule refuses the body (Flask then
        answers with the rule's error). Nothing here has side effects."""
        try:
            jsonio.check_value_count(body, self.plane.max_values)
            doc = jsonio.loads(body)
            if not isinstance(doc, dict):
                return None
            request = PredictRequest.model_validate(doc)
            return request, jsonio.samples(request.inputs, body)
        except (ServiceError, ValidationError, ValueError, TypeError, RecursionError):
            return None

    def answer(self, request: PredictRequest, inputs: Any, rid: str) -> tuple[int, bytes, list, int | None]:
        """(status, body, extra headers, batch size) from the data plane, errors as Flask renders them."""
        try:
            result = self.plane.infer(request.model, request.version, inputs)
        except ServiceError as exc:
            status, out = rendered(PATH, exc)
            return status, out, list(exc.headers.items()), None
        except Exception:  # a bug or a model failure: a 500 naming the request id, the traceback in the log
            log.exception("unhandled error (request_id=%s)", rid)
            status, out = rendered(PATH, internal(rid))
            return status, out, [], None
        return 200, jsonio.dumps(answer(result)), [], len(result.classes)
