"""Triton-style inference statistics (service/observability/statistics.py) are summed over worker processes: real
processes write in Prometheus's multiprocess mode, as gunicorn's workers do, and one reads them all."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

WORKER = """
import sys, time
from service.observability import statistics
rec = statistics.recorder("xor", 1)
for _ in range(int(sys.argv[1])):
    rec.succeeded(samples=3, compute_input=0.001, compute_infer=0.002, compute_output=0.0005)
rec.failed(0.004)
statistics.recorder("digits", 2).succeeded(samples=1, compute_input=0, compute_infer=0.001, compute_output=0)
"""


def test_statistics_are_summed_over_processes(tmp_path, monkeypatch):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for runs in (5, 7):  # two "workers", one after the other: a finished worker's counts stay
        subprocess.run([sys.executable, "-c", WORKER, str(runs)], cwd=ROOT, env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    from service.observability import statistics

    stats = statistics.read()
    assert set(stats) == {("xor", 1), ("digits", 2)}
    xor = stats[("xor", 1)]
    assert (xor.successes, xor.failures, xor.samples) == (12, 2, 36)
    assert xor.ns["compute_input"] == 12_000_000 and xor.ns["compute_infer"] == 24_000_000
    assert xor.ns["compute_output"] == 6_000_000 and xor.ns["success"] == 42_000_000
    assert xor.ns["fail"] == 8_000_000
    assert 0 < xor.last_inference_ms <= stats[("digits", 2)].last_inference_ms
    assert (stats[("digits", 2)].successes, stats[("digits", 2)].samples) == (2, 2)
