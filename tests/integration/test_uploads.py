"""Many large uploads that stall cost the server bounded memory and its other clients nothing
(service/http_server/request_body.py); ``make stress`` runs the same scenario at 100 connections."""

from __future__ import annotations

import socket
import time

import requests

from bench.uploads import StalledUploads, stalled_uploads
from tests.integration.conftest import LocalServer
from tests.integration.test_slow_clients import host_port, read_response

MIB = 1024 * 1024


def test_stalled_large_uploads_leave_memory_bounded_and_others_answered(tmp_path):
    """40 clients each send 15 MB and stall: without the budget the workers grew by about 16 MB per
    connection (600 MB here); with it the growth is bounded by the budget, not the connections."""
    server = LocalServer(tmp_path, MAX_BODY_BYTES=str(16 * MIB)).start()  # budget: 2 x 16 MiB per worker
    try:
        row = stalled_uploads(server, connections=40, body_mb=15, burst_seconds=5, requests_meanwhile=100)
    finally:
        assert server.stop() == 0
    print(f"\n{row}")
    assert row["failed"] == 0 and row["answered"] >= 100
    assert row["rss_growth_peak_mb"] < 4 * 2 * 32, row  # 4 x the two workers' budgets, whatever the count


def test_a_large_body_that_finds_no_room_is_a_503_and_small_ones_pass(tmp_path):
    """With room for one large body per worker (BODY_BUFFER_BYTES = MAX_BODY_BYTES, one worker), a
    second large upload waits unread, then gets a 503 with Retry-After at REQUEST_TIMEOUT; small
    requests, and probes with no body, are answered all the while. The refused client, still sending
    its body, receives the 503: the server drains the body before it closes, where closing at once
    reset the connection under the client's send."""
    import threading
    server = LocalServer(tmp_path, WORKERS="1", MAX_BODY_BYTES=str(4 * MIB), BODY_BUFFER_BYTES=str(4 * MIB),
                         REQUEST_TIMEOUT="3").start()
    try:
        with StalledUploads(server.url, 1, 3 * MIB) as stalled:  # holds the budget until its own timeout
            deadline = time.monotonic() + 2
            while stalled.sent < 3 * MIB - 1 and time.monotonic() < deadline:  # the worker is reading it
                time.sleep(0.01)
            with socket.create_connection(host_port(server.url), timeout=15) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # the body outgrows the buffers
                sent: list[BaseException | None] = []

                def upload() -> None:  # blocks once the socket's buffers are full, until the server reads
                    try:
                        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 2000000\r\n\r\n" + b" " * 2_000_000)
                        sent.append(None)
                    except OSError as e:
                        sent.append(e)

                uploader = threading.Thread(target=upload, daemon=True)
                uploader.start()
                start = time.monotonic()
                for _ in range(20):  # small requests meanwhile
                    r = requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": [[0, 1]]}, timeout=5)
                    assert r.status_code == 200
                for path in ("/readyz", "/healthz", "/metrics"):  # no body: nothing to wait for behind uploads
                    probed = time.monotonic()
                    assert requests.get(f"{server.url}{path}", timeout=5).status_code == 200
                    assert time.monotonic() - probed < 1.5 / 2, path  # a wait for room: 1.5 s, then a 503
                uploader.join(10)
                assert sent == [None], sent  # the whole body went out, none of it reset
                status, body = read_response(sock)
                waited = time.monotonic() - start
        assert status == 503 and b"BODY_BUFFER_BYTES" in body, body
        assert waited < 10
        text = requests.get(f"{server.url}/metrics", timeout=5).text
        assert "nn_request_bodies_refused_total 1.0" in text
    finally:
        assert server.stop() == 0


def test_a_body_of_too_many_numbers_is_refused_before_it_is_parsed(tmp_path):
    """A 16 MiB body of two-number samples: parsed, it took a worker 410 MB before its batch was refused
    (two at once could take a 1 GiB pod down); counted first, it is a 413 for about the body's size."""
    import threading

    from bench.uploads import workers_rss_mb

    server = LocalServer(tmp_path, MAX_BODY_BYTES=str(16 * MIB)).start()
    try:
        body = b'{"model": "xor", "inputs": [' + b"[0,0]," * (16 * MIB // 6 - 10) + b"[0,0]]}"
        before = workers_rss_mb(server)
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(workers_rss_mb(server))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        r = requests.post(f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"},
                          timeout=60)
        done.set()
        sampler.join()
        print(f"\n16 MiB of numbers: {r.status_code}, workers +{max(peak) - before:.0f} MB at the peak")
        assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large", r.text[:300]
        assert max(peak) - before < 120
    finally:
        assert server.stop() == 0
