"""The HTTP server: gunicorn with gevent workers, and everything this project changes in gunicorn.

The one package that imports gunicorn or gevent (with ``service/batching/gevent_batcher.py``, the
batcher made for this worker's event loop). What it changes, and why (``docs/architecture.md``):

* ``worker.py``: the worker class; a request is read in full, within deadlines, before the app runs;
* ``request_body.py``: reading bodies under a per-worker memory budget, and the lingering close;
* ``idle_connections.py``: connections waiting for a request head, bounded and closed on stop;
* ``response_writer.py``: a response's head and small body in one send, and the inference middleware's answers
  written by the worker itself;
* ``refusals.py``: what the worker answers itself (408, 413, 503, gunicorn's own 400s) as JSON;
* ``background.py``: the worker's one background thread for long diagnostics;
* ``garbage_collection.py``: start-up objects moved out of the garbage collector's reach;
* ``peer_trust.py``: gunicorn's per-request check of the peer against ``FORWARDED_ALLOW_IPS``, remembered;
* ``logger.py``: gunicorn's own log lines as JSON; ``gunicorn_conf.py``: the configuration.
"""
