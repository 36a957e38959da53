"""256 MNIST images a request through the real server, in every form: JSON numbers parsed straight into
float64 (``/predict``, V1, V2 data flat and nested) and V2 binary tensors received into one buffer (the
tensor a view of it, whatever its JSON header's length) answer exactly as ``/predict`` does on the same
float32 images, and a request pipelined right behind a large body on the same connection is answered too."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest


@pytest.fixture(scope="module")
def images(mnist_data) -> np.ndarray:
    return np.ascontiguousarray(mnist_data.eval_sets["test"][0][:256].reshape(256, 784), dtype=np.float32)


def rows(x: np.ndarray) -> list:
    return [[float(v) for v in row] for row in x]  # float32 values as decimals that parse back to them


@pytest.fixture(scope="module")
def expected(base_url, http, images) -> np.ndarray:
    r = http.post(f"{base_url}/predict", json={"model": "mnist", "inputs": rows(images)}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return np.array([p["probabilities"] for p in r.json()["predictions"]], dtype=np.float32)


def test_v1_json_equals_predict(base_url, http, images, expected):
    for key, answer in (("instances", "predictions"), ("inputs", "outputs")):
        r = http.post(f"{base_url}/v1/models/mnist:predict", json={key: rows(images)}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        np.testing.assert_array_equal(np.array(r.json()[answer], dtype=np.float32), expected)


@pytest.mark.parametrize("flat", [True, False])
def test_v2_json_equals_predict(base_url, http, images, expected, flat):
    data = [float(v) for v in images.ravel()] if flat else rows(images)
    body = {"inputs": [{"name": "input", "shape": [256, 784], "datatype": "FP32", "data": data}]}
    r = http.post(f"{base_url}/v2/models/mnist/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text[:300]
    np.testing.assert_array_equal(np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(256, 10),
                                  expected)


@pytest.mark.parametrize("padding", [0, 1, 3, 61])  # the tensor at every alignment in the body
def test_v2_binary_equals_predict(base_url, http, images, expected, padding):
    head = json.dumps({"inputs": [{"name": "input", "shape": [256, 784], "datatype": "FP32",
                                   "parameters": {"binary_data_size": images.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    head += b" " * padding
    r = http.post(f"{base_url}/v2/models/mnist/infer", data=head + images.tobytes(), timeout=60,
                  headers={"Inference-Header-Content-Length": str(len(head)),
                           "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text[:300]
    split = int(r.headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[split:], dtype="<f4").reshape(256, 10), expected)


def test_a_request_pipelined_behind_a_large_body_is_answered(base_url, images):
    if not base_url.startswith("http://127.0.0.1"):
        pytest.skip("a raw socket to the local server")
    host, port = base_url.removeprefix("http://").split(":")
    large = json.dumps({"model": "mnist", "inputs": rows(images[:64])}).encode()
    small = b'{"model": "xor", "inputs": [[0, 1]]}'
    requests = b"".join(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body) for body in (large, small))
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(requests)  # both at once: the second arrives in the same reads as the first's body
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 2 or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(1 << 16)
            assert chunk, received[-300:]
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2 and b'"model":"xor"' in received
