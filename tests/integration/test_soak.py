"""A fast slice of the soak (make stress runs it for 5 minutes): every endpoint in turn at a steady pace
under wrk for 15 seconds: no failed request, no descriptor but sockets added, memory steady."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.stress import soak, write_bodies


def test_a_short_soak(tmp_path, mnist_dir):
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is needed for the soak (Debian package wrk; .ci/run installs it)")
        pytest.skip("wrk is not installed")
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    write_bodies(bodies, mnist_dir)
    row = soak(tmp_path, bodies, seconds=15, max_growth=0.10)
    print(f"\n{row}")
    assert row["failures"] == 0 and row["cases"] > 500
    assert row["ok"], row
