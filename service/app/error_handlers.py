"""Every failure, rendered once: a ServiceError becomes the protocol's error body.

Anything that goes wrong ends here as a :class:`service.errors.ServiceError`: raised ones as they
are, pydantic's through :func:`service.errors.from_validation_error`, werkzeug's HTTP errors (404
route, 405 method, 413 body) by status, and anything else as a 500 that names the request id (the
traceback goes to the log, never to the body). Each protocol's body shape is in
``service/protocols/error_bodies.py``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from service.errors import HTTP_CODES, ServiceError, from_validation_error, internal
from service.protocols.error_bodies import rendered

log = logging.getLogger("service.errors")


def render(exc: ServiceError) -> Response:
    status, body = rendered(request.path, exc)
    response = Response(body, status=status, mimetype="application/json")
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's callback for a request body that fails its pydantic model."""
    return render(from_validation_error(exc))


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return render(exc)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        return render(from_validation_error(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.response is not None:  # a ready response passed to abort(), e.g. by flask-openapi3
            return exc.response
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}  # e.g. Allow on a 405
        return render(ServiceError(status, HTTP_CODES.get(status, "http_error"), exc.description or exc.name,
                                   headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = g.get("request_id", "-")
        log.exception("unhandled error (request_id=%s)", request_id)
        return render(internal(request_id))



