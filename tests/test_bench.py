"""The benchmarks' shared pieces work (the benchmarks themselves run by hand: make bench, make stress)."""

from __future__ import annotations

import pytest

from bench import train_epoch


def test_machine_records_the_thread_pools_in_force():
    info = train_epoch.machine()
    assert info["cores"] and info["numpy"] and "openblas" in info["thread pools in force"].lower()
    assert train_epoch.machine(threads=2)["threads asked"] == "2"


@pytest.mark.parametrize("module", ["bench.train_epoch", "bench.serve_load", "bench.stress",
                                    "bench.cpu_per_request", "bench.frontier", "bench.lone_request",
                                    "bench.grpc_cpu"])
def test_each_benchmark_parses_its_arguments(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out


@pytest.mark.parametrize(("n", "low", "high"), [(10, 2, 9), (20, 6, 15), (40, 14, 27), (150, 63, 88)])
def test_the_median_interval_is_the_sign_tests(n, low, high):
    """The 95 % interval of a median from order statistics, as the textbooks' tables give it (ranks from 1)."""
    from bench.lone_request import median_interval

    values = [float(i) for i in range(1, n + 1)][::-1]  # any order: ranks are by value
    assert median_interval(values) == ((n + 1) / 2, low, high)


def test_the_lone_request_pairs_run_against_both_servers(mnist_dir, tmp_path, capsys):
    import json

    from bench import lone_request

    assert lone_request.main(["--data-dir", str(mnist_dir), "--pairs", "2", "--model", "xor1",
                              "--out", str(tmp_path / "pairs.json")]) == 0
    result = json.loads((tmp_path / "pairs.json").read_text())
    assert [p["first"] for p in result["pairs"]] == ["on", "off"]  # the order alternates
    assert result["summary"]["errors"] == 0 and result["summary"]["p50_us_on"] > 0
    assert all(p["cpu_us"]["on"] > 0 and p["cpu_us"]["off"] > 0 for p in result["pairs"])  # the workers' /proc
    assert "| p50 latency |" in capsys.readouterr().out
    # two runs pooled: four pairs, the same medians as the pairs give
    assert lone_request.main(["--pool", str(tmp_path / "pairs.json"), str(tmp_path / "pairs.json")]) == 0
    pooled = capsys.readouterr().out
    ratio = sorted(p["p50_ratio"] for p in result["pairs"])
    assert "(4 pairs;" in pooled and f"| p50 latency | {(ratio[0] + ratio[1]) / 2:.3f} |" in pooled


def test_the_frontier_table_reads_a_trained_version_and_serves_it(mnist_dir, tmp_path, capsys):
    import json

    from bench import frontier
    from model.io import load_model
    from tests.conftest import served_version

    version = served_version("mnist")
    meta = load_model(version / "model.npz").metadata
    argv = [str(version), "--data-dir", str(mnist_dir), "--rounds", "1", "--serve", "--seconds", "1",
            "--serve-rounds", "1", "--json", str(tmp_path / "f.json")]
    assert frontier.main(argv) == 0
    row = json.loads((tmp_path / "f.json").read_text())["rows"][0]
    assert row["parameters"] == sum(a.size for a in load_model(version / "model.npz").network.named_params().values())
    assert (row["validation_accuracy"], row["test_accuracy"]) == (meta["metrics"]["validation_accuracy"],
                                                                  meta["metrics"]["test_accuracy"])
    assert row["forward_us_batch1"] > 0 and row["forward_us_batch256"] > 0
    assert row["predict_rps_c16"] > 0 and row["errors"] == 0  # the real server, under wrk
    assert f"| {row['network']} | {row['parameters']:,} |" in capsys.readouterr().out
