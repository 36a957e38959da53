"""What the worker answers itself, before or instead of the app: a body that did not arrive in time
(408), no room to read one (503), and gunicorn's own refusals (a bad request line, a URI or headers
over the limits, a bad chunk), each in the documented JSON error shape of the path's protocol, with
a fresh request id, and the connection closed."""

from __future__ import annotations

import contextlib
import socket

from service.app.inference_middleware import STATUS_LINES
from service.errors import HTTP_CODES, ServiceError
from service.observability import request_record
from service.protocols.error_bodies import rendered

ENDPOINT = "(http server)"  # the metrics' endpoint label of what the worker answers itself, before any route


class NoModels:
    """The catalogue of a refusal: it names no model."""

    @staticmethod
    def knows(name: str) -> bool:
        return False


def write_error(sock: socket.socket, error: ServiceError, path: str = "", method: str | None = None,
                elapsed: float = 0.0) -> None:
    """The error's response, in the protocol of ``path``, with ``Connection: close``; with ``method``
    (a request the worker read the head of), also counted and logged as every request is."""
    status, body = rendered(path, error)
    rid = request_record.request_id(None)
    head = (f"HTTP/1.1 {STATUS_LINES[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {rid}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
            + "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.sendall(head + body)
    if method is not None:
        request_record.record(NoModels(), ENDPOINT, method, path, None, None, status, elapsed, rid)


def write_gunicorn_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """In place of ``gunicorn.util.write_error`` (an HTML page): gunicorn's own refusals in our shape."""
    code = HTTP_CODES.get(status, "bad_request" if status < 500 else "internal_error")
    write_error(sock, ServiceError(status, code, (message or reason)[:300]))
