"""Gunicorn configuration, read from the same environment as the app (see service/config.py).

Models are loaded once in the master (``preload_app``) and shared with the forked workers
copy-on-write. One worker process per core runs the CPU-bound model; each is a gevent worker that
reads a request in full, within deadlines, before the app sees it (``service/http_server/worker.py`` says why).
"""

from __future__ import annotations

from service.config import Settings

_settings = Settings.from_env()

bind = _settings.bind_address(_settings.port)
workers = _settings.workers
worker_class = _settings.worker_class  # service.http_server.worker.BufferingGeventWorker; docs/architecture.md
threads = _settings.threads
worker_connections = _settings.worker_connections  # per worker; idle ones cost a greenlet, not a thread
preload_app = True
graceful_timeout = _settings.graceful_timeout
timeout = 60  # heartbeat: a worker whose event loop is blocked this long is replaced
keepalive = _settings.keepalive
# gunicorn_h1c (picohttpparser, gunicorn's own C request parser), required so that a build without it fails
# loudly instead of running 10% slower: docs/contributing.md (libraries)
http_parser = "fast"
loglevel = _settings.log_level
accesslog = None  # the app logs one structured line per request
logger_class = "service.http_server.logger.ServerLogger"
errorlog = "-"
# Nothing is written outside /dev/shm and the metrics directory, so a read-only root works:
# worker heartbeat files in /dev/shm, and no control socket (gunicorn 23+ puts one in $HOME).
worker_tmp_dir = "/dev/shm"
control_socket_disable = True
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.observability.logs.JSONFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings.log_level.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level.upper(), "handlers": ["console"], "propagate": False},
    },
}


def when_ready(server) -> None:
    """In the master, the app loaded and no worker forked yet: its objects leave the collector's reach
    (``service/http_server/garbage_collection.py``), so collections in the workers never touch, and
    un-share, their pages."""
    from service.http_server.garbage_collection import freeze_startup_objects

    freeze_startup_objects()


def on_exit(server) -> None:
    from service.http_server.garbage_collection import release_startup_objects

    release_startup_objects()


def on_starting(server) -> None:
    """In the master, before the app loads: the table the workers spread connections by."""
    from service.http_server import connection_share

    connection_share.create()


def pre_fork(server, worker) -> None:
    """In the master, as it forks a worker: the worker's slot in that table (a free one)."""
    from service.http_server import connection_share

    worker.share_slot = connection_share.claim({getattr(w, "share_slot", None) for w in server.WORKERS.values()})


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must leave the multiprocess metrics, and its slot the connections' table."""
    from prometheus_client import multiprocess

    from service.http_server import connection_share

    multiprocess.mark_process_dead(worker.pid)
    connection_share.vacate(getattr(worker, "share_slot", None))


def post_fork(server, worker) -> None:
    """A SIGTERM that arrives while a worker boots must still stop it (see the function)."""
    from service.http_server.worker import catch_early_stop

    catch_early_stop(server, worker)
