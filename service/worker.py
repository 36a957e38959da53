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
* a body over ``MAX_BODY_BYTES`` is never read: the app answers 413 and the connection closes;
* each socket send or receive gives up after ``REQUEST_TIMEOUT`` (a client that stops reading);
* a gradcheck runs on the worker's background thread (:func:`off_loop`), not on the event loop;
* concurrent inference requests share forward passes (``service/batcher.py``, set up in :meth:`run`);
* connections take turns: each yields to the others after every request;
* the model repository is rescanned every ``MODEL_POLL_SECONDS`` (``service/registry.py``);
* on a graceful stop, connections waiting idle between requests are closed at once instead of
  holding the stop for their keep-alive time.
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
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from service import metrics
from service.batcher import install as install_batcher
from service.config import Settings
from service.errors import ServiceError

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
        self.poll_seconds = settings.model_poll_seconds
        self.settings = settings
        self.idle: dict[Any, gevent.Timeout] = {}  # connection greenlet -> its wait for the next request
        super().init_process()

    def run(self) -> None:
        # after fork (the app is preloaded in the master): the batcher's thread, queues and cost tables
        # belong to this process (service/batcher.py)
        install_batcher(self.wsgi, self.settings)
        registry = getattr(self.wsgi, "extensions", {}).get("model_registry")
        if registry is not None:
            gevent.spawn(self.watch_repository, registry, self.poll_seconds)
        super().run()

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
        AsyncWorker.handle(self, listener, client, addr)

    @contextlib.contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """While waiting for a request head: bounded by KEEPALIVE, and ended at once on stop (also for
        a connection answered just before the signal, which was not yet waiting when it came)."""
        me = gevent.getcurrent()
        wait = gevent.Timeout(self.cfg.keepalive if self.alive else 0, False)
        self.idle[me] = wait
        try:
            with wait:
                yield
        finally:
            self.idle.pop(me, None)

    def handle_request(self, listener_name, req, sock, addr) -> bool:
        length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
        if length is not None and int(length) > self.max_body:
            req.must_close = True  # the app answers 413 without reading; the rest is never read
        else:
            try:
                with gevent.Timeout(self.request_timeout):
                    data = req.body.read(self.max_body + 1)
            except gevent.Timeout:
                metrics.REQUEST_TIMEOUTS.inc()
                self.reject(sock, ServiceError(408, "request_timeout", f"the request body did not arrive within "
                                               f"REQUEST_TIMEOUT={self.request_timeout:g} s"))
                raise StopIteration() from None
            if length is not None and len(data) < int(length):  # the client hung up mid-body: nobody to answer
                raise StopIteration()
            if len(data) > self.max_body:  # a chunked body over the limit: the app answers 413
                req.must_close = True
            # The app reads the whole body from memory, in one piece: gunicorn's Body would copy the
            # rest of its buffer again for every chunk werkzeug asks for (13% of a 256-image request).
            req.body = io.BytesIO(data)
        keep_alive = super().handle_request(listener_name, req, sock, addr)
        # Take turns: a client that sends its next request at once would otherwise find it already in
        # the socket, never yield, and starve this worker's other connections (measured at 16
        # connections: p50 0.7 ms but p90 260 ms). sleep(0) is not enough: it resumes among the
        # callbacks, ahead of connections waiting for I/O (p99 1.4 s at 64 connections); idle()
        # waits for the next poll, so every ready connection gets one request per turn (p99 61 ms).
        gevent.idle()
        return keep_alive

    def reject(self, sock: socket.socket, error: ServiceError) -> None:
        from service.error_handlers import error_body

        body = error_body(error)
        head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            sock.sendall(head + body)
