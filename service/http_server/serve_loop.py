"""The worker's serving loop: gunicorn's ``GeventWorker.run`` (gunicorn 27), woken at once by a stop.

gunicorn's loop looks at ``worker.alive`` once a second (``gevent.sleep(1.0)``), and while the
connections in flight drain, once a second again: a worker told to stop went on serving for up to a
second, then exited up to a second after its last answer. On a 2-worker server a SIGTERM took 1.7-1.9 s
to end every process, most of it those ticks. Here the loop waits on an event the stop sets, and the
drain is looked at every ``DRAIN_CHECK`` seconds; what the loop does is gunicorn's: one ``StreamServer``
per listening socket (this process's ``ggevent.StreamServer``: the connection share's, see
``worker.py``), the heartbeat (``notify``) at least once a second, at most ``graceful_timeout`` for
the connections in flight, then those left are stopped.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gunicorn.workers import ggevent

DRAIN_CHECK = 0.05  # seconds between looks at the connections still in flight, once stopping
HEARTBEAT = 1.0  # gunicorn's: the master counts a worker silent for --timeout as hung


def serve(worker: Any, stopping: Event) -> None:
    """Serve ``worker.sockets`` until ``worker.alive`` is False (``stopping`` set: at once), then let
    the connections in flight finish within ``graceful_timeout``."""
    ssl_args = {"ssl_context": ggevent.ssl_context(worker.cfg)} if worker.cfg.is_ssl else {}
    servers = []
    for sock in worker.sockets:
        sock.setblocking(1)
        server = ggevent.StreamServer(sock, handle=partial(worker.handle, sock), spawn=Pool(worker.worker_connections),
                                      **ssl_args)
        if worker.cfg.workers > 1:
            server.max_accept = 1  # as gunicorn: one accept per turn, so the workers share new connections
        server.start()
        servers.append(server)
    while worker.alive:  # also ended by gunicorn itself (max_requests), within a heartbeat
        worker.notify()
        stopping.wait(HEARTBEAT)
    try:
        for server in servers:
            server.close()  # no more accepts
        deadline = time.monotonic() + worker.cfg.graceful_timeout
        beat = time.monotonic()
        while any(server.pool.free_count() != server.pool.size for server in servers):
            if time.monotonic() > deadline:
                worker.log.warning("Worker graceful timeout (pid:%s)", worker.pid)
                for server in servers:
                    server.stop(timeout=1)
                return
            if time.monotonic() - beat >= HEARTBEAT:
                worker.notify()
                beat = time.monotonic()
            gevent.sleep(DRAIN_CHECK)
    except Exception:  # as gunicorn's: a failure while stopping must not keep the worker from exiting
        worker.log.exception("while stopping the worker (pid:%s)", worker.pid)
