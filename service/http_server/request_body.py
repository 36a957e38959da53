"""Request bodies, read whole by the worker before the app runs, within deadlines and a memory budget.

:class:`BodyReader` does what a buffering proxy would do in front: the body must arrive within
``REQUEST_TIMEOUT`` seconds of the head, else a 408 and the connection is closed, so a slow client
never holds the CPU-bound part of the server; a body over ``MAX_BODY_BYTES`` is never read (the app
answers 413 and the connection closes after a short lingering drain, so that a client still
uploading receives the 413; the same for the 408, 503 and 400 below); a chunked body counts the same
(the app sees it buffered, with its length), and any other transfer coding is a 501;
``Expect: 100-continue`` is answered before the body is read, and not at all for a 413.

:class:`BodyBudget` bounds the memory they take: large uploads wait their turn, small ones never do.
Each connection may send a body of up to ``MAX_BODY_BYTES``, and the worker reads a body whole before
the app runs. Without a bound on the sum, a hundred clients that send 15 MB each and then stall took
two workers from 143 MB to 1.7 GB (the Deployment gives the pod 1 GiB). So a body larger than
``SMALL_BODY`` reserves its declared length (a chunked one, ``MAX_BODY_BYTES``) from the worker's
``BODY_BUFFER_BYTES`` before a byte of it is read. One that does not fit waits, unread (the client's
bytes stay in the kernel's socket buffers), until enough is released, for at most half its
``REQUEST_TIMEOUT``; then it is a 503 with ``Retry-After``. The other half is the body's time to
arrive in: a waiter given the whole timeout would, behind stalled holders, only get room too late
and end in a 408. A budget with nothing reserved always takes one body, so one body of
``MAX_BODY_BYTES`` is never refused. Small bodies (the usual request: a 1-image MNIST body is 4 kB)
do not count, so stalled uploads never delay them.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import gevent
import gevent.event
from gunicorn.http.errors import ParseException

from service.errors import ServiceError
from service.http_server.idle_connections import Evicted, IdleConnections
from service.http_server.refusals import write_error
from service.observability import metrics

SMALL_BODY = 64 * 1024  # bytes: bodies up to this size are read at once, outside the budget
TENSOR_ALIGNMENT = 64  # bytes: a cache line, and more than any dtype or SIMD load needs
LINGER_SECONDS = 2.0  # how long a refused upload may go on being drained before its connection closes


class BodyBudget:
    """Bytes of large request bodies one worker holds while reading them (one event loop: no locks)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.released = gevent.event.Event()

    @contextlib.contextmanager
    def reserve(self, size: int, timeout: float) -> Iterator[bool]:
        """Yields True holding ``size`` bytes of the budget, or False if they were not free in ``timeout``."""
        if size <= SMALL_BODY:
            yield True
            return
        deadline = time.monotonic() + timeout
        while self.used and self.used + size > self.limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield False
                return
            self.released.clear()
            self.released.wait(remaining)
        self.used += size
        try:
            yield True
        finally:
            self.used -= size
            self.released.set()


class BodyReader:
    """One worker's reading of request bodies: whole, within ``REQUEST_TIMEOUT``, within its budget."""

    def __init__(self, max_body: int, request_timeout: float, budget: int, idle: IdleConnections | None = None) -> None:
        self.max_body, self.request_timeout = max_body, request_timeout
        self.budget = BodyBudget(budget)
        self.idle = idle or IdleConnections(1 << 30)  # the worker's: a stalled body counts among its waits

    def buffer(self, req: Any, sock: socket.socket) -> None:
        """Read ``req``'s body into memory (``req.body`` becomes a ``BytesIO``), or mark a body over
        ``MAX_BODY_BYTES`` unread (``req.must_close``: the app answers 413); raises StopIteration,
        gunicorn's way to close the connection, when there is nobody left to answer."""
        length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
        continues = wants_continue(req)
        req._expected_100_continue = False  # gunicorn's own flag: it would send 100 after the body, or for a 413
        if length is not None and int(length) > self.max_body:
            req.must_close = True  # the app answers 413 without reading (a waiting client never sends the body)
            return
        codings = [c.strip(" \t").lower() for name, value in req.headers if name == "TRANSFER-ENCODING"
                   for c in value.split(",")]
        if any(coding != "chunked" for coding in codings):
            # gunicorn de-chunks "gzip, chunked" but would hand the app the gzip stream as the body
            refuse(req, sock, ServiceError(501, "not_implemented", "only the chunked transfer coding is "
                                           "supported: send a compressed body with Content-Encoding"))
        if length is None and not codings:
            # No body at all (a GET, a probe): nothing to read, and no room to wait for behind uploads.
            req.headers.append(("CONTENT-LENGTH", "0"))
            req.body = io.BytesIO(b"")
            return
        data = self.read(req, sock, int(length) if length is not None else self.max_body + 1, continues)
        if length is not None and len(data) < int(length):  # the client hung up mid-body: nobody to answer
            raise StopIteration()
        if length is None:
            # A chunked body, now buffered: the app sees it with its length, as if sent with one, so
            # one over MAX_BODY_BYTES is answered 413 in its protocol's shape like any other.
            req.headers = [(n, v) for n, v in req.headers if n != "TRANSFER-ENCODING"]
            req.headers.append(("CONTENT-LENGTH", str(len(data))))
            if len(data) > self.max_body:
                req.must_close = True  # the rest is never read
        # The app reads the whole body from memory, in one piece: gunicorn's Body would copy the
        # rest of its buffer again for every chunk werkzeug asks for (13% of a 256-image request).
        req.body = WholeBody(data) if isinstance(data, bytearray) else io.BytesIO(data)

    def read(self, req: Any, sock: socket.socket, size: int, continues: bool) -> bytes | bytearray:
        """The whole body (at most MAX_BODY_BYTES + 1 bytes), within REQUEST_TIMEOUT of the head, once
        ``size`` bytes of the budget are free. It waits for room at most half that time, so a body
        that gets room has the other half to arrive; else a 503 (no room) or a 408 (too slow)."""
        started = time.monotonic()
        try:
            # Waiting for room, then for the body, the connection waits on its client: among the worker's
            # waits, the longest of which is let go past WORKER_CONNECTIONS' bound (idle_connections.py).
            with self.idle.stalling() as wait:
                return self._read(req, sock, size, continues, started, wait.progress)
        except Evicted:  # the worker needs the place of the connection that waited longest: this one
            metrics.REQUEST_TIMEOUTS.inc()
            write_error(sock, ServiceError(408, "request_timeout", "the request body did not arrive, and the "
                                           "server needed the connection"), req.path, req.method,
                        time.monotonic() - started)
            raise StopIteration() from None  # closed at once: a stalled client gets no lingering drain

    def _read(self, req: Any, sock: socket.socket, size: int, continues: bool, started: float,
              progress: Callable[[], None]) -> bytes | bytearray:
        # a chunked body is read to MAX_BODY_BYTES + 1 (to tell one too large) but holds at most
        # MAX_BODY_BYTES: reserving the extra byte made two chunked bodies, or one beside a stalled upload
        # of MAX_BODY_BYTES, overflow the default budget (2 x MAX_BODY_BYTES), a 503 after a 2 s wait
        with self.budget.reserve(min(size, self.max_body), self.request_timeout / 2) as room:
            if not room:
                metrics.BODIES_REFUSED.inc()
                refuse(req, sock, ServiceError(503, "server_busy", "the server is reading as many large request "
                                               "bodies as it may (BODY_BUFFER_BYTES); retry shortly",
                                               headers={"Retry-After": "1"}), started)
            if continues:  # now, before reading, not after the body the client is holding back
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                with gevent.Timeout(max(0.0, self.request_timeout - (time.monotonic() - started))):
                    if SMALL_BODY < size <= self.max_body:  # a large body with a Content-Length: one buffer
                        return receive(req, sock, size, progress)
                    return req.body.read(self.max_body + 1)  # small (one sample: as before) or chunked
            except gevent.Timeout:
                metrics.REQUEST_TIMEOUTS.inc()
                refuse(req, sock, ServiceError(408, "request_timeout", f"the request body did not arrive within "
                                               f"REQUEST_TIMEOUT={self.request_timeout:g} s"), started)
            except ParseException as exc:  # a malformed chunked body: refused in the path's protocol's shape
                refuse(req, sock, ServiceError(400, "bad_request", f"the request body is malformed: {exc}"[:300]),
                       started)

    def linger(self, sock: socket.socket) -> None:
        """Before closing a connection whose body was not read to its end (over MAX_BODY_BYTES): say we
        are done writing, then read and drop what the client is still sending, for at most
        ``LINGER_SECONDS`` and 4 x MAX_BODY_BYTES. Closing with unread data makes the kernel reset
        the connection, and a client still uploading then loses the 413 (nginx's lingering close)."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        budget = 4 * self.max_body
        # a wait on the client too: let go at once past the worker's bound (Evicted)
        with contextlib.suppress(Evicted), self.idle.stalling(), gevent.Timeout(LINGER_SECONDS, False), \
                contextlib.suppress(OSError):
            while budget > 0 and (chunk := sock.recv(1 << 16)):
                budget -= len(chunk)


def refuse(req: Any, sock: socket.socket, error: ServiceError, started: float | None = None) -> NoReturn:
    """Answer ``req`` with ``error`` before its body was read (logged and counted as every request), then
    close the connection: StopIteration, after the worker drains what the client is still sending
    (``must_close``: closing with unread data would reset the connection under a client still sending)."""
    req.must_close = True
    write_error(sock, error, req.path, req.method, time.monotonic() - started if started is not None else 0.0)
    raise StopIteration()


def receive(req: Any, sock: socket.socket, length: int, progress: Callable[[], None] | None = None) -> bytearray:
    """A body of ``length`` bytes (its Content-Length) in one buffer: the part gunicorn read with the head,
    then ``recv_into`` the rest of the buffer, straight from the socket. Shorter if the client hung up.

    gunicorn's reader copies the body twice after the kernel has: each ``recv``'s bytes into its
    unreader's ``BytesIO``, then into the Body's own. Here the kernel's copy into this buffer is the
    only one, and the buffer is placed so that a binary tensor in it is aligned (:func:`aligned_buffer`).
    """
    data = aligned_buffer(length, tensor_offset(req, length))
    view = memoryview(data)
    ahead = req.unreader.take_buffered()  # what followed the head in gunicorn's read
    got = min(len(ahead), length)
    view[:got] = memoryview(ahead)[:got]
    if len(ahead) > length:  # a pipelined next request: gunicorn parses it from there
        req.unreader.unread(ahead[length:])
    while got < length:
        received = sock.recv_into(view[got:])
        if not received:  # the client hung up mid-body
            del view
            del data[got:]
            break
        got += received
        if progress is not None:  # bytes came: an upload under way is not the longest-waiting connection
            progress()
    return data


def tensor_offset(req: Any, length: int) -> int:
    """Where in the body a binary tensor would start: after the JSON header of the Open Inference
    Protocol's ``Inference-Header-Content-Length`` bytes, if the request says so (else 0)."""
    value = next((v for name, v in req.headers if name == "INFERENCE-HEADER-CONTENT-LENGTH"), "")
    return int(value) if value.isascii() and value.isdigit() and int(value) <= length else 0


def aligned_buffer(length: int, offset: int) -> bytearray:
    """A zeroed ``bytearray`` of ``length`` bytes whose byte ``offset`` sits on a ``TENSOR_ALIGNMENT`` boundary.

    A tensor viewed in the body where its JSON header leaves it (193 bytes in, for tritonclient's)
    is not even 4-byte aligned, and NumPy's matmul copies such an input before BLAS reads it (an
    800 kB copy per 256-image request; aligned, matmul allocates only its output). Deleting a
    bytearray's first bytes only moves its start (O(1)), so the buffer is allocated a little larger
    and its start moved to where the tensor lands aligned (a buffer under ``2 * TENSOR_ALIGNMENT``
    bytes may be moved again when trimmed: no tensor worth it).
    """
    data = bytearray(length + TENSOR_ALIGNMENT)
    address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    del data[:(-(address + offset)) % TENSOR_ALIGNMENT]
    del data[length:]
    return data


class WholeBody:
    """``wsgi.input`` over a body read whole into a ``bytearray``.

    A read of exactly its length, the inference middleware's (``service/app/inference_middleware.py``),
    returns the buffer itself: no copy, and a binary tensor is then a NumPy view of it
    (``v2_tensors.from_raw``). Every other read (Flask's, through werkzeug) sees ``bytes``, as from a
    ``BytesIO``, made on first use. Nothing reuses the buffer: it lives as long as the request's arrays,
    so views of it stay valid.
    """

    def __init__(self, data: bytearray) -> None:
        self._data: bytearray | None = data
        self._stream: io.BytesIO | None = None

    def read(self, size: int | None = -1) -> bytes | bytearray:
        data = self._data
        if data is not None and size == len(data):
            self._data, self._stream = None, io.BytesIO()  # read to its end
            return data
        return self.stream().read(size)

    def stream(self) -> io.BytesIO:
        if self._stream is None:
            self._stream, self._data = io.BytesIO(self._data or b""), None
        return self._stream

    def readinto(self, buffer: Any) -> int:
        return self.stream().readinto(buffer)

    def readline(self, size: int | None = -1) -> bytes:
        return self.stream().readline(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self.stream().readlines(hint)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream())


def wants_continue(req: Any) -> bool:
    """An HTTP/1.1 request whose client waits for ``100 Continue`` before it sends the body."""
    return req.version >= (1, 1) and any(name == "EXPECT" and value.strip().lower() == "100-continue"
                                         for name, value in req.headers)
