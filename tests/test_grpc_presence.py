"""Whether gRPC serves, as HTTP's readiness asks it (``service/observability/grpc_readiness.py``): a file per serving
process, counted only while that process lives, and nothing to ask when gRPC is not expected."""

from __future__ import annotations

import os
import subprocess
import sys

from service.observability import grpc_readiness


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_not_expected_without_its_directory(tmp_path):
    assert grpc_readiness.serving(None) is None and grpc_readiness.serving(tmp_path) is None
    grpc_readiness.mark(tmp_path)  # gRPC not expected here: marks nothing
    assert grpc_readiness.serving(tmp_path) is None and not grpc_readiness.directory(tmp_path).exists()


def test_counts_live_processes_and_forgets_dead_ones(tmp_path):
    grpc_readiness.expect(tmp_path)
    assert grpc_readiness.serving(tmp_path) == 0
    grpc_readiness.mark(tmp_path)
    gone = dead_pid()
    grpc_readiness.mark(tmp_path, gone)  # killed outright: its file stays behind
    (grpc_readiness.directory(tmp_path) / "notes.txt").write_text("not a pid")
    assert grpc_readiness.serving(tmp_path) == 1
    assert sorted(p.name for p in grpc_readiness.directory(tmp_path).iterdir()) == [str(os.getpid())]
    grpc_readiness.unmark(tmp_path)
    assert grpc_readiness.serving(tmp_path) == 0
    grpc_readiness.unmark(tmp_path)  # twice: no error


def test_expect_empties_a_kept_state_dir(tmp_path):
    grpc_readiness.expect(tmp_path)
    grpc_readiness.mark(tmp_path)
    grpc_readiness.expect(tmp_path)  # the next run of a server with the same STATE_DIR
    assert grpc_readiness.serving(tmp_path) == 0


def test_readiness_words_the_count(tmp_path):
    assert grpc_readiness.readiness(tmp_path, 8001) == (True, None)  # gRPC off: nothing to say
    grpc_readiness.expect(tmp_path)
    assert grpc_readiness.readiness(tmp_path, 8001) == (False, "no gRPC process is serving on GRPC_PORT=8001")
    grpc_readiness.mark(tmp_path)
    assert grpc_readiness.readiness(tmp_path, 8001) == (True, "serving (1 process)")
    grpc_readiness.mark(tmp_path, os.getppid())  # another live process
    assert grpc_readiness.readiness(tmp_path, 8001) == (True, "serving (2 processes)")
