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



# The server's every metric in multiprocess mode, the app made (every module that makes metrics imported):
# each value already made must be of the class observability/metrics.py installs, and that class must ask
# process.current (a changed answer moves the samples to that id's file), not os.getpid.
EVERY_METRIC = textwrap.dedent("""
    import os
    from prometheus_client import REGISTRY, values
    from service.app import create_app
    from service.observability import metrics, process

    def values_of(metric):
        if metric._is_parent():
            for child in list(metric._metrics.values()):
                yield from values_of(child)
            return
        for attribute in vars(metric).values():
            for value in attribute if isinstance(attribute, list) else [attribute]:
                if hasattr(value, "_multiprocess"):
                    yield value

    create_app()
    made = [v for collector in list(REGISTRY._collector_to_names) if hasattr(collector, "_is_parent")
            for v in values_of(collector)]
    print(len(made), sorted({type(v).__qualname__ for v in made if type(v) is not values.ValueClass}))
    process.pid = 4242  # as if this process had forked: the next sample goes to files of that id
    metrics.REQUEST_TIMEOUTS.inc()
    print(sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
""")


def test_every_metric_asks_the_noted_process_id(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", EVERY_METRIC], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    made, files = out.stdout.splitlines()[-2:]
    count, strays = made.split(" ", 1)
    assert int(count) > 10 and strays == "[]", made  # every value made so far is of the installed class
    assert "counter_4242.db" in files
