"""gunicorn's logger class for this server (``logger_class`` in ``gunicorn_conf.py``)."""

from __future__ import annotations

from gunicorn.glogging import Logger as GunicornLogger


class ServerLogger(GunicornLogger):
    """gunicorn's logger without its access log: the app writes one richer JSON line per request
    (``observability/request_record.py``). gunicorn would otherwise build every access line's fields and drop them,
    since a ``logconfig_dict`` counts as access logging switched on (measured: ~5% of a worker)."""

    def access(self, resp, req, environ, request_time) -> None:
        return None
