"""Every client mistake gets the right status and one JSON error shape; never a 500, never a traceback."""

from __future__ import annotations

import json

import pytest
import requests

from tests.integration.conftest import SERVER_ENV

MAX_BATCH = int(SERVER_ENV["MAX_BATCH"])
MAX_BODY = int(SERVER_ENV["MAX_BODY_BYTES"])
XOR_OK = {"model": "xor", "inputs": [[0, 1]]}


def assert_error(r: requests.Response, status: int, code: str | None = None, loc: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    details = body["error"]["details"]
    assert details is None or (isinstance(details, list) and all({"loc", "message", "type"} <= set(d) for d in details))
    if code:
        assert body["error"]["code"] == code
    if loc:
        assert loc in [d["loc"] for d in body["error"]["details"]], body
    return body["error"]


def post_raw(http, base_url, path, data, content_type="application/json"):
    return http.post(f"{base_url}{path}", data=data, headers={"Content-Type": content_type}, timeout=30)


@pytest.mark.parametrize("path", ["/predict", "/gradcheck"])
def test_malformed_json_is_400(base_url, http, path):
    err = assert_error(post_raw(http, base_url, path, b'{"model": "xor", "inputs": [[0, 1]'), 400, "bad_request")
    assert "not valid JSON" in err["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(base_url, http, content_type):
    assert_error(post_raw(http, base_url, "/predict", json.dumps(XOR_OK), content_type), 415, "unsupported_media_type")


def test_unknown_model_and_version_are_404(base_url, http):
    err = assert_error(http.post(f"{base_url}/predict", json={"model": "resnet", "inputs": [[0, 1]]}), 404,
                       "not_found")
    assert "resnet" in err["message"]
    assert_error(http.post(f"{base_url}/predict", json={**XOR_OK, "version": 99}), 404, "not_found")
    assert_error(http.get(f"{base_url}/models/resnet"), 404, "not_found")
    assert_error(http.get(f"{base_url}/no/such/route"), 404, "not_found")


def test_wrong_sample_length_names_the_sample(base_url, http):
    inputs = [[0.0] * 784] * 3 + [[0.0] * 783]
    err = assert_error(http.post(f"{base_url}/predict", json={"model": "mnist", "inputs": inputs}), 422,
                       "validation_error", loc="inputs.3")
    assert "783" in err["message"] and "784" in err["message"]


def test_wrong_nested_shape(base_url, http):
    inputs = [[[0.0] * 28] * 27]
    assert_error(http.post(f"{base_url}/predict", json={"model": "mnist", "inputs": inputs}), 422, loc="inputs.0")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422(base_url, http, literal):
    body = f'{{"model": "xor", "inputs": [[0, 1], [1, {literal}]]}}'
    assert_error(post_raw(http, base_url, "/predict", body), 422, "validation_error", loc="inputs.1.1")


@pytest.mark.parametrize("value,loc,words", [
    ('"1"', "inputs.0.1", "not a string"),
    ("true", "inputs.0.1", "not a boolean"),
    ("false", "inputs.0.1", "not a boolean"),
    ("null", "inputs.0.1", "not null"),
    ("[1]", "inputs.0", "mix numbers and lists"),
])
def test_inputs_are_numbers_only(base_url, http, value, loc, words):
    body = f'{{"model": "xor", "inputs": [[0, {value}]]}}'
    err = assert_error(post_raw(http, base_url, "/predict", body), 422, "validation_error", loc=loc)
    assert words in err["message"]


@pytest.mark.parametrize("literal", ["true", "false"])
@pytest.mark.parametrize("path,template", [
    ("/predict", '{{"model": "xor", "inputs": [[0, {x}]]}}'),
    ("/v1/models/xor:predict", '{{"instances": [[0, {x}]]}}'),
    ("/v2/models/xor/infer", '{{"inputs": [{{"name": "input", "shape": [1, 2], "datatype": "FP32", '
                             '"data": [0, {x}]}}]}}'),
    # a boolean elsewhere in the body must not hide the one in the data, nor make a clean body fail
    ("/v2/models/xor/infer", '{{"parameters": {{"binary_data_output": false}}, "inputs": [{{"name": "input", '
                             '"shape": [1, 2], "datatype": "FP32", "data": [0, {x}]}}]}}'),
])
def test_a_boolean_is_not_a_number_in_any_protocol(base_url, http, literal, path, template):
    """JSON's true and false are refused as inputs: NumPy would read them as 1 and 0."""
    r = post_raw(http, base_url, path, template.format(x=literal))
    assert r.status_code in (400, 422) and "boolean" in r.text, (r.status_code, r.text[:300])
    clean = post_raw(http, base_url, path, template.format(x="1"))
    assert clean.status_code == 200, clean.text[:300]


NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "last", "nested"])
def test_non_finite_inputs_are_refused_in_every_protocol(base_url, http, value, where):
    """NaN and infinities anywhere in a batch, as JSON literals and as raw FP32 bytes (V2's binary
    extension, where no JSON parser sees them), are refused with the element's location."""
    import numpy as np

    model, sample = ("digits", np.zeros((2, 5, 5))) if where == "nested" else ("xor", np.zeros((3, 2)))
    index = {"first": (0, 0), "last": (2, 1), "nested": (1, 4, 2)}[where]
    sample[index] = value
    loc = "inputs." + ".".join(map(str, index))
    body = json.dumps({"model": model, "inputs": sample.tolist()})  # NaN, Infinity: the lenient literals
    assert_error(post_raw(http, base_url, "/predict", body), 422, "validation_error", loc=loc)
    v1 = post_raw(http, base_url, f"/v1/models/{model}:predict", json.dumps({"instances": sample.tolist()}))
    assert v1.status_code == 400 and "finite" in v1.json()["error"], v1.text
    raw = sample.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": list(sample.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    v2 = http.post(f"{base_url}/v2/models/{model}/infer", data=head + raw, timeout=10,
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert v2.status_code == 400 and "finite number" in v2.json()["error"], v2.text


@pytest.mark.parametrize("depth,status,words", [
    (20, 422, "has shape 1x1x1"),       # regular: NumPy reads it, the shape is wrong
    (100, 422, "nested too deeply"),    # beyond NumPy's 64 dimensions
    (5000, 400, "nested too deeply"),   # beyond the JSON parser's depth limit
])
def test_deep_nesting_is_a_client_error(base_url, http, depth, status, words):
    body = '{"model": "xor", "inputs": ' + "[" * depth + "0" + "]" * depth + "}"
    err = assert_error(post_raw(http, base_url, "/predict", body), status)
    assert words in err["message"]


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_out_of_range_pixels_are_422(base_url, http, value):
    err = assert_error(http.post(f"{base_url}/predict", json={"model": "xor", "inputs": [[0, value]]}), 422,
                       loc="inputs.0")
    assert "outside [0, 1]" in err["message"]


@pytest.mark.parametrize("body,loc", [
    ({"inputs": [[0, 1]]}, "model"),
    ({"model": "xor"}, "inputs"),
    ({"model": "xor", "inputs": []}, "inputs"),
    ({"model": "xor", "inputs": [[0, "one"]]}, "inputs.0.1"),
    ({"model": "xor", "inputs": [[0, 1]], "surprise": True}, "surprise"),
    ({"model": "xor", "inputs": [[0, 1]], "version": 0}, "version"),
    ({"model": "../etc/passwd", "inputs": [[0, 1]]}, "model"),
    (["not", "an", "object"], ""),
])
def test_schema_violations_are_422_with_field_paths(base_url, http, body, loc):
    r = http.post(f"{base_url}/predict", json=body)
    assert_error(r, 422, "validation_error", loc=loc)


def test_batch_over_max_batch_is_413(base_url, http):
    r = http.post(f"{base_url}/predict", json={"model": "xor", "inputs": [[0, 1]] * (MAX_BATCH + 1)})
    err = assert_error(r, 413, "batch_too_large")
    assert err["details"] == [{"loc": "inputs", "message": err["message"], "type": "limit_exceeded",
                               "limit": MAX_BATCH, "got": MAX_BATCH + 1}]
    ok = http.post(f"{base_url}/predict", json={"model": "xor", "inputs": [[0, 1]] * MAX_BATCH})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == MAX_BATCH


def test_body_over_max_body_bytes_is_413(base_url, http):
    body = json.dumps({"model": "xor", "inputs": [[0, 1]], "pad": "x" * MAX_BODY})
    r = post_raw(http, base_url, "/predict", body)
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("method,path", [("get", "/predict"), ("put", "/gradcheck"), ("delete", "/models"),
                                         ("post", "/healthz")])
def test_wrong_method_is_405(base_url, http, method, path):
    r = getattr(http, method)(f"{base_url}{path}")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"] or "POST" in r.headers["Allow"]


def test_gradcheck_limits_are_422(base_url, http):
    mnist_full = {"model": "mnist", "inputs": [[0.0] * 784], "labels": ["0"], "mode": "full"}
    err = assert_error(http.post(f"{base_url}/gradcheck", json=mnist_full), 422, "gradcheck_too_large", loc="mode")
    assert "sampled" in err["message"]
    many = {"model": "xor", "inputs": [[0, 1]] * 65, "labels": ["1"] * 65}
    assert_error(http.post(f"{base_url}/gradcheck", json=many), 422, "gradcheck_too_large", loc="inputs")
    samples = {"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "samples": 101}
    assert_error(http.post(f"{base_url}/gradcheck", json=samples), 422, "gradcheck_too_large", loc="samples")


@pytest.mark.parametrize("changes,loc", [
    ({"labels": ["1", "0"]}, "labels"),
    ({"labels": ["7"]}, "labels.0"),
    ({"mode": "psychic"}, "mode"),
    ({"epsilon": 0}, "epsilon"),
    ({"epsilon": 1.0}, "epsilon"),
    ({"samples": 0}, "samples"),
])
def test_gradcheck_bad_arguments_are_422(base_url, http, changes, loc):
    body = {"model": "xor", "inputs": [[0, 1]], "labels": ["1"], **changes}
    assert_error(http.post(f"{base_url}/gradcheck", json=body), 422, loc=loc)


def test_request_id_is_echoed_or_made(base_url, http):
    r = http.post(f"{base_url}/predict", json=XOR_OK, headers={"X-Request-ID": "trace-42"})
    assert r.headers["X-Request-ID"] == "trace-42"
    r = http.post(f"{base_url}/predict", json=XOR_OK, headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["X-Request-ID"] != "bad id\twith spaces" and len(r.headers["X-Request-ID"]) == 32
    err = http.get(f"{base_url}/models/nope", headers={"X-Request-ID": "trace-43"})
    assert err.headers["X-Request-ID"] == "trace-43"


def test_responses_carry_no_version_banner_and_are_not_sniffed(base_url, http):
    for r in (http.get(f"{base_url}/healthz"), http.get(f"{base_url}/nope"),
              http.post(f"{base_url}/predict", json=XOR_OK)):
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers.get("Server", "") in ("", "gunicorn")  # no version
