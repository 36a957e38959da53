"""gunicorn's logger class for this server (``logger_class`` in ``gunicorn_conf.py``)."""

from __future__ import annotations

import sys

from gunicorn.glogging import Logger as GunicornLogger

SOCKET_ERROR = "Socket error processing request."  # what gunicorn's worker logs for a socket's OSError


class ServerLogger(GunicornLogger):
    """gunicorn's logger without its access log: the app writes one richer JSON line per request
    (``observability/request_record.py``). gunicorn would otherwise build every access line's fields and drop them,
    since a ``logconfig_dict`` counts as access logging switched on (measured: ~5% of a worker)."""

    def access(self, resp, req, environ, request_time) -> None:
        return None

    def exception(self, msg, *args, **kwargs) -> None:
        """gunicorn logs any socket error but a reset as an error with its traceback. A socket timeout is a
        client that stopped reading or sending (the worker closes the connection): not the server's
        error, and any client could fill the log with them. It is one line at INFO, without traceback."""
        if msg == SOCKET_ERROR and isinstance(sys.exc_info()[1], TimeoutError):
            self.info("%s (a client too slow: timed out, connection closed)", msg.rstrip("."))
            return
        super().exception(msg, *args, **kwargs)
