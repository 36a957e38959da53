"""The large-batch benchmarks run, briefly and for real, and record what docs/benchmarks.md renders: the
256-image comparison of ``bench.serve_load --batches`` over two trees, the JSON parser candidates of
``bench.json_parsers``, and ``bench.grpc_load --tree``. Speed is never judged here."""

from __future__ import annotations

import json

import pytest

from bench.harness import ROOT, have_wrk


@pytest.fixture(autouse=True)
def no_warmups(monkeypatch):
    monkeypatch.setenv("BENCH_WARM_SECONDS", "0")  # warm-ups serve figures, and these runs judge none


def test_json_parsers_records_every_candidate(mnist_dir, tmp_path, capsys):
    from bench import json_parsers

    with pytest.raises(SystemExit):
        json_parsers.main(["--help"])
    out = tmp_path / "json_parsers.json"
    assert json_parsers.main(["--data-dir", str(mnist_dir), "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "json_parsers" and result["numbers"] == 256 * 784
    rows = {r["candidate"]: r for r in result["rows"]}
    assert rows["simdjson as_buffer (json_numbers, now)"]["bit_for_bit"]  # the one adopted reads the same
    assert rows["orjson, then struct rows (before)"]["bit_for_bit"]
    assert "| simdjson as_buffer (json_numbers, now) |" in json_parsers.report(result)


def test_the_batch_comparison_runs_over_two_trees(mnist_dir, tmp_path):
    if not have_wrk():
        pytest.fail("wrk is needed (Debian package wrk; .ci/run installs it)")
    from bench import serve_load

    out = tmp_path / "serve_batches.json"
    argv = ["--batches", "--data-dir", str(mnist_dir), "--seconds", "0.3", "--concurrency", "2", "--rounds", "1",
            "--tree", str(ROOT), "--tree", str(ROOT), "--out", str(out)]
    assert serve_load.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "batches" and len(result["trees"]) == 2
    rows = result["rows"]
    assert rows[0]["scenario"].startswith("compute ceiling") and rows[0]["images_per_s"] > 0
    scenarios = {(r["scenario"], r["tree"]) for r in rows[1:]}
    assert scenarios == {(label, tree) for _, label, _ in serve_load.BATCHES for tree in (0, 1)}
    assert all(r["errors"] == 0 and r["cpu_ms"] > 0 for r in rows[1:])
    assert {(p["scenario"], p["of"]) for p in result["paired"]} == \
        {(label, of) for _, label, _ in serve_load.BATCHES for of in ("rps", "cpu_ms")}
    text = serve_load.report(result)
    assert "| V2 infer mnist, 256, binary | 2 | tree 1 (" in text and "Compute ceiling:" in text


def test_grpc_load_compares_trees(tmp_path):
    from bench import grpc_load

    out = tmp_path / "grpc_trees.json"
    argv = ["--batch", "4", "--concurrency", "1", "--rounds", "1", "--seconds", "1", "--client-processes", "1",
            "--tree", str(ROOT), "--tree", str(ROOT), "--out", str(out)]
    assert grpc_load.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["scenario"] for r in result["rows"]] == [f"{c}, tree {i}" for i in (0, 1) for c in grpc_load.CONTENDERS]
    text = grpc_load.report(result)
    assert "gRPC (tritonclient.grpc), c=1: tree 1" in text and "| HTTP V2 binary (tritonclient.http), tree 1 |" in text
    assert "the gRPC processes' CPU per call" in text
