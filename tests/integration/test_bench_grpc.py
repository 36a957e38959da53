"""The gRPC benchmark's driver runs (``bench/grpc_load.py``; its figures are measured by hand): client
processes of their own answer both contenders against the real server, with no errors. Speed is not
judged here."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc")
from bench import grpc_load
from tests.integration.test_grpc import wait_grpc


def test_the_driver_answers_both_contenders(gunicorn_server):
    wait_grpc(gunicorn_server.grpc_target)
    rows = grpc_load.run(gunicorn_server.grpc_target, gunicorn_server.url.removeprefix("http://"), [1, 3],
                         seconds=1.0, rounds=1, processes=2)
    assert [(r["scenario"], r["concurrency"]) for r in rows] == [
        (label, c) for c in (1, 3) for label in grpc_load.CONTENDERS]
    for r in rows:
        assert r["errors"] == 0 and r["rps"] > 0 and r["p50_ms"] <= r["p99_ms"], r
        assert r["client_processes"] == min(2, r["concurrency"])
    assert "| gRPC (tritonclient.grpc) | 1 | 3 |" in grpc_load.table(rows)


def test_the_benchmark_parses_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        grpc_load.main(["--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out
