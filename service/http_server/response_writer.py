"""How this server's responses reach the socket: gunicorn's writer with the head and a small body in one
``send``, and the inference middleware's answers written by the worker itself, byte for byte as gunicorn would.

**One send.** gunicorn sends a response's head (status line and headers) as soon as the app's first
body bytes are ready, then the body, in a second ``send``. For the small answers this server gives
thousands of a second (a 10-class prediction is ~300 bytes), that is two system calls, two TCP
segments and, on loopback or a busy host, two wake-ups of the client per response where one does.
So :class:`CoalescingResponse` holds the head back and sends it together with the body that follows
(up to ``COALESCE_BYTES``); a larger body, a chunked one, a file (``sendfile``) or no body at all gets
the head on its own first, as before. Everything else (framing, lengths, keep-alive) is gunicorn's.

**The inference middleware's answers.** Once the inference middleware
(``service/app/inference_middleware.py``) answers an inference request, what is left of gunicorn's side
of it is building the full WSGI environ (``wsgi.create``: an errors wrapper, the early-hints callback,
SERVER_* and REMOTE_* keys nothing here reads) and a ``Response`` that checks every header against its
regular expressions: ~13% of a worker's samples for a one-sample MNIST request. The middleware needs
eight environ keys and its headers are its own, so the worker asks the middleware first with the environ
built by :func:`middleware_environ` and writes the answer with :func:`write_answer`: the status line in
the request's HTTP version, ``Server``, ``Date``, ``Connection`` (by gunicorn's rules), the middleware's
headers, and the body in the same send as the head when it is small.
``tests/test_middleware_answers.py`` compares the two writers byte for byte.
"""

from __future__ import annotations

import os
import time
from email.utils import formatdate
from typing import Any

from gunicorn import SERVER
from gunicorn.http import wsgi

from service.app.inference_middleware import STATUS_LINES, Headers

COALESCE_BYTES = 64 * 1024  # bodies up to this are copied behind the head; larger ones go in their own send


class _Capture:
    """Stands in for the socket while gunicorn writes the head, keeping the bytes instead."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class CoalescingResponse(wsgi.Response):
    """``wsgi.Response`` whose head waits for the first body bytes (see the module's docstring)."""

    def __init__(self, req, sock, cfg) -> None:
        super().__init__(req, sock, cfg)
        self._head: bytes | None = None  # built and held back: not on the wire yet
        self._defer = True

    def send_headers(self) -> None:
        if self.headers_sent or not self._defer:
            super().send_headers()
            return
        sock, capture = self.sock, _Capture()
        self.sock = capture
        try:
            super().send_headers()  # gunicorn builds the head exactly as it always does
        finally:
            self.sock = sock
        self._head = capture.data

    def flush_head(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self.sock.sendall(head)

    def _emit_body(self, data: bytes) -> None:
        if self._head is not None and not self.chunked and len(data) <= COALESCE_BYTES:
            head, self._head = self._head, None
            self.sock.sendall(head + data)
            return
        self.flush_head()
        super()._emit_body(data)

    def sendfile(self, respiter) -> bool:
        self.flush_head()
        self._defer = False  # sendfile writes straight to the socket: the head must precede it
        return super().sendfile(respiter)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        self.flush_head()  # no body (HEAD, 204, an empty one): the head alone, before any last chunk
        super().close()


def install() -> None:
    """Every response gunicorn creates in this process is written this way (``wsgi.create`` looks
    the class up at each request)."""
    wsgi.Response = CoalescingResponse



def middleware_environ(req: Any) -> dict[str, Any] | None:
    """What the inference middleware reads of gunicorn's environ for ``req``, with the same values ``wsgi.create``
    gives them (headers as ``HTTP_*``, repeated ones joined with commas); None for a request whose
    path gunicorn would rewrite (percent-escapes, non-ASCII, a SCRIPT_NAME): those take the full path."""
    path = req.path
    if "%" in path or not path.isascii() or SCRIPT_NAME:
        return None
    env: dict[str, Any] = {"REQUEST_METHOD": req.method, "PATH_INFO": path, "wsgi.input": req.body}
    for name, value in req.headers:
        if name == "CONTENT-TYPE":
            env["CONTENT_TYPE"] = value
        elif name == "CONTENT-LENGTH":
            env["CONTENT_LENGTH"] = value
        elif name == "SCRIPT_NAME":  # only with header_map = "dangerous": gunicorn would move the path
            return None
        else:
            key = "HTTP_" + name.replace("-", "_")
            env[key] = f"{env[key]},{value}" if key in env else value
    return env


def head(req: Any, status: int, headers: Headers, close: bool) -> bytes:
    """The response head gunicorn's ``Response.send_headers`` builds for a body with a Content-Length."""
    major, minor = req.version
    lines = [f"HTTP/{major}.{minor} {STATUS_LINES[status]}\r\nServer: {SERVER}\r\nDate: {http_date()}\r\n"
             f"Connection: {'close' if close else 'keep-alive'}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def write_answer(sock: Any, req: Any, status: int, headers: Headers, body: bytes, must_close: bool) -> bool:
    """Head and body, in one send when the body is small (as :class:`CoalescingResponse` sends them);
    whether the connection closes now: ``must_close`` (the worker's reasons, as gunicorn's
    ``force_close``) or the request's (HTTP/1.0, ``Connection: close``), as ``Response.should_close``."""
    close = must_close or req.should_close()
    data = head(req, status, headers, close)
    if len(body) <= COALESCE_BYTES:
        sock.sendall(data + body)
    else:
        sock.sendall(data)
        sock.sendall(body)
    return close


def http_date(timestamp: float | None = None) -> str:
    """``gunicorn.util.http_date()``, formatted once a second instead of once a request."""
    global _date
    now = int(time.time() if timestamp is None else timestamp)
    if _date[0] != now:
        _date = (now, formatdate(now, localtime=False, usegmt=True))
    return _date[1]


_date: tuple[int, str] = (-1, "")
SCRIPT_NAME = os.environ.get("SCRIPT_NAME", "")  # gunicorn strips it from every path: leave those to it
