"""Slow, silent and hostile connections cost the other clients nothing; kept-alive ones are reused.

The scenario of the serving benchmark, bounded and on loopback: 64 connections trickle a request
body a byte a second and 16 more stay open and silent, while a well-behaved client sends 200
sequential ``/predict`` requests. Against the gunicorn server and the container.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import requests

from bench.slow_clients import SlowClients
from tests.integration.conftest import LocalServer

XOR = b'{"model": "xor", "inputs": [[0, 1]]}'
MNIST_ONE = ('{"model": "mnist", "inputs": [[' + ",".join(["0.5"] * 784) + "]]}").encode()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split(":")
    return host, int(port)


def raw_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest[:length]


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_slow_and_silent_connections_do_not_stall_others(base_url):
    host, port = host_port(base_url)
    latencies = []
    with SlowClients(host, port, "/predict", MNIST_ONE, trickle=64, silent=16), requests.Session() as session:
        for _ in range(200):
            start = time.perf_counter()
            r = session.post(f"{base_url}/predict", data=MNIST_ONE, headers={"Content-Type": "application/json"},
                             timeout=5)
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 200
        healthz = session.get(f"{base_url}/healthz", timeout=5)
    p99 = float(np.percentile(latencies, 99)) * 1000
    print(f"\n200 requests beside 80 slow connections: p50 {np.median(latencies) * 1000:.2f} ms, p99 {p99:.2f} ms")
    assert healthz.status_code == 200
    # A request stuck behind a trickling body would wait at least that body's next byte, a second:
    # the bound is half of it, far from a busy machine's slowest answer (tens of ms), and far below it.
    assert p99 < 500


def test_keep_alive_serves_many_requests_on_one_connection(base_url):
    with socket.create_connection(host_port(base_url), timeout=10) as sock:
        for _ in range(5):
            sock.sendall(raw_request("/predict", XOR))
            status, body = read_response(sock)
            assert status == 200 and b'"label":"1"' in body


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory):
    server = LocalServer(tmp_path_factory.mktemp("impatient"), KEEPALIVE="1", REQUEST_TIMEOUT="2").start()
    yield server
    assert server.stop() == 0


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_closed(impatient_server):
    with socket.create_connection(host_port(impatient_server.url), timeout=10) as sock:
        request = raw_request("/predict", XOR)
        sock.sendall(request[:-5])  # the head and most of the body, then nothing
        start = time.monotonic()
        status, body = read_response(sock)
        waited = time.monotonic() - start
        assert status == 408 and b'"code":"request_timeout"' in body and b"REQUEST_TIMEOUT=2" in body
        assert 1.5 < waited < 6
        assert sock.recv(1) == b""  # and the connection is closed
    metrics = requests.get(f"{impatient_server.url}/metrics", timeout=5).text
    assert "nn_request_timeouts_total 1.0" in metrics
    # counted and logged as every request is (the worker's own answers had neither)
    assert 'nn_requests_total{endpoint="(http server)",model="",status="408"} 1.0' in metrics
    lines = [json.loads(line) for line in impatient_server.read_log().splitlines() if '"status": 408' in line
             or '"status":408' in line]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [("POST", "/predict", 408)]
    assert 1.5 < lines[0]["latency_ms"] / 1000 < 6


@pytest.mark.parametrize("declared", [len(XOR), 8 * 1024 * 1024], ids=["small body", "MAX_BODY_BYTES"])
def test_clients_stalled_mid_body_cannot_fill_the_worker(tmp_path, declared):
    """Connections that sent a request head and then none of its body held their place for
    REQUEST_TIMEOUT (and a 2 s drain after their 408), and only connections waiting for a head were
    let go past 90 % of WORKER_CONNECTIONS: 12 of them on a worker of 10 kept /healthz waiting 7.5 s.
    Now they count among the waits, also while waiting for room in the body budget (heads declaring
    MAX_BODY_BYTES: two fit the budget, the others wait for room): past the bound the longest stalled
    is answered 408 and closed."""
    server = LocalServer(tmp_path, WORKERS="1", WORKER_CONNECTIONS="10", REQUEST_TIMEOUT="6").start()
    try:
        host, port = host_port(server.url)
        stalled = []
        for _ in range(12):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {declared}\r\n\r\n".encode())  # the head, then nothing of the body
            stalled.append(sock)
            time.sleep(0.02)  # accepted in turn: the first is the longest waiting
        start = time.monotonic()
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - start < 1.5
        status, body = read_response(stalled[0])  # the longest stalled was let go
        assert status == 408 and b"the server needed the connection" in body, body
        assert stalled[0].recv(1) == b""
        for sock in stalled:
            sock.close()
    finally:
        assert server.stop() == 0


def test_silent_and_idle_connections_are_closed_after_keepalive(impatient_server):
    host, port = host_port(impatient_server.url)
    with socket.create_connection((host, port), timeout=10) as silent, \
            socket.create_connection((host, port), timeout=10) as idle:
        idle.sendall(raw_request("/predict", XOR))
        assert read_response(idle)[0] == 200
        start = time.monotonic()
        assert silent.recv(1) == b"" and idle.recv(1) == b""
        assert time.monotonic() - start < 5


def test_a_client_that_hangs_up_mid_body_reaches_no_view(impatient_server):
    with socket.create_connection(host_port(impatient_server.url), timeout=10) as sock:
        sock.sendall(raw_request("/predict", XOR)[:-10])
    time.sleep(0.5)
    assert '"status":400' not in impatient_server.read_log()  # the half body was never parsed
    assert requests.get(f"{impatient_server.url}/healthz", timeout=5).status_code == 200


def test_keep_alive_outlasts_a_shorter_request_timeout_and_a_slow_reader_is_no_error(tmp_path):
    """KEEPALIVE=3 with REQUEST_TIMEOUT=1: a connection idle for 2 s between requests stays open (the socket's
    own timeout once cut it at REQUEST_TIMEOUT). A client that pipelines requests and never reads its
    answers is let go after the socket timeout, logged as one line, not an error with a traceback."""
    server = LocalServer(tmp_path, WORKERS="1", KEEPALIVE="3", REQUEST_TIMEOUT="1").start()
    try:
        with socket.create_connection(host_port(server.url), timeout=10) as sock:
            sock.sendall(raw_request("/predict", XOR))
            assert read_response(sock)[0] == 200
            time.sleep(2)
            sock.sendall(raw_request("/predict", XOR))
            assert read_response(sock)[0] == 200
        big = (b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n") * 400  # answers far beyond the socket buffers
        with socket.create_connection(host_port(server.url), timeout=10) as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.sendall(big)
            deadline = time.monotonic() + 15
            while "too slow" not in server.read_log() and time.monotonic() < deadline:
                time.sleep(0.2)
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
    log = server.read_log()
    assert "too slow" in log and "Traceback" not in log and "Socket error processing request" in log
