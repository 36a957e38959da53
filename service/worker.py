"""The gunicorn worker: gevent, with every request read in full, within deadlines, before the app runs.

Why (the README's "Choosing the worker" has the measurements): gunicorn's ``sync`` worker gives
each connection a whole process while it sends its request, so a handful of clients that send
slowly stall the server, and it cannot keep connections alive; ``gthread`` parks a thread on every
connection that has sent its first byte. Under gevent a waiting connection costs a greenlet, and
the model still runs on one process per core.

On top of gunicorn's gevent worker this adds what a buffering proxy would do in front:

* the request head must arrive within ``KEEPALIVE`` seconds of connecting or of the previous
  response (gunicorn's own rule; the connection is then closed);
* the body must arrive within ``REQUEST_TIMEOUT`` seconds of the head, else a 408 and the
  connection is closed. The app is only called with the whole body in memory, so a slow client
  never holds the CPU-bound part of the server;
* a body over ``MAX_BODY_BYTES`` is never read: the app answers 413 and the connection closes,
  after a short lingering drain so that a client still uploading receives the 413; a chunked body
  counts the same (the app sees it buffered, with its length);
* ``Expect: 100-continue`` is answered before the body is read (and not at all for a 413);
* gunicorn's own refusals (bad request line, URI or headers over the limits, bad chunks) are in
  the documented JSON error shape with a request id, not HTML;
* each socket send or receive gives up after ``REQUEST_TIMEOUT`` (a client that stops reading);
* a response's head and a small body leave in one send (``service/one_send.py``);
* the fast lane's answers are written by the worker itself, as gunicorn would write them
  (``service/direct_answer.py``);
* a gradcheck runs on the worker's background thread (:func:`off_loop`), not on the event loop;
* concurrent inference requests share forward passes (``service/batcher.py``, set up in :meth:`run`);
* what start-up made is never scanned by the garbage collector again (``service/heap.py``);
* connections take turns: each yields to the others after every request;
* the model repository is rescanned every ``MODEL_POLL_SECONDS`` (``service/registry.py``);
* on a graceful stop, connections waiting idle between requests are closed at once instead of
  holding the stop for their keep-alive time;
* connections waiting for a request head hold at most 90% of ``WORKER_CONNECTIONS``; past that the
  longest-waiting one is closed.
"""

from __future__ import annotations

import contextlib
import io
import queue
import signal
import socket
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool
from gunicorn import util as gunicorn_util
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from service import direct_answer, exchange, heap, metrics, one_send
from service.batcher import install as install_batcher
from service.buffering import BodyBudget
from service.config import Settings
from service.errors import HTTP_CODES, ServiceError
from service.fast_lane import FastLane

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run long CPU-bound work (a gradcheck: up to seconds) on this worker's one background
    thread when the process runs the event loop, so the loop keeps answering its other
    connections meanwhile (NumPy's matrix products release the GIL); elsewhere (tests, other
    servers) inline. One thread, so such work runs one at a time per worker, as it did inline:
    several at once only fought over the same core (16 concurrent gradchecks: 9 instead of 17/s)."""
    global _background
    if not monkey.is_module_patched("socket"):
        return fn(*args, **kwargs)
    if _background is None:
        _background = ThreadPool(1)
    return _background.apply(fn, args, kwargs)


_background: ThreadPool | None = None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IDLE_SHARE = 0.9  # of worker_connections, at most, waiting idle for a next (or first) request head
LINGER_SECONDS = 2.0  # how long a refused upload may go on being drained before its connection closes


def catch_early_stop(server, worker) -> None:
    """gunicorn ``post_fork`` hook: a stop signal that reaches a worker while it boots is not lost.

    Until the worker installs its own handlers (after gevent's patching, ~90 ms here), a forked
    worker runs the master's handler, which queues the signal on the worker's inherited copy of
    the master's queue, where nobody reads it: the worker then served on and ignored the stop
    (a SIGTERM 90 ms after start left a worker running for good). So stop signals are taken here
    at once, and any already queued is honoured; gunicorn's own handlers replace these later.
    """
    def stop(sig, frame) -> None:
        worker.alive = False

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    while True:
        try:
            if server.SIG_QUEUE.get_nowait() in STOP_SIGNALS:
                worker.alive = False
        except queue.Empty:
            return


class BufferingGeventWorker(GeventWorker):
    """``worker_class = "service.worker.BufferingGeventWorker"`` (``service/gunicorn_conf.py``)."""

    def init_process(self) -> None:
        settings = Settings.from_env()
        self.request_timeout = float(settings.request_timeout)
        self.max_body = settings.max_body_bytes
        self.body_budget = BodyBudget(settings.body_budget)
        self.poll_seconds = settings.model_poll_seconds
        self.settings = settings
        self.lane: FastLane | None = None  # the app's, found after fork (run)
        self.idle: dict[Any, gevent.Timeout] = {}  # connection greenlet -> its wait, oldest first
        self.connections = 0  # open client connections (the batcher's lone request needs no turn)
        # Connections waiting for a request head may hold at most 90% of worker_connections: past that
        # the one waiting longest is closed (as nginx does with keep-alive connections), so idle and
        # silent clients can never fill the worker and leave a new client queued for KEEPALIVE seconds.
        self.max_idle = max(1, int(IDLE_SHARE * settings.worker_connections))
        gunicorn_util.write_error = write_gunicorn_error  # its error pages, in our error shape
        one_send.install()  # a response's head and small body in one send (service/one_send.py)
        super().init_process()

    def run(self) -> None:
        # after fork (the app is preloaded in the master): the batcher's thread, queues and cost tables
        # belong to this process (service/batcher.py)
        install_batcher(self.wsgi, self.settings, alone=lambda: self.connections <= 1)
        lane = getattr(self.wsgi, "wsgi_app", None)
        self.lane = lane if isinstance(lane, FastLane) else None
        registry = getattr(self.wsgi, "extensions", {}).get("model_registry")
        if registry is not None:
            gevent.spawn(self.watch_repository, registry, self.poll_seconds)
        heap.freeze_startup_objects()  # service/heap.py: 14-20% less CPU per request
        try:
            super().run()
        finally:
            heap.release_startup_objects()

    def watch_repository(self, registry, poll_seconds: float) -> None:
        """Rescan the model repository every ``poll_seconds`` (0: never), and at once when another
        worker changed the repository API's state; a scan loads on this greenlet, so scans never
        overlap, and requests hold the snapshot they started with."""
        registry.state_changed()  # the baseline
        last = time.monotonic()
        while self.alive:
            gevent.sleep(min(1.0, poll_seconds) if poll_seconds > 0 else 1.0)
            due = poll_seconds > 0 and time.monotonic() - last >= poll_seconds
            if due or registry.state_changed():
                last = time.monotonic()
                try:
                    registry.refresh()
                except Exception:  # a bug must not end the watching; the log has it
                    self.log.exception("model repository scan failed")

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM: stop accepting (gunicorn), and close connections idle between requests now
        rather than after their keep-alive time; in a greenlet of its own, out of the signal
        handler, as gunicorn does for SIGQUIT."""
        super().handle_exit(sig, frame)
        gevent.spawn(self.close_idle)

    def close_idle(self) -> None:
        """End each wait for a next request as if KEEPALIVE had run out: gunicorn then closes the
        connection quietly (closing the socket under the waiting greenlet logged a traceback each)."""
        for greenlet, wait in list(self.idle.items()):
            gevent.kill(greenlet, wait)

    def handle(self, listener, client, addr) -> None:
        client.settimeout(self.request_timeout)
        self.connections += 1
        try:
            AsyncWorker.handle(self, listener, client, addr)
        finally:
            self.connections -= 1

    @contextlib.contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """While waiting for a request head: bounded by KEEPALIVE, and ended at once on stop (also for
        a connection answered just before the signal, which was not yet waiting when it came)."""
        me = gevent.getcurrent()
        wait = gevent.Timeout(self.cfg.keepalive if self.alive else 0, False)
        if len(self.idle) >= self.max_idle:  # near worker_connections: the longest-waiting one goes
            oldest = next(iter(self.idle))
            gevent.kill(oldest, self.idle.pop(oldest))
        self.idle[me] = wait
        try:
            with wait:
                yield
        finally:
            self.idle.pop(me, None)

    def handle_request(self, listener_name, req, sock, addr) -> bool:
        length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
        continues = wants_continue(req)
        req._expected_100_continue = False  # gunicorn's own flag: it would send 100 after the body, or for a 413
        if length is not None and int(length) > self.max_body:
            req.must_close = True  # the app answers 413 without reading (a waiting client never sends the body)
        else:
            data = self.read_body(req, sock, int(length) if length is not None else self.max_body + 1, continues)
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
            req.body = io.BytesIO(data)
        try:
            keep_alive = self.answer_directly(req, sock)
            if keep_alive is None:
                keep_alive = super().handle_request(listener_name, req, sock, addr)
        except StopIteration:  # gunicorn's way to say the connection closes now
            if req.must_close:
                self.linger(sock)
            raise
        # Take turns: a client that sends its next request at once would otherwise find it already in
        # the socket, never yield, and starve this worker's other connections (measured at 16
        # connections: p50 0.7 ms but p90 260 ms). sleep(0) is not enough: it resumes among the
        # callbacks, ahead of connections waiting for I/O (p99 1.4 s at 64 connections); idle()
        # waits for the next poll, so every ready connection gets one request per turn (p99 61 ms).
        gevent.idle()
        return keep_alive

    def answer_directly(self, req, sock: socket.socket) -> bool | None:
        """What gunicorn's ``handle_request`` does, for a request the fast lane answers: True (keep the
        connection), StopIteration (close it); None if the lane leaves it to the app, body put back."""
        env = direct_answer.environ(req) if self.lane is not None else None
        if env is None:
            return None
        answer = self.lane.respond(env)
        if answer is None:
            req.body = env["wsgi.input"]
            return None
        self.cfg.pre_request(self, req)  # gunicorn's hooks, once each (a handed-over request meets them there)
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        close = direct_answer.write(sock, req, *answer, must_close=not self.alive or not self.cfg.keepalive)
        self.cfg.post_request(self, req, env, None)
        if close:
            raise StopIteration()
        return True

    def read_body(self, req, sock: socket.socket, size: int, continues: bool) -> bytes:
        """The whole body (at most MAX_BODY_BYTES + 1 bytes), within REQUEST_TIMEOUT of the head, once
        ``size`` bytes of the worker's budget are free. It waits for room at most half that time, so a
        body that gets room has the other half to arrive; else a 503 (no room) or a 408 (too slow)."""
        started = time.monotonic()
        with self.body_budget.reserve(size, self.request_timeout / 2) as room:
            if not room:
                metrics.BODIES_REFUSED.inc()
                self.reject(sock, ServiceError(503, "server_busy", "the server is reading as many large request "
                                               "bodies as it may (BODY_BUFFER_BYTES); retry shortly",
                                               headers={"Retry-After": "1"}), req.path)
                raise StopIteration()
            if continues:  # now, before reading, not after the body the client is holding back
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                with gevent.Timeout(max(0.0, self.request_timeout - (time.monotonic() - started))):
                    return req.body.read(self.max_body + 1)
            except gevent.Timeout:
                metrics.REQUEST_TIMEOUTS.inc()
                self.reject(sock, ServiceError(408, "request_timeout", f"the request body did not arrive within "
                                               f"REQUEST_TIMEOUT={self.request_timeout:g} s"), req.path)
                raise StopIteration() from None

    def reject(self, sock: socket.socket, error: ServiceError, path: str = "") -> None:
        write_error(sock, error, path)

    def linger(self, sock: socket.socket) -> None:
        """Before closing a connection whose body was not read to its end (over MAX_BODY_BYTES): say we
        are done writing, then read and drop what the client is still sending, for at most
        ``LINGER_SECONDS`` and 4 x MAX_BODY_BYTES. Closing with unread data makes the kernel reset
        the connection, and a client still uploading then loses the 413 (nginx's lingering close)."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        budget = 4 * self.max_body
        with gevent.Timeout(LINGER_SECONDS, False), contextlib.suppress(OSError):
            while budget > 0 and (chunk := sock.recv(1 << 16)):
                budget -= len(chunk)


def wants_continue(req) -> bool:
    """An HTTP/1.1 request whose client waits for ``100 Continue`` before it sends the body."""
    return req.version >= (1, 1) and any(name == "EXPECT" and value.strip().lower() == "100-continue"
                                         for name, value in req.headers)


def write_error(sock: socket.socket, error: ServiceError, path: str = "") -> None:
    """An error answered by the worker itself, before or instead of the app: the body of the path's
    protocol (``service/error_handlers.py``), a fresh request id, and the connection closed."""
    from service.error_handlers import rendered

    status, body = rendered(path, error)
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {exchange.request_id(None)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
            + "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.sendall(head + body)


def write_gunicorn_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """In place of ``gunicorn.util.write_error`` (an HTML page): gunicorn's own refusals (a bad request
    line, a URI or headers over the limits, a bad chunk) in the documented JSON error shape."""
    code = HTTP_CODES.get(status, "bad_request" if status < 500 else "internal_error")
    write_error(sock, ServiceError(status, code, (message or reason)[:300]))
