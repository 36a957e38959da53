"""The V2 tensor codec's edges, judged by tritonclient: every input datatype it accepts, in JSON and in
the binary extension, gives /predict's answer exactly (same values, same batch: equal by construction),
and the binary header's length is checked at its boundaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from service.dataplane.dataplane import INPUT_DATATYPES

http = pytest.importorskip("tritonclient.http")

XOR = [[0, 1], [1, 0], [1, 1], [0, 0]]
FRACTIONS = [[0.25, 0.5], [1.0, 0.125]]  # exact in every float type


@pytest.fixture(scope="module")
def client(base_url):
    with http.InferenceServerClient(base_url.split("//")[1]) as c:
        yield c


def predict(base_url, inputs) -> np.ndarray:
    r = requests.post(f"{base_url}/predict", json={"model": "xor", "inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    return np.array([p["probabilities"] for p in r.json()["predictions"]], dtype=np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", sorted(INPUT_DATATYPES))
def test_every_input_datatype_in_json_and_binary(client, base_url, datatype, binary):
    values = FRACTIONS if datatype.startswith("FP") else XOR
    x = np.array(values, dtype=INPUT_DATATYPES[datatype].replace("<", "="))
    tensor = http.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("xor", [tensor], outputs=[http.InferRequestedOutput("probabilities", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), predict(base_url, values))


def post_with_header(base_url, body: bytes, header_length: int | str) -> requests.Response:
    return requests.post(f"{base_url}/v2/models/xor/infer", data=body, timeout=10,
                         headers={"Inference-Header-Content-Length": str(header_length)})


def test_the_binary_header_may_be_the_whole_body(base_url):
    """A header length equal to the body's is a JSON-only request; past it, or 0, or not a number: 400."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}).encode()
    whole = post_with_header(base_url, body, len(body))
    assert whole.status_code == 200, whole.text
    np.testing.assert_array_equal(np.array(whole.json()["outputs"][0]["data"], np.float32),
                                  predict(base_url, [[0, 1]])[0])
    for bad in (len(body) + 1, 0, -1, "ten"):
        r = post_with_header(base_url, body, bad)
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"], (bad, r.text)
