"""The supervisor of ``python -m service`` (``service/supervisor.py``), for real: a gRPC process that
keeps dying is restarted with growing delays (each restart a log line), HTTP serves all along, the
gRPC side serves once the cause is gone, and a stop during a restart's delay stops at once. The
restart delays themselves (:class:`service.supervisor.Backoff`) are checked by hand.

The real failure: the gRPC port is held by a socket without ``SO_REUSEPORT``, so each gRPC process
fails to bind it and exits 1, until the test closes that socket."""

from __future__ import annotations

import re
import socket
import time

import pytest
import requests

from service.supervisor import Backoff
from tests.integration.conftest import LocalServer, free_port

RESTART = re.compile(r"gRPC process \d+ exited with 1 after [0-9.]+ s \((\d+) in a row\); restarting it in "
                     r"([0-9.]+) s")


def test_backoff_doubles_to_its_cap_and_forgets_after_a_healthy_run():
    b = Backoff(first=1.0, cap=30.0, stable=60.0)
    assert b.delay(0.25) == 0.75  # the first: at most one start a second
    assert [b.delay(0.5) for _ in range(6)] == [2, 4, 8, 16, 30, 30]
    assert b.deaths == 7
    assert b.delay(61.0) == 0.0 and b.deaths == 1  # it had run a minute: healthy, so restarted at once
    assert b.delay(0.1) == 2


def restarts(log: str) -> list[tuple[int, float]]:
    return [(int(n), float(d)) for n, d in RESTART.findall(log)]


def test_a_failing_grpc_process_backs_off_and_recovers(tmp_path):
    grpc = pytest.importorskip("tritonclient.grpc")
    port = free_port()
    holder = socket.socket()  # no SO_REUSEPORT: the gRPC processes cannot bind beside it
    holder.bind(("127.0.0.1", port))
    holder.listen()
    srv = LocalServer(tmp_path, WORKERS="1", GRPC_PORT=str(port)).start()
    try:
        deadline = time.monotonic() + 120
        while len(restarts(srv.read_log())) < 3:
            assert srv.proc.poll() is None, srv.read_log()[-3000:]
            assert time.monotonic() < deadline, srv.read_log()[-3000:]
            assert requests.get(f"{srv.url}/readyz", timeout=10).status_code == 200  # HTTP serves meanwhile
            time.sleep(0.5)
        seen = restarts(srv.read_log())
        assert [n for n, _ in seen[:3]] == [1, 2, 3]
        assert seen[0][1] <= 1 and seen[1][1] == 2 and seen[2][1] == 4
        assert "cannot listen on 127.0.0.1:" in srv.read_log() and "Traceback" not in srv.read_log()
        holder.close()  # the cause is gone: the next restart serves
        with grpc.InferenceServerClient(f"127.0.0.1:{port}") as client:
            while True:
                try:
                    if client.is_server_ready():
                        break
                except Exception:  # not up yet: refused or unavailable
                    pass
                assert time.monotonic() < deadline + 60, srv.read_log()[-3000:]
                time.sleep(0.5)
    finally:
        holder.close()
        code = srv.stop(60)
    assert code == 0, srv.read_log()[-3000:]


def test_a_stop_during_a_restart_delay_stops_at_once(tmp_path):
    """SIGTERM while a restart waits: no restart follows, and the server exits (0) without waiting
    the delay out (a restart after the stop would have left a child no one stops, and the wait hung)."""
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    srv = LocalServer(tmp_path, WORKERS="1", GRPC_PORT=str(port)).start()
    try:
        deadline = time.monotonic() + 120
        while len(restarts(srv.read_log())) < 4:  # the next delay is 8 s
            assert time.monotonic() < deadline, srv.read_log()[-3000:]
            time.sleep(0.2)
        assert restarts(srv.read_log())[3] == (4, 8.0)
        failures = srv.read_log().count("cannot listen on")
        code = srv.stop(60)
    finally:
        holder.close()
    assert code == 0, srv.read_log()[-3000:]
    assert srv.read_log().count("cannot listen on") == failures  # no gRPC process started after the stop
    assert "Traceback" not in srv.read_log()
