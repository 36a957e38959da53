"""The lean supervisor and the default number of gRPC processes (``service/__main__.py``,
``service/supervisor.py``); the supervisor's behaviour under signals, restarts and readiness is
tested for real in ``tests/integration/test_supervisor.py`` and ``tests/integration/test_lifecycle.py``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
