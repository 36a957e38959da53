"""The supervisor of ``python -m service`` (``service/supervisor.py``), for real: a gRPC process that
keeps dying is restarted with growing delays (each restart a log line), HTTP serves all along, the
gRPC side serves once the cause is gone, and a stop during a restart's delay stops at once. The
restart delays themselves (:class:`service.supervisor.Backoff`) are checked by hand.

The real failure: the gRPC port is held by a socket without ``SO_REUSEPORT``, so each gRPC process
fails to bind it and exits 1, until the test closes that socket."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
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
    srv = LocalServer(tmp_path, WORKERS="1", GRPC_PORT=str(port)).start("/healthz")
    try:
        deadline = time.monotonic() + 120
        while len(restarts(srv.read_log())) < 3:
            assert srv.proc.poll() is None, srv.read_log()[-3000:]
            assert time.monotonic() < deadline, srv.read_log()[-3000:]
            # HTTP serves meanwhile, but the pod is not ready: its gRPC port serves no one
            assert requests.post(f"{srv.url}/predict", json={"model": "xor", "inputs": [[0, 1]]},
                                 timeout=10).status_code == 200
            ready = requests.get(f"{srv.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["grpc"] == f"no gRPC process is serving on " \
                f"GRPC_PORT={port}" and set(ready.json()["models"].values()) == {"ready"}, ready.text
            v2_ready = requests.get(f"{srv.url}/v2/health/ready", timeout=10)  # KServe's probe: the same answer
            assert (v2_ready.status_code, v2_ready.json()) == (400, {"ready": False})
            time.sleep(0.5)
        seen = restarts(srv.read_log())
        assert [n for n, _ in seen[:3]] == [1, 2, 3]
        assert all(json.loads(line)["logger"] == "service.supervisor"  # one JSON object per line, as the others
                   for line in srv.read_log().splitlines() if "restarting it in" in line)
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
        ready = requests.get(f"{srv.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["grpc"] == "serving (1 process)", ready.text
        assert requests.get(f"{srv.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    finally:
        holder.close()
        code = srv.stop(60)
    assert code == 0, srv.read_log()[-3000:]


def test_a_second_server_given_the_same_grpc_port_refuses_to_start(tmp_path):
    """The gRPC processes bind with SO_REUSEPORT, which the kernel grants to a second server of the same
    user: it would have served part of the first one's gRPC connections. It stops at its start, saying
    why, and the first serves on."""
    grpc = pytest.importorskip("tritonclient.grpc")
    first = LocalServer(tmp_path / "first", WORKERS="1").start()
    try:
        second = LocalServer(tmp_path / "second", WORKERS="1", GRPC_PORT=str(first.grpc_port))
        try:
            code = second.proc.wait(60)
        finally:
            second.stop()
        log = second.read_log()
        assert code == 1 and f"GRPC_PORT={first.grpc_port}: another server's gRPC processes listen on " in log, log
        assert "Traceback" not in log
        with grpc.InferenceServerClient(first.grpc_target) as client:
            assert client.is_server_ready()
    finally:
        assert first.stop() == 0, first.read_log()[-3000:]


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_a_stop_during_a_restart_delay_stops_at_once(tmp_path):
    """SIGTERM while a restart waits: no restart follows, and the server exits (0) without waiting
    the delay out (a restart after the stop would have left a child no one stops, and the wait hung)."""
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    srv = LocalServer(tmp_path, WORKERS="1", GRPC_PORT=str(port)).start("/healthz")
    try:
        deadline = time.monotonic() + 120
        while len(restarts(srv.read_log())) < 4:  # the next delay is 8 s
            assert time.monotonic() < deadline, srv.read_log()[-3000:]
            time.sleep(0.2)
        assert restarts(srv.read_log())[3] == (4, 8.0)
        failures = srv.read_log().count("cannot listen on")
        stopping = time.monotonic()
        code = srv.stop(60)
        took = time.monotonic() - stopping
    finally:
        holder.close()
    assert code == 0, srv.read_log()[-3000:]
    assert took < 5, took  # the 8 s delay is not waited out (gunicorn's own stop takes about a second)
    assert srv.read_log().count("cannot listen on") == failures  # no gRPC process started after the stop
    assert "Traceback" not in srv.read_log()


def grpc_pids(srv: LocalServer) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(srv.proc.pid), "-f", "service.grpc.server"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def test_readiness_counts_the_grpc_processes_that_serve(tmp_path):
    """/readyz names how many gRPC processes serve; one killed outright (no chance to say so) is not
    counted from the moment it is gone, and counted again once its restart serves."""
    srv = LocalServer(tmp_path, WORKERS="1", GRPC_WORKERS="2").start()
    try:
        deadline = time.monotonic() + 60
        while requests.get(f"{srv.url}/readyz", timeout=10).json()["grpc"] != "serving (2 processes)":
            assert time.monotonic() < deadline, srv.read_log()[-3000:]
            time.sleep(0.1)
        victim = grpc_pids(srv)[0]
        os.kill(victim, signal.SIGKILL)
        seen = ["serving (2 processes)"]  # before the kill; then each change /readyz reports
        while seen[-1] != "serving (2 processes)" or len(seen) == 1:
            ready = requests.get(f"{srv.url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text  # one process still serves the port
            if seen[-1] != ready.json()["grpc"]:
                seen.append(ready.json()["grpc"])
            assert time.monotonic() < deadline + 60, (seen, srv.read_log()[-3000:])
            time.sleep(0.01)
        assert seen == ["serving (2 processes)", "serving (1 process)", "serving (2 processes)"], seen
        assert victim not in grpc_pids(srv)
    finally:
        code = srv.stop(60)
    assert code == 0, srv.read_log()[-3000:]


def test_a_killed_grpc_process_leaves_the_metrics(tmp_path, mnist_data):
    """Its live gauges (drift windows, requests in progress) stayed summed into /metrics after it was
    killed, beside its successor's, for the server's whole life."""
    grpc = pytest.importorskip("tritonclient.grpc")
    srv = LocalServer(tmp_path, WORKERS="1").start()
    drift = 'nn_input_drift_samples{model="mnist",version="2"}'
    try:
        x = np.asarray(mnist_data.eval_sets["test"][0][:10], np.float32)
        with grpc.InferenceServerClient(srv.grpc_target) as client:
            tensor = grpc.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            client.infer("mnist", [tensor])
        assert f"{drift} 10.0" in requests.get(f"{srv.url}/metrics", timeout=10).text
        [pid] = grpc_pids(srv)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (grpc_pids(srv) and grpc_pids(srv) != [pid]
                   and requests.get(f"{srv.url}/readyz", timeout=10).status_code == 200):
            assert time.monotonic() < deadline, srv.read_log()[-3000:]
            time.sleep(0.2)
        assert drift not in requests.get(f"{srv.url}/metrics", timeout=10).text  # HTTP never served mnist
    finally:
        assert srv.stop() == 0
