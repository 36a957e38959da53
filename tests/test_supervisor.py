"""The lean supervisor and the default number of gRPC processes (``service/__main__.py``,
``service/supervisor.py``); the supervisor's behaviour under signals, restarts and readiness is
tested for real in ``tests/integration/test_supervisor.py`` and ``tests/integration/test_lifecycle.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from service import supervisor
from service.__main__ import grpc_processes
from service.config import Settings
from service.supervisor import main

HEAVY = ("pydantic", "numpy", "prometheus_client", "grpc", "flask", "gunicorn", "gevent", "service.config",
         "dataclasses", "inspect")


def test_the_supervisor_imports_only_the_standard_library():
    """It lives as long as the server: nothing that validating the settings needed stays in it."""
    code = "import sys, service.supervisor, json; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY]
    assert [m for m in loaded if m.startswith("service.")] == ["service.observability",
                                                                "service.observability.grpc_readiness",
                                                                "service.supervisor"]


@pytest.mark.parametrize(("workers", "grpc_workers", "expected"), [
    ("1", "", 1), ("2", "", 1), ("3", "", 3), ("4", "", 4), ("2", "2", 2), ("1", "3", 3), ("8", "1", 1)])
def test_grpc_processes_default_to_one_up_to_two_workers(workers, grpc_workers, expected):
    settings = Settings.from_env({"WORKERS": workers, "GRPC_WORKERS": grpc_workers})
    assert grpc_processes(settings) == expected


@pytest.mark.parametrize("argv", [[], ["2"], ["x", "/tmp", "gunicorn"], ["0", "/tmp", "gunicorn"]])
def test_the_supervisor_refuses_a_command_line_it_was_not_given_by_python_m_service(argv, capsys):
    assert main(argv) == 2
    assert "started by python -m service" in capsys.readouterr().err


def test_a_bad_setting_fails_before_the_exec(tmp_path):
    """Validation stays in ``python -m service``: the variable named, exit 1, no supervisor started."""
    out = subprocess.run([sys.executable, "-m", "service"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "GRPC_WORKERS": "0", "STATE_DIR": str(tmp_path)})
    assert out.returncode == 1 and "  GRPC_WORKERS: Input should be greater than or equal to 1" in out.stderr, \
        out.stderr
    assert not (tmp_path / "grpc-serving").exists()


def test_a_child_is_reaped_by_the_supervisor_alone():
    """A child's Popen dropped while it ran was reaped by subprocess itself at the next start, so the
    supervisor's wait never saw that death: its slot never restarted, and its stop signal to the gone
    pid raised out of the signal handler (PID 1 in the image)."""
    first = supervisor.spawn([sys.executable, "-c", "pass"])
    time.sleep(1.0)  # it has ended, unreaped
    second = supervisor.spawn([sys.executable, "-c", "pass"])  # Popen reaps the dropped ones here
    for pid in (first, second):
        assert os.waitpid(pid, 0)[0] == pid  # ChildProcessError: reaped by someone else
        supervisor.reaped(pid, 0)
    assert first not in supervisor.CHILDREN and second not in supervisor.CHILDREN
    supervisor.signal_child(first, signal.SIGTERM)  # gone: no error


def test_a_dead_process_s_live_gauges_leave_the_metrics(tmp_path, monkeypatch):
    """A killed gRPC process's in-progress and drift gauges were summed into /metrics for good."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("gauge_livesum_123.db", "gauge_liveall_123.db", "gauge_all_123.db", "gauge_livesum_1234.db",
                 "counter_123.db"):
        (tmp_path / name).touch()
    supervisor.forget_gauges(123)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_123.db", "gauge_all_123.db",
                                                          "gauge_livesum_1234.db"]


def test_restart_lines_are_json():
    out = subprocess.run([sys.executable, "-c", "from service.supervisor import log; log('warning', 'x\\ny', code=1)"],
                         capture_output=True, text=True, check=True)
    line = json.loads(out.stderr)
    assert (line["level"], line["logger"], line["message"], line["code"]) == ("warning", "service.supervisor",
                                                                               "x\ny", 1)


@pytest.mark.parametrize("variable", ["STATE_DIR", "PROMETHEUS_MULTIPROC_DIR"])
def test_a_directory_setting_that_cannot_be_one_fails_at_start(tmp_path, variable):
    """A STATE_DIR that did not exist was taken, then every gradcheck and repository call was a 500."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"PATH": "/usr/bin:/bin", "GRPC_PORT": "0", "STATE_DIR": str(tmp_path / "state"),
           variable: str(blocker / "sub")}
    out = subprocess.run([sys.executable, "-m", "service"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1 and f"{variable}=" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_state_dir_kept_from_a_run_with_grpc_keeps_no_grpc_readiness(tmp_path):
    from service.observability import grpc_readiness
    grpc_readiness.expect(tmp_path)
    grpc_readiness.mark(tmp_path, 1)
    grpc_readiness.not_expected(tmp_path)
    assert grpc_readiness.readiness(tmp_path, 0) == (True, None)
