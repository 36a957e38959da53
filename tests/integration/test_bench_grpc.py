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
    rows = grpc_load.run(gunicorn_server.grpc_target, gunicorn_server.url.removeprefix("http://"), [3],
                         seconds=1.0, rounds=1, processes=2)
    assert [r["scenario"] for r in rows] == list(grpc_load.CONTENDERS)
    for r in rows:  # 3 calls in flight from 2 client processes (2 + 1 threads)
        assert r["errors"] == 0 and r["rps"] > 0 and r["p50_ms"] <= r["p99_ms"], r
        assert r["client_processes"] == 2 and r["concurrency"] == 3
    assert "| gRPC (tritonclient.grpc) | 1 | 3 |" in grpc_load.table(rows)


def test_the_benchmark_parses_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        grpc_load.main(["--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out


def test_cpu_per_call_reads_both_protocols_servers(capsys):
    """``bench/grpc_cpu.py``: its own ``python -m service``, one round each of gRPC and HTTP V2 binary with
    no errors (its exit status), a CPU per call read from the gRPC processes and from gunicorn's workers
    (positive: they served); calls of 4 images (``--batch``)."""
    from bench import grpc_cpu

    assert grpc_cpu.main(["--http", "--batch", "4", "--concurrency", "2", "--rounds", "1", "--seconds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("c=2 ")]
    assert len(rows) == 2 and rows[1].endswith(tuple("0123456789]")) and "HTTP V2 binary" in rows[1], rows
    for row in rows:
        server = float(row.split("server CPU per call median ")[1].split(" µs")[0])
        assert server > 0, row
