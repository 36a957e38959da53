"""Hostile bodies and headers, against the gunicorn server and the container: each gets a 4xx (or
the connection is closed) and the server stays healthy. Raw sockets, so nothing is tidied up."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.integration.conftest import SERVER_ENV
from tests.integration.test_slow_clients import host_port, raw_request, read_response

MAX_BATCH = int(SERVER_ENV["MAX_BATCH"])


def send(base_url: str, data: bytes, timeout: float = 15) -> int | None:
    """Send raw bytes; the status of the first response, or None if the server closed the connection."""
    with socket.create_connection(host_port(base_url), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            return read_response(sock)[0]
        except ConnectionError:
            return None


@pytest.fixture(autouse=True)
def still_healthy(base_url):
    yield
    assert requests.get(f"{base_url}/healthz", timeout=10).status_code == 200


def post(base_url: str, body: bytes, headers: str = "Content-Type: application/json\r\n") -> int | None:
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return send(base_url, head.encode() + body)


@pytest.mark.parametrize("name,body,statuses", [
    ("a million numbers in one sample", json.dumps({"model": "xor", "inputs": [[0.5] * 1_000_000]}), {422}),
    ("a million numbers over MAX_BATCH", json.dumps({"model": "digits", "inputs": [[0.0] * 25] * 40_000}), {413}),
    ("huge exponent", '{"model": "xor", "inputs": [[0, 1e308]]}', {422}),
    ("overflowing exponent", '{"model": "xor", "inputs": [[0, -1e400]]}', {422}),
    ("duplicate keys", '{"model": "nope", "model": "xor", "inputs": [[0, 1]]}', {200, 422}),
    ("invalid UTF-8", b'{"model": "x\xff\xfe", "inputs": [[0, 1]]}', {400}),
    ("not JSON at all", b"\x00\x01\x02 binary", {400}),
    ("a JSON string", '"model"', {422}),
])
def test_hostile_bodies_get_a_4xx(base_url, name, body, statuses):
    data = body if isinstance(body, bytes) else body.encode()
    assert post(base_url, data) in statuses, name


def test_a_body_under_the_limits_with_nearly_a_million_numbers_is_answered(base_url, mnist_data):
    x = mnist_data.eval_sets["test"][0][:MAX_BATCH].tolist()  # 1024 x 784 = 802,816 numbers, ~4 MB
    r = requests.post(f"{base_url}/predict", json={"model": "mnist", "inputs": x}, timeout=120)
    assert r.status_code == 200 and len(r.json()["predictions"]) == MAX_BATCH


def test_a_100_mb_body_is_refused_by_its_length_without_being_read(base_url):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    assert send(base_url, head + b'{"model": "xor"', timeout=10) == 413


def test_a_body_longer_than_its_content_length(base_url):
    body = b'{"model": "xor", "inputs": [[0, 1]]}'
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    assert send(base_url, head + body + b"garbage that is no request") in {400, None}


def test_a_chunked_body_is_read(base_url):
    body = b'{"model": "xor", "inputs": [[0, 1]]}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert send(base_url, head + chunks) == 200


def predict_requests(base_url: str) -> float:
    """/predict requests the server has answered, summed over workers, statuses and models."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('nn_requests_total{endpoint="/predict"'))


def test_a_client_that_hangs_up_early_costs_nothing(base_url):
    """A body cut short by a client that hung up never reaches the app: nobody is there to answer, so
    no request is run, logged or counted; the next client is answered as usual."""
    before = predict_requests(base_url)
    for _ in range(3):
        with socket.create_connection(host_port(base_url), timeout=10) as sock:
            sock.sendall(raw_request("/predict", b'{"model": "xor", "inputs": [[0, 1]]}')[:-8])
    time.sleep(2.0)  # the hang-ups have reached the workers
    assert predict_requests(base_url) == before
    r = requests.post(f"{base_url}/predict", json={"model": "xor", "inputs": [[0, 1]]}, timeout=10)
    assert r.status_code == 200 and predict_requests(base_url) == before + 1


@pytest.mark.parametrize("header", ["X-Big: " + "a" * 9000, "X-Many: 1\r\n" * 120])
def test_headers_over_the_limits_are_refused(base_url, header):
    status = send(base_url, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{header.rstrip()}\r\n\r\n".encode())
    assert status is None or 400 <= status < 500
