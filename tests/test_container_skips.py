"""Without a container engine the container tests skip, as docs/contributing.md says; with REQUIRE_CONTAINER=1
they fail instead. Run as a separate pytest, with an engine that does not exist."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("required", [False, True])
def test_container_tests_skip_without_an_engine_unless_required(required, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REQUIRE_CONTAINER", "CONTAINER_IMAGE", "SERVICE_URL")}
    env["CONTAINER_ENGINE"] = str(tmp_path / "no-such-engine")
    if required:
        env["REQUIRE_CONTAINER"] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                             "tests/container/test_container.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    if required:
        assert result.returncode == 1 and " passed" not in summary and "skipped" not in summary, summary
        assert "container tests were required" in result.stdout
    else:
        assert result.returncode == 0, result.stdout[-2000:]
        assert "skipped" in summary and "failed" not in summary and "error" not in summary, summary
        assert "no container engine" in result.stdout
