"""The gunicorn worker: gevent, with every request read in full, within deadlines, before the app runs.

Why (``docs/architecture.md`` has the measurements): gunicorn's ``sync`` worker gives each
connection a whole process while it sends its request, so a handful of clients that send slowly
stall the server, and it cannot keep connections alive; ``gthread`` parks a thread on every
connection that has sent its first byte. Under gevent a waiting connection costs a greenlet, and
the model still runs on one process per core.

On top of gunicorn's gevent worker this adds what a buffering proxy would do in front, each part in
a module of its own:

* request bodies read whole, within ``REQUEST_TIMEOUT`` and a memory budget (``request_body.py``);
* waits for a request head bounded, shared fairly and ended on stop (``idle_connections.py``);
* connections spread evenly over the workers (``connection_share.py``);
* gunicorn's own refusals in the documented JSON error shape (``refusals.py``);
* a response's head and small body in one send, and the inference middleware's answers written by the worker
  itself (``response_writer.py``);
* gradchecks and explanations on the worker's background thread (``background.py``);
* concurrent inference requests share forward passes (``service/batching/gevent_batcher.py``);
* what start-up made is never scanned by the garbage collector again (``garbage_collection.py``);
* whether a peer may set ``X-Forwarded-*`` decided once per address (``peer_trust.py``);
* gunicorn's settings looked up once each (``worker_config.py``);
* the model repository rescanned every ``MODEL_POLL_SECONDS`` (``service/repository/watcher.py``);
* each socket send or receive gives up after ``REQUEST_TIMEOUT`` (a client that stops reading);
* a stop ends the serving loop at once, not at its next one-second tick (``serve_loop.py``);
* connections take turns: each yields to the others after every request.
"""

from __future__ import annotations

import io
import queue
import signal
import socket
import time

import gevent
from gevent.event import Event
from gunicorn import util as gunicorn_util
from gunicorn.workers import ggevent
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from service.app.inference_middleware import RECEIVED, InferenceMiddleware
from service.batching.gevent_batcher import GeventBatcher
from service.batching.queue_policy import QueuePolicy
from service.capture.budget import CaptureDirError
from service.config import Settings
from service.http_server import (
    connection_share,
    garbage_collection,
    peer_trust,
    response_writer,
    serve_loop,
    shadow_runner,
)
from service.http_server.background import BackgroundThread
from service.http_server.capture_writer import CaptureWriter
from service.http_server.idle_connections import IdleConnections, Wait
from service.http_server.refusals import write_gunicorn_error
from service.http_server.request_body import BodyReader
from service.http_server.turns import Turns
from service.http_server.worker_config import WorkerConfig
from service.observability import tracing
from service.repository.watcher import watch

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
    """``worker_class = "service.http_server.worker.BufferingGeventWorker"`` (``gunicorn_conf.py``)."""

    def init_process(self) -> None:
        self.cfg = WorkerConfig(self.cfg)  # gunicorn's settings, each looked up once in this process
        settings = Settings.from_env()
        self.settings = settings
        self.request_timeout = float(settings.request_timeout)
        self.idle = IdleConnections(settings.worker_connections)
        self.bodies = BodyReader(settings.max_body_bytes, self.request_timeout, settings.body_budget, self.idle)
        self.middleware: InferenceMiddleware | None = None  # the app's, found after fork (run)
        self.turns = Turns()
        self.queue = QueuePolicy()  # the data plane's, once the app is known (run): MAX_QUEUE_SIZE
        self.connections = 0  # open client connections (the batcher's lone request needs no turn)
        self.share = connection_share.Share(getattr(self, "share_slot", None))  # given by the master (pre_fork)
        self.stopping: Event | None = None  # set by a stop: the serving loop ends at once (serve_loop.py)
        gunicorn_util.write_error = write_gunicorn_error  # its error pages, in our error shape
        response_writer.install()  # a response's head and small body in one send
        peer_trust.install()  # gunicorn's per-request FORWARDED_ALLOW_IPS check, remembered per peer
        super().init_process()

    def run(self) -> None:
        # After fork (the app is preloaded in the master): the batcher's queues and cost tables, the
        # background thread and the repository watcher belong to this process.
        tracing.start()  # OTEL_*: the SDK and its export thread belong to this process (docs/tracing.md)
        self.stopping = Event()
        app = self.wsgi
        extensions = getattr(app, "extensions", {})
        plane, diagnostics = extensions.get("dataplane"), extensions.get("diagnostics")
        settings = self.settings
        if plane is not None:
            self.queue = plane.queue
            if settings.batching:  # BATCHING: concurrent requests share forward passes
                plane.serve_with(GeventBatcher(settings.max_batch, settings.max_queue_delay_microseconds,
                                               settings.preferred_batch_sizes(), lambda: self.connections <= 1,
                                               self.turns.take, self.turns.answer))
            else:
                plane.publish_signal()
            gevent.spawn(watch, plane.registry, settings.model_poll_seconds, self.sleep, every_tick=plane.tick)
            if plane.capture is not None:  # CAPTURE_DIR: records written from a native thread
                capture_writer = CaptureWriter()
                try:
                    plane.capture.drive_with(capture_writer)
                except CaptureDirError as e:  # usable when the server started, not now: serve, without it
                    self.log.error("capture and feedback off in this worker: %s", e)
                    plane.capture = None  # feedback reads the plane's
            # rollouts' comparisons, on the loop; faster while the worker holds no connection
            shadow_runner.run(plane.rollouts, lambda: self.alive, lambda: self.connections == 0)
        background = BackgroundThread()
        if diagnostics is not None:
            diagnostics.run = background.run
        if extensions.get("feedback") is not None:
            extensions["feedback"].run = background.run  # its lookups and fsyncs, off the event loop
        self.middleware = InferenceMiddleware.of(app)
        garbage_collection.freeze_startup_objects()  # 14-20% less CPU per request
        # gunicorn's run() makes one gevent StreamServer per listening socket: this one's accepts
        # leave a connection to a worker holding fewer (this process's copy of gunicorn's module)
        ggevent.StreamServer = connection_share.deferring_server(ggevent.StreamServer, self.share)
        try:
            serve_loop.serve(self, self.stopping)  # gunicorn's GeventWorker.run, woken at once by a stop
        finally:
            garbage_collection.release_startup_objects()
            if plane is not None and plane.capture is not None:
                capture_writer.stop()
                plane.capture.close()  # what is still queued, written before the worker exits
            tracing.shutdown()  # spans still queued, exported before the worker exits

    def sleep(self, seconds: float) -> bool:
        """The repository watcher's wait: sleep on the event loop, then say whether the worker stops."""
        gevent.sleep(seconds)
        return not self.alive

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM: stop accepting (gunicorn), and close connections idle between requests now rather
        than after their keep-alive time; in a greenlet of its own, out of the signal handler, as
        gunicorn does for SIGQUIT."""
        super().handle_exit(sig, frame)
        gevent.spawn(self.idle.close_all)
        if self.stopping is not None:
            gevent.spawn(self.stopping.set)

    def handle(self, listener, client, addr) -> None:
        # each blocking send or receive: a client that stops reading its answers is let go after this
        # (the body's own deadline is REQUEST_TIMEOUT, the wait for a next request KEEPALIVE: neither cut short)
        client.settimeout(max(self.request_timeout, self.cfg.keepalive))
        self.connections += 1
        try:
            AsyncWorker.handle(self, listener, client, addr)
        finally:
            self.connections -= 1

    def timeout_ctx(self) -> Wait:
        """gunicorn's wait for a request head: bounded by KEEPALIVE, and ended at once on stop."""
        return self.idle.waiting(self.cfg.keepalive if self.alive else 0)

    def handle_request(self, listener_name, req, sock, addr) -> bool:
        # Take turns: a client that sends its next request at once would otherwise find it already in
        # the socket, never yield, and starve this worker's other connections (measured at 16
        # connections: p50 0.7 ms but p90 260 ms). Each request takes one turn (turns.py), after its
        # answer: by then the client's next request has mostly arrived. With MAX_QUEUE_SIZE, an
        # inference request takes it after its body is read and before it is parsed, counted
        # meanwhile among the waiting, so that one the queue has no room for is refused when it is
        # read rather than a turn later (refusals' p99 16 ms -> 3 ms at MAX_QUEUE_SIZE=16,
        # bench.overload). That order costs 7-9 % more CPU a request (the next request is read before
        # the client sent it: one more wait on the socket), so only a bounded queue pays it.
        turned = False
        try:
            if tracing.ENABLED:  # the body's reading, a child of the request's span once the app names it
                started = time.time_ns()
                self.bodies.buffer(req, sock)
                read = isinstance(req.body, io.BytesIO) and req.body.getbuffer().nbytes > 0  # not for a GET, nor a 413
                tracing.body_read(started, time.time_ns() if read else None)
            else:
                self.bodies.buffer(req, sock)
            env = response_writer.middleware_environ(req) if self.middleware is not None else None
            taken = None
            if env is not None and self.queue.max_queue_size and not self.queue.full():
                taken = self.middleware.takes(env)  # an inference request: it waits for its turn counted
            if taken is not None:
                turned = True
                env[RECEIVED] = time.perf_counter()  # its deadline runs while it waits for its turn
                self.queue.hold()
                try:
                    self.turns.take()
                finally:
                    self.queue.unhold()
            keep_alive = self.answer_directly(req, sock, env, taken) if env is not None else None
            if keep_alive is None:
                keep_alive = super().handle_request(listener_name, req, sock, addr)
        except StopIteration:  # gunicorn's way to say the connection closes now
            if req.must_close:  # answered before its body was read to the end: drain it first
                self.bodies.linger(sock)
            raise
        if not turned:
            self.turns.take()
        return keep_alive

    def answer_directly(self, req, sock: socket.socket, env: dict, taken: tuple | None) -> bool | None:
        """What gunicorn's ``handle_request`` does, for a request the inference middleware answers: True (keep the
        connection), StopIteration (close it); None if the middleware leaves it to the app, body put back
        (``taken``: the middleware's ``takes``, when already asked)."""
        answer = self.middleware.respond(env, taken)
        if answer is None:
            req.body = env["wsgi.input"]
            return None
        self.cfg.pre_request(self, req)  # gunicorn's hooks, once each (a handed-over request meets them there)
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        close = response_writer.write_answer(sock, req, *answer,
                                             must_close=not self.alive or not self.cfg.keepalive)
        self.cfg.post_request(self, req, env, None)
        if close:
            raise StopIteration()
        return True
