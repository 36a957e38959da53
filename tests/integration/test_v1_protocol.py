"""The TensorFlow Serving REST API (KServe V1), with requests shaped as in TF Serving's REST
documentation; answers equal to /predict's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.conftest import served_version

XOR = [[0, 0], [0, 1], [1, 0], [1, 1]]


def predict(base_url, name, inputs):
    r = requests.post(f"{base_url}/predict", json={"model": name, "inputs": inputs}, timeout=30)
    return np.array([p["probabilities"] for p in r.json()["predictions"]])


def post(base_url, path, body):
    # curl -d, as in TF Serving's examples: no JSON content type
    return requests.post(f"{base_url}{path}", data=json.dumps(body), timeout=30)


@pytest.mark.parametrize("path", ["/v1/models/xor:predict", "/v1/models/xor/versions/1:predict"])
def test_row_format(base_url, path):
    r = post(base_url, path, {"signature_name": "serving_default", "instances": XOR})
    assert r.status_code == 200 and set(r.json()) == {"predictions"}
    assert r.headers["X-Model-Version"] == "1"  # the body names no version; the header does
    np.testing.assert_allclose(r.json()["predictions"], predict(base_url, "xor", XOR), atol=1e-6)


def test_row_format_with_named_inputs(base_url, mnist_data):
    x = mnist_data.eval_sets["test"][0][:3].reshape(3, 28, 28).tolist()
    r = post(base_url, "/v1/models/mnist:predict", {"instances": [{"input": image} for image in x]})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], predict(base_url, "mnist", x), atol=1e-6)


@pytest.mark.parametrize("inputs", [XOR, {"input": XOR}])
def test_columnar_format(base_url, inputs):
    r = post(base_url, "/v1/models/xor:predict", {"inputs": inputs})
    assert r.status_code == 200 and set(r.json()) == {"outputs"}
    np.testing.assert_allclose(r.json()["outputs"], predict(base_url, "xor", XOR), atol=1e-6)


def test_version_status_and_metadata(base_url):
    # KServe's model-ready keys and TF Serving's version states, in one body
    served = served_version("mnist").name
    assert requests.get(f"{base_url}/v1/models/mnist", timeout=10).json() == {"name": "mnist", "ready": True,
                                                                              "model_version_status": [
        {"version": served, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    version = requests.get(f"{base_url}/v1/models/mnist/versions/{served}", timeout=10)
    assert version.status_code == 200 and version.json()["ready"] is True
    meta = requests.get(f"{base_url}/v1/models/digits/metadata", timeout=10).json()
    assert meta["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "5", "5"]
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "5"]


@pytest.mark.parametrize("accept,kind", [("*/*", "application/json"), ("text/html,*/*;q=0.8", "text/html")])
def test_the_root_is_kserve_server_live_for_api_clients_and_the_page_for_browsers(base_url, accept, kind):
    r = requests.get(f"{base_url}/", headers={"Accept": accept}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind) and "Accept" in r.headers["Vary"]
    if kind == "application/json":
        assert r.json() == {"status": "alive"}


@pytest.mark.parametrize("path,body,status,words", [
    ("/v1/models/resnet:predict", {"instances": XOR}, 404, "unknown model 'resnet'"),
    ("/v1/models/xor/versions/9:predict", {"instances": XOR}, 404, "no version 9"),
    ("/v1/models/xor:predict", {"instances": XOR, "signature_name": "other"}, 400, "unknown signature_name"),
    ("/v1/models/xor:predict", {"instances": XOR, "inputs": XOR}, 400, "exactly one of"),
    ("/v1/models/xor:predict", {"instances": [[0, "1"]]}, 400, "instances.0.1: Input should be a number"),
    ("/v1/models/xor:predict", {"instances": [[0, 1, 1]]}, 400, "has 3 values, expected 2"),
    ("/v1/models/xor:predict", {"instances": [{"x": [0, 1]}]}, 400, "one input named 'input'"),
    ("/v1/models/xor:predict", {"instances": []}, 400, "non-empty"),
])
def test_errors(base_url, path, body, status, words):
    r = post(base_url, path, body)
    assert r.status_code == status and set(r.json()) == {"error"} and words in r.json()["error"], r.text
    assert requests.get(f"{base_url}/v1/models/nope", timeout=10).status_code == 404
