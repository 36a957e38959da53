"""Gunicorn configuration, read from the same environment as the app (see service/config.py).

Models are loaded once in the master (``preload_app``) and shared with the forked workers
copy-on-write; sync workers suit this CPU-bound work (one request per worker at a time).
"""

from __future__ import annotations

from service.config import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = "sync"
preload_app = True
graceful_timeout = _settings.graceful_timeout
timeout = 60
keepalive = 5
loglevel = _settings.log_level
accesslog = None  # the app logs one structured line per request
errorlog = "-"
# Nothing is written outside /dev/shm and the metrics directory, so a read-only root works:
# worker heartbeat files in /dev/shm, and no control socket (gunicorn 23+ puts one in $HOME).
worker_tmp_dir = "/dev/shm"
control_socket_disable = True
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.logs.JSONFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings.log_level.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level.upper(), "handlers": ["console"], "propagate": False},
    },
}


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must leave the multiprocess metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
