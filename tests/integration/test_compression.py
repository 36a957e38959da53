"""Compressed bodies against the gunicorn server and the container: tritonclient's
``request_compression_algorithm`` and ``response_compression_algorithm`` (gzip, deflate; JSON and
binary tensors), gzip and deflate bodies on every protocol, and the refusals: a body that would
inflate past MAX_BODY_BYTES (a zip bomb) is a cheap 413, an unknown coding a 415 naming it, a body
that is not what its coding says a 400."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import requests

from tests.integration.conftest import SERVER_ENV

http = pytest.importorskip("tritonclient.http")

LIMIT = int(SERVER_ENV["MAX_BODY_BYTES"])
XOR = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
CODERS = {"gzip": gzip.compress, "deflate": zlib.compress, "raw-deflate": lambda b: zlib.compress(b)[2:-4]}


@pytest.fixture(scope="module")
def client(base_url):
    with http.InferenceServerClient(base_url.split("//")[1]) as c:
        yield c


def predict(base_url, name, x):
    r = requests.post(f"{base_url}/predict", json={"model": name, "inputs": x.tolist()}, timeout=30)
    return np.array([p["probabilities"] for p in r.json()["predictions"]], np.float32)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("request_coding,response_coding", [("gzip", "gzip"), ("deflate", "deflate"),
                                                            ("gzip", None), (None, "deflate")])
def test_tritonclient_compressed_calls(base_url, client, mnist_data, binary, request_coding, response_coding):
    x = mnist_data.eval_sets["test"][0][:8].reshape(8, 28, 28).astype(np.float32)
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [http.InferRequestedOutput("probabilities", binary_data=binary),
               http.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer("mnist", [tensor], outputs=outputs, request_compression_algorithm=request_coding,
                          response_compression_algorithm=response_coding)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), predict(base_url, "mnist", x))


def test_the_response_is_compressed_as_asked(base_url):
    body = json.dumps({"inputs": [{"name": "input", "shape": [4, 2], "datatype": "FP32", "data": XOR.tolist()}]})
    for coding, decompress in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        r = requests.post(f"{base_url}/v2/models/xor/infer", data=body, headers={"Accept-Encoding": coding},
                          timeout=10, stream=True)
        raw = r.raw.read()  # as sent, before requests would decode it
        assert r.headers["Content-Encoding"] == coding and "Accept-Encoding" in r.headers["Vary"]
        assert json.loads(decompress(raw))["model_name"] == "xor"
    plain = requests.post(f"{base_url}/v2/models/xor/infer", data=body, headers={"Accept-Encoding": "identity"},
                          timeout=10)
    assert "Content-Encoding" not in plain.headers and plain.json()["model_name"] == "xor"
    refused = requests.post(f"{base_url}/v2/models/xor/infer", data=body,
                            headers={"Accept-Encoding": "gzip;q=0, deflate;q=0"}, timeout=10)
    assert "Content-Encoding" not in refused.headers


@pytest.mark.parametrize("coding", sorted(CODERS))
@pytest.mark.parametrize("path,body", [
    ("/predict", {"model": "xor", "inputs": XOR.tolist()}),
    ("/v1/models/xor:predict", {"instances": XOR.tolist()}),
    ("/v2/models/xor/infer", {"inputs": [{"name": "input", "shape": [4, 2], "datatype": "FP32",
                                          "data": XOR.tolist()}]}),
])
def test_every_protocol_takes_compressed_bodies(base_url, path, body, coding):
    encoding = "deflate" if coding == "raw-deflate" else coding
    r = requests.post(f"{base_url}{path}", data=CODERS[coding](json.dumps(body).encode()), timeout=10,
                      headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    answer = r.json()
    got = answer.get("predictions") or answer.get("outputs")
    if path == "/predict":
        got = [p["probabilities"] for p in got]
    elif path.startswith("/v2"):
        got = np.reshape(got[0]["data"], (4, 2))
    np.testing.assert_array_equal(np.array(got, np.float32), predict(base_url, "xor", XOR))


def lying_trailer(body: bytes) -> bytes:
    """gzip whose trailer understates the inflated size: only the streaming limit can stop it."""
    return body[:-4] + (10).to_bytes(4, "little")


@pytest.mark.parametrize("coding,compress", [
    ("gzip", gzip.compress), ("gzip", lambda b: lying_trailer(gzip.compress(b))), ("deflate", zlib.compress),
], ids=["gzip", "gzip-lying-size", "deflate"])
def test_a_zip_bomb_is_a_cheap_413(base_url, coding, compress):
    inflated = 2 * LIMIT + 4096  # past the limit however the body is counted
    bomb = compress(b"[" + b" " * inflated + b"]")
    assert len(bomb) < LIMIT // 100  # small on the wire
    for path in ("/v2/models/xor/infer", "/predict", "/v1/models/xor:predict"):
        r = requests.post(f"{base_url}{path}", data=bomb, timeout=30,
                          headers={"Content-Encoding": coding, "Content-Type": "application/json"})
        assert r.status_code == 413 and f"inflates past MAX_BODY_BYTES={LIMIT}" in r.text, r.text
    # the server goes on answering at once
    assert requests.get(f"{base_url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("path,shape", [("/v2/models/xor/infer", "error"), ("/predict", "code")])
def test_refusals_say_why(base_url, path, shape):
    body = json.dumps({"model": "xor", "inputs": XOR.tolist()}).encode()
    cases = [({"Content-Encoding": "br"}, body, 415, "Content-Encoding 'br' is not supported; send gzip, deflate"),
             ({"Content-Encoding": "gzip"}, body, 400, "not valid gzip data"),  # plain, labelled gzip
             ({"Content-Encoding": "gzip"}, gzip.compress(body)[:-6], 400, "truncated"),
             ({"Content-Encoding": "deflate"}, b"\x00\x01garbage", 400, "not valid deflate data")]
    for headers, data, status, words in cases:
        r = requests.post(f"{base_url}{path}", data=data, timeout=10,
                          headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == status and words in r.text, (headers, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) if shape == "error" else error["code"] in ("bad_request",
                                                                               "unsupported_media_type")
