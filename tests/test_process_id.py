"""The process id the logs and the multiprocess metrics use (service/observability/process.py): noted at
start and again after each fork, so a forked worker's samples land in its own file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter in multiprocess mode: a counter made and counted before a fork (as gunicorn's
# master could), then counted in the child and again in the parent. Each process must write its own
# file, so the sum over the files is every increment.
SCRIPT = textwrap.dedent("""
    import os
    from prometheus_client import CollectorRegistry, multiprocess
    from service.observability import metrics, process

    parent = os.getpid()
    metrics.REQUEST_TIMEOUTS.inc()
    child = os.fork()
    if child == 0:
        os._exit(0 if process.current() == os.getpid() != parent else 3)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, "a forked child kept its parent's id"
    child = os.fork()
    if child == 0:
        metrics.REQUEST_TIMEOUTS.inc(10)
        os._exit(0)
    os.waitpid(child, 0)
    metrics.REQUEST_TIMEOUTS.inc(100)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    print(registry.get_sample_value("nn_request_timeouts_total"))
    print(sorted(name for name in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]) if name.startswith("counter")))
    print(parent, child)
""")


def test_a_forked_child_counts_in_a_file_of_its_own(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    total, files, pids = out.stdout.splitlines()
    parent, child = pids.split()
    assert float(total) == 111.0
    assert files == str(sorted([f"counter_{parent}.db", f"counter_{child}.db"]))


def test_the_id_is_the_system_s():
    from service.observability import process

    assert process.current() == process.pid == os.getpid()
