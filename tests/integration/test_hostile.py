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
    ("a million numbers in one sample", json.dumps({"model": "xor", "inputs": [[0.5] * 1_000_000]}), {413}),
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


V2_OK = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}
HUGE = "1" + "0" * 400  # an integer past any float
DEEP = '{"a":' * 1020 + "1" + "}" * 1020  # parameters nested 1020 deep: valid JSON, within the parser's limit


@pytest.mark.parametrize("path,body,headers,words", [
    ("/predict", f'{{"model": "xor", "inputs": [[0, {HUGE}]]}}', {}, "beyond the range of a float"),
    ("/gradcheck", f'{{"model": "xor", "inputs": [[0, {HUGE}]], "labels": ["1"]}}', {}, "beyond the range"),
    ("/v1/models/xor:predict", f'{{"instances": [[0, {HUGE}]]}}', {}, "beyond the range of a float"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [{**V2_OK, "data": [0, int(HUGE)]}]}), {}, "beyond the range"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [{**V2_OK, "shape": [], "data": [0.5]}]}), {}, "not a single"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [V2_OK]}), {"Inference-Header-Content-Length": "²"},
     "Inference-Header-Content-Length"),
    ("/v2/models/xor/infer", f'{{"parameters": {DEEP}, "inputs": [{json.dumps(V2_OK)}]}}', {}, None),
    ("/v2/models/xor/infer", json.dumps({"parameters": {"binary_data_output": "no"}, "inputs": [V2_OK]}), {},
     "must be true or false"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [V2_OK], "outputs": [{"name": "label", "parameters":
                                                                           {"binary_data": 1}}]}), {},
     "must be true or false"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [{**V2_OK, "shape": [True, 2]}]}), {}, "shape"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [{**V2_OK, "shape": [1] * 70 + [2]}]}), {}, "32 dimensions"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [{**V2_OK, "shape": [2**63 - 1, 0], "data": []}]}), {},
     "32 dimensions"),
    ("/gradcheck", json.dumps({"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "epsilon": 1e-300}), {},
     "epsilon"),
    ("/gradcheck", json.dumps({"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "tolerance": 1e-320}), {},
     "tolerance"),
    ("/gradcheck", json.dumps({"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "samples": True}), {},
     "samples"),
    ("/predict", json.dumps({"model": "xor", "version": True, "inputs": [[0, 1]]}), {}, "version"),
    # true is not 1, nor "5" five: each was read as such
    ("/gradcheck", json.dumps({"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "tolerance": True}), {},
     "tolerance"),
    ("/explain", json.dumps({"model": "xor", "version": True, "inputs": [[0, 1]]}), {}, "version"),
    ("/explain", json.dumps({"model": "xor", "inputs": [[0, 1]], "steps": True}), {}, "steps"),
    ("/explain", json.dumps({"model": "xor", "inputs": [[0, 1]], "method": "smoothgrad", "noise": "0.1"}), {},
     "noise"),
    ("/v1/models/xor:explain", json.dumps({"instances": [[0, 1]], "parameters": {"steps": "5"}}), {}, "steps"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [V2_OK], "parameters": {"steps": True},
                                         "outputs": [{"name": "attributions"}]}), {}, "steps"),
    ("/v2/models/xor/infer", json.dumps({"inputs": [V2_OK], "parameters": {"timeout": -1},
                                         "outputs": [{"name": "attributions"}]}), {}, "timeout"),
    ("/predict", json.dumps({"model": "..", "inputs": [[0, 1]]}), {}, "should match pattern"),
])
def test_client_mistakes_are_4xx_in_the_protocol_s_shape(base_url, path, body, headers, words):
    """Each was a 500 (or, for the deep parameters, nested JSON is fine: a 200), or read a wrong value."""
    r = requests.post(f"{base_url}{path}", data=body, timeout=30,
                      headers={"Content-Type": "application/json", **headers})
    if words is None:
        assert r.status_code == 200, r.text[:300]
        return
    assert 400 <= r.status_code < 500 and "Traceback" not in r.text, (r.status_code, r.text[:300])
    error = r.json()["error"]
    message = error if path.startswith(("/v1/", "/v2/")) else error["message"]  # each protocol's own shape
    assert words in message, message


INJECTION = '\ud800\n{"level":"info","message":"INJECTED"}\n'


def test_client_text_cannot_forge_a_log_line_or_break_a_body(gunicorn_server):
    """A lone surrogate and newlines in every place a client's text reaches a message or a log: the
    answer is a 4xx in the protocol's shape, and every log line stays one JSON object."""
    url = gunicorn_server.url
    bodies = [
        ("/v2/models/xor/infer", {"inputs": [V2_OK], "outputs": [{"name": INJECTION}]}),
        ("/v2/models/xor/infer", {"inputs": [{**V2_OK, "datatype": INJECTION}]}),
        ("/v2/models/xor/infer", {"inputs": [{**V2_OK, "name": INJECTION}]}),
        ("/predict", {"model": "xor", "inputs": [[0, 1]], INJECTION: 1}),
        ("/v1/models/xor:predict", {"instances": [[0, 1]], INJECTION: 1}),
    ]
    for path, body in bodies:
        data = json.dumps(body).encode()  # \ud800 as an escape: valid JSON, a lone surrogate once parsed
        r = requests.post(f"{url}{path}", data=data, headers={"Content-Type": "application/json",
                                                            "X-Request-ID": "forge-test"}, timeout=10)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
        assert "error" in r.json(), r.text[:300]
        if path.startswith("/v2/"):  # V2's messages quote the client's text, escaped
            assert "\\ud800\\n" in r.json()["error"], r.text[:300]
    time.sleep(0.5)
    lines = gunicorn_server.read_log().split("\n")[:-1]  # complete lines: the last may be being written
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)  # every line one JSON object
        except ValueError as exc:
            raise AssertionError(f"log line {i} is not one JSON object ({exc}):\n" + "\n".join(
                lines[max(0, i - 2):i + 3])[:3000]) from None
        assert entry.get("message") != "INJECTED", line


def metric_series(base_url: str) -> set[str]:
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_model_names_a_client_makes_up_become_no_metric_series(base_url):
    """Only a model on record is a label value; any other name counts under one fixed label, so a
    client naming a thousand models adds no series (nor a slower /metrics)."""
    def ask(name: str) -> None:
        body = {"model": name, "inputs": [[0, 1]]}
        requests.post(f"{base_url}/predict", json=body, timeout=10)
        requests.post(f"{base_url}/gradcheck", json={**body, "labels": ["1"]}, timeout=10)
        requests.post(f"{base_url}/v2/models/{name}/infer", json={"inputs": [V2_OK]}, timeout=10)
        requests.post(f"{base_url}/v1/models/{name}:predict", json={"instances": [[0, 1]]}, timeout=10)
        requests.get(f"{base_url}/models/{name}", timeout=10)
        requests.get(f"{base_url}/v2/models/{name}/ready", timeout=10)

    ask("made-up-0")
    before = metric_series(base_url)
    for i in range(1, 21):
        ask(f"made-up-{i}")
    after = metric_series(base_url)
    assert after == before, sorted(after - before)[:5]
    assert not any("made-up" in series for series in after)
    assert any('model="(unknown)"' in series for series in after)


MAX_BODY = int(SERVER_ENV["MAX_BODY_BYTES"])


def chunked_body(path: str, body: bytes) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536]) for i in range(0, len(body), 65536))
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "\r\n").encode() + chunks + b"0\r\n\r\n"


def padded(prefix: bytes, size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes: ``prefix`` (an object without its closing brace), spaces, }."""
    return prefix + b" " * (size - len(prefix) - 1) + b"}"


@pytest.mark.parametrize("path,prefix,shape", [
    ("/predict", b'{"model": "xor", "inputs": [[0, 1]]', "ours"),
    ("/v2/models/xor/infer", b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]',
     "v2"),
])
def test_a_chunked_body_over_max_body_bytes_is_413_like_any_other(base_url, path, prefix, shape):
    """Chunked or not, MAX_BODY_BYTES is the limit: at the limit a 200, one byte over a 413 in the
    protocol's own error shape (it was a 200, or a 400 for a larger one)."""
    with socket.create_connection(host_port(base_url), timeout=60) as sock:
        sock.sendall(chunked_body(path, padded(prefix, MAX_BODY)))
        assert read_response(sock)[0] == 200
    for size in (MAX_BODY + 1, 2 * MAX_BODY):
        with socket.create_connection(host_port(base_url), timeout=60) as sock:
            sock.sendall(chunked_body(path, padded(prefix, size)))
            status, body = read_response(sock)
        error = json.loads(body)["error"]
        assert status == 413, (size, status, body[:200])
        assert (error["code"] == "payload_too_large") if shape == "ours" else isinstance(error, str), error


@pytest.mark.parametrize("path,shape", [("/predict", "ours"), ("/v2/models/xor/infer", "v2"),
                                        ("/v1/models/xor:predict", "v1")])
def test_a_malformed_chunked_body_is_refused_in_the_paths_protocol(base_url, path, shape):
    """A bad chunk size is gunicorn's refusal, answered by the worker: a 400 in the error shape of the
    protocol the path names (it was always this service's own shape), and a status line as Flask words it."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(host_port(base_url), timeout=15) as sock:
        sock.sendall(head + b"zz\r\n{}\r\n0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        status, body = read_response_from(data, sock)
    assert status == 400 and data.startswith(b"HTTP/1.1 400 BAD REQUEST\r\n"), data[:40]
    error = json.loads(body)["error"]
    if shape == "ours":
        assert error["code"] == "bad_request" and "chunk" in error["message"].lower(), error
    else:
        assert isinstance(error, str) and "chunk" in error.lower(), error


def read_response_from(data: bytes, sock: socket.socket) -> tuple[int, bytes]:
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest[:length]


def test_expect_100_continue_is_answered_before_the_body_is_sent(base_url):
    """A client that waits for 100 Continue (curl does, for bodies over 1 MB) gets it at once; one whose
    Content-Length is over the limit gets the 413 instead, and never sends its body."""
    body = b'{"model": "xor", "inputs": [[0, 1]]}'
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(host_port(base_url), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # before any byte of the body
        sock.sendall(body)
        assert read_response(sock)[0] == 200
    too_long = head.replace(f"Content-Length: {len(body)}".encode(), f"Content-Length: {MAX_BODY + 1}".encode())
    with socket.create_connection(host_port(base_url), timeout=5) as sock:
        sock.sendall(too_long)
        assert read_response(sock)[0] == 413


@pytest.mark.parametrize("raw,status", [
    (b"NOT A REQUEST LINE\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    # gunicorn de-chunks this but would hand the app the gzip stream itself as the body
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501),
])
def test_the_http_layer_s_own_refusals_are_in_the_error_shape(base_url, raw, status):
    """What gunicorn refuses before the app runs is answered as the app would: JSON, with a request id."""
    with socket.create_connection(host_port(base_url), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head[:100]
    assert b"Content-Type: application/json" in head and b"X-Request-ID: " in head, head
    error = json.loads(body)["error"]
    assert error["code"] and error["message"], error
