"""gunicorn's HTTP/1 response writer, with the head and a small body sent in one ``send``.

gunicorn sends a response's head (status line and headers) as soon as the app's first body bytes
are ready, then the body, in a second ``send``. For the small answers this server gives thousands
of a second (a 10-class prediction is ~300 bytes), that is two system calls, two TCP segments
and, on loopback or a busy host, two wake-ups of the client per response where one does. So the
head is held back and sent together with the body that follows it (up to ``COALESCE_BYTES``); a
larger body, a chunked one, a file (``sendfile``) or no body at all gets the head on its own first,
as before. Everything else (framing, lengths, keep-alive) is gunicorn's own code.

Installed by the worker (``service/worker.py``) in place of ``gunicorn.http.wsgi.Response``.
"""

from __future__ import annotations

from gunicorn.http import wsgi

COALESCE_BYTES = 64 * 1024  # bodies up to this are copied behind the head; larger ones go in their own send


class _Capture:
    """Stands in for the socket while gunicorn writes the head, keeping the bytes instead."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class OneSendResponse(wsgi.Response):
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
    wsgi.Response = OneSendResponse
