"""The Open Inference Protocol (V2), judged by its reference client, tritonclient, against the
gunicorn server and the container: health, metadata, inference with JSON and binary tensors for
all three models (answers equal to /predict's to 1e-6), request ids, and the error cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.conftest import served_version
from tests.integration.conftest import predict

http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def client(base_url):
    with http.InferenceServerClient(base_url.split("//")[1]) as c:
        yield c


def test_health(client):
    assert client.is_server_live() and client.is_server_ready()
    for name in ("xor", "digits", "mnist"):
        assert client.is_model_ready(name) and client.is_model_ready(name, served_version(name).name)
    assert not client.is_model_ready("mnist", "7")


def test_health_bodies_are_kservers(base_url):
    """KServe's SDK reads the bodies; Triton's clients read the status codes."""
    assert requests.get(f"{base_url}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{base_url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{base_url}/v2/models/xor/ready", timeout=10).json() == {"name": "xor", "ready": True}
    assert requests.get(f"{base_url}/v2/models/xor/versions/1/ready", timeout=10).json() == {"name": "xor",
                                                                                           "ready": True}
    unknown = requests.get(f"{base_url}/v2/models/resnet/ready", timeout=10)
    assert unknown.status_code == 404 and "unknown model 'resnet'" in unknown.json()["error"]


XOR_INPUT = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}


@pytest.mark.parametrize("path,named", [
    ("/v2/models/xor/infer", {"model_name": "xor"}),
    ("/v2/models/xor/infer", {"model_name": "xor", "model_version": "1"}),
    ("/v2/models/xor/infer", {"model_version": "1"}),
    ("/v2/models/xor/versions/1/infer", {"model_name": "xor", "model_version": "1"}),
    ("/v2/models/xor/infer", {"model_name": None, "model_version": None}),
])
def test_a_body_may_name_the_model_the_url_names(base_url, path, named):
    r = requests.post(f"{base_url}{path}", data=json.dumps({**named, "inputs": [XOR_INPUT]}), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == "xor" and r.json()["model_version"] == "1"


@pytest.mark.parametrize("path,named,status,words", [
    ("/v2/models/xor/infer", {"model_name": "digits"}, 400, "model_name 'digits' contradicts the URL's model 'xor'"),
    ("/v2/models/xor/versions/1/infer", {"model_version": "2"}, 400, "contradicts the URL's version 1"),
    ("/v2/models/xor/infer", {"model_version": "latest"}, 400, "model_version must be a version number"),
    ("/v2/models/xor/infer", {"model_version": "9"}, 404, "no version 9"),
    ("/v2/models/xor/infer", {"model_name": "xor", "model": "xor"}, 400, "Extra inputs are not permitted"),
])
def test_a_body_contradicting_the_url_is_refused(base_url, path, named, status, words):
    r = requests.post(f"{base_url}{path}", data=json.dumps({**named, "inputs": [XOR_INPUT]}), timeout=10)
    assert r.status_code == status and set(r.json()) == {"error"} and words in r.json()["error"], r.text


def test_server_and_model_metadata(client):
    server = client.get_server_metadata()
    assert server["name"] == "numpy-nets" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("mnist")
    assert meta["name"] == "mnist" and meta["platform"] == "numpy"
    assert meta["versions"] == [served_version("mnist").name]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert client.get_model_metadata("xor", "1")["inputs"][0]["shape"] == [-1, 2]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("name", ["xor", "digits", "mnist"])
def test_infer_equals_predict(base_url, client, samples, name, binary_in, binary_out):
    x = samples[name]
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [http.InferRequestedOutput("probabilities", binary_data=binary_out),
               http.InferRequestedOutput("label", binary_data=binary_out)]
    served = served_version(name).name
    result = client.infer(name, [tensor], outputs=outputs, request_id=f"req-{name}", model_version=served)
    expected, labels = predict(base_url, name, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=1e-6)
    got_labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert got_labels == labels
    response = result.get_response()
    assert response["id"] == f"req-{name}" and response["model_name"] == name and response["model_version"] == served


def test_default_output_is_the_probabilities(base_url, client, samples):
    x = samples["xor"]
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("xor", [tensor])  # no outputs named: tritonclient asks for binary_data_output
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), predict(base_url, "xor", x)[0], atol=1e-6)


@pytest.mark.parametrize("datatype,dtype", [("FP64", np.float64), ("INT32", np.int32), ("UINT8", np.uint8)])
def test_other_numeric_inputs(base_url, client, samples, datatype, dtype):
    x = samples["digits"].astype(dtype)
    tensor = http.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = client.infer("digits", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), predict(base_url, "digits", x)[0], atol=1e-6)


def infer_error(client, name, x, datatype="FP32", outputs=None, version="") -> InferenceServerException:
    tensor = http.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer(name, [tensor], outputs=outputs, model_version=version)
    return info.value


def test_errors_reach_the_client_with_our_message(client, samples):
    x = samples["xor"]
    err = infer_error(client, "resnet", x)
    assert err.status() == "404" and "unknown model 'resnet'" in err.message()
    err = infer_error(client, "xor", x, version="9")
    assert err.status() == "404" and "no version 9" in err.message()
    err = infer_error(client, "xor", np.array([["a", "b"]], dtype=np.object_), datatype="BYTES")
    assert err.status() == "400" and "datatype 'BYTES'" in err.message()
    err = infer_error(client, "xor", np.zeros((2, 3), np.float32))
    assert err.status() == "400" and "input.0: has 3 values, expected 2 values" in err.message()
    err = infer_error(client, "xor", x, outputs=[http.InferRequestedOutput("logits")])
    assert err.status() == "400" and "unknown output 'logits'" in err.message()
    err = infer_error(client, "xor", np.full((1, 2), 3.0, np.float32))
    assert err.status() == "400" and "outside [0, 1]" in err.message()


@pytest.mark.parametrize("body,words", [
    ({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1, 1]}]}, "holds 2 values"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}, "one input named 'input'"),
    ({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "INT32", "data": [0, 0.5]}]}, "non-integer"),
    ({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, True]}]}, "not a boolean"),
    ({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, "1"]}]}, "not a string"),
    ({"inputs": []}, "inputs"),
])
def test_bad_requests_are_400_with_a_message(base_url, body, words):
    r = requests.post(f"{base_url}/v2/models/xor/infer", data=json.dumps(body), timeout=10)  # no Content-Type
    assert r.status_code == 400 and set(r.json()) == {"error"} and words in r.json()["error"], r.text


def test_plain_http_with_nested_data_and_no_content_type(base_url):
    body = {"id": "plain", "parameters": {"binary_data_output": False},
            "inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[0, 1], [1, 1]]}],
            "outputs": [{"name": "label"}]}
    r = requests.post(f"{base_url}/v2/models/xor/versions/1/infer", data=json.dumps(body), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {"model_name": "xor", "model_version": "1", "id": "plain",
                        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [2], "data": ["1", "0"]}]}


def test_binary_body_by_hand(base_url):
    x = np.array([[0, 1]], "<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(x)}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    r = requests.post(f"{base_url}/v2/models/xor/infer", data=head + x,
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=10)
    assert r.status_code == 200
    n = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 8}
    probs = np.frombuffer(r.content[n:], "<f4")
    assert probs.shape == (2,) and probs.argmax() == 1
    short = requests.post(f"{base_url}/v2/models/xor/infer", data=head + x[:4],
                          headers={"Inference-Header-Content-Length": str(len(head))}, timeout=10)
    assert short.status_code == 400 and "8 bytes of binary data, but 4 bytes" in short.json()["error"]


def test_metrics_count_the_protocol_routes(base_url):
    requests.post(f"{base_url}/v2/models/xor/infer", timeout=10,
                  data=json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}))
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    assert 'nn_requests_total{endpoint="/v2/models/<name>/infer",model="xor",status="200"}' in text
