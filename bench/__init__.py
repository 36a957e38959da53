"""The benchmarks (``make bench``, ``make stress``) and the pieces they share; docs/benchmarks.md has their method
and newest results.

Benchmarks, each ``python -m bench.NAME`` writing ``bench/results/NAME.json``: ``train_epoch``, ``serve_load``,
``cpu_per_request``, ``lone_request``, ``grpc_load``, ``frontier``, ``uploads``, ``stress``. Shared pieces:
``harness`` (gunicorn from a source tree, the KServe peer, wrk), ``bodies`` (the request bodies),
``slow_clients``, ``machine`` (what the machine is), ``procfs`` (the ``/proc`` readers), ``medians``,
``results`` (the results files) and ``report`` (docs/benchmarks.md's tables from them).
"""
