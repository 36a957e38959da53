"""The gRPC benchmark runs (``bench/grpc_load.py``; its figures are measured by hand, docs/benchmarks.md):
client processes of their own answer both contenders against the real server, with no errors, and the
run writes its results file. Speed is not judged here."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc")
from bench import grpc_load
from tests.integration.test_grpc import wait_grpc

pytestmark = pytest.mark.serial  # the clients' counted window opens 3 s after they start: run alone (Makefile)


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


def test_the_benchmark_writes_its_results_file(tmp_path, capsys):
    """``python -m bench.grpc_load`` whole, briefly: its own ``python -m service``, both contenders at one
    concurrency, no errors (its exit status), the rows and the machine in its results file."""
    import json

    out = tmp_path / "grpc_load.json"
    assert grpc_load.main(["--concurrency", "2", "--rounds", "1", "--seconds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "grpc_load" and result["command"].startswith("python -m bench.grpc_load")
    assert result["machine"]["cores"] and result["settings"]["rounds"] == 1
    assert [r["scenario"] for r in result["rows"]] == list(grpc_load.CONTENDERS)
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in result["rows"])
    assert grpc_load.report(result) in capsys.readouterr().out
