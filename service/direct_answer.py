"""The fast lane's answers written by the worker itself, byte for byte as gunicorn would write them.

Why (the README's "part 6" has the profile and the figures): once the fast lane answers an inference
request, what is left of gunicorn's side of it is building the full WSGI environ (``wsgi.create``:
an errors wrapper, the early-hints callback, SERVER_* and REMOTE_* keys nothing here reads) and a
``Response`` that checks every header against its regular expressions and builds the head from
format strings: ~13% of a worker's samples for a one-sample MNIST request. The lane needs eight
environ keys and its headers are its own (constants, lengths, a request id that passed
``exchange.REQUEST_ID``), so the worker (``service/worker.py``) asks the lane first with the environ
built here and writes the answer itself; everything the lane does not answer goes through gunicorn
exactly as before, with the body put back.

What is written is what gunicorn's ``Response`` writes for the same status, headers and body: the
status line in the request's HTTP version, ``Server``, ``Date``, ``Connection`` (keep-alive or close,
by gunicorn's rules), the lane's headers, and the body in the same send as the head when it is small
(``service/one_send.py``'s rule). ``tests/test_direct_answer.py`` compares the two byte for byte.
"""

from __future__ import annotations

import os
import time
from email.utils import formatdate
from typing import Any

from gunicorn import SERVER

from service.fast_lane import STATUS_LINES, Headers
from service.one_send import COALESCE_BYTES


def environ(req: Any) -> dict[str, Any] | None:
    """What the fast lane reads of gunicorn's environ for ``req``, with the same values ``wsgi.create``
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


def write(sock: Any, req: Any, status: int, headers: Headers, body: bytes, must_close: bool) -> bool:
    """Head and body, in one send when the body is small (as ``service/one_send.py`` sends them);
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
