"""The benchmarks' shared pieces work (the benchmarks themselves run by hand: make bench, make stress)."""

from __future__ import annotations

import pytest

from bench import train_epoch


def test_machine_records_the_thread_pools_in_force():
    info = train_epoch.machine()
    assert info["cores"] and info["numpy"] and "openblas" in info["thread pools in force"].lower()
    assert train_epoch.machine(threads=2)["threads asked"] == "2"


@pytest.mark.parametrize("module", ["bench.train_epoch", "bench.serve_load", "bench.stress",
                                    "bench.cpu_per_request"])
def test_each_benchmark_parses_its_arguments(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out
