"""The service in-process: settings, input validation, error rendering, and the app factory."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pydantic import ValidationError

from service import jsonio
from service.app import create_app
from service.config import Settings
from service.dataplane import as_batch, label_indices
from service.errors import ServiceError, validation_details
from service.registry import ModelRegistry
from service.schemas import ErrorResponse, GradcheckRequest


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


@pytest.fixture(scope="module")
def client(registry):
    return create_app({"max_batch": 8}, model_registry=registry).test_client()


def test_settings_from_environment():
    s = Settings.from_env({"PORT": "9000", "WORKERS": "3", "MAX_BATCH": "16", "LOG_LEVEL": "DEBUG", "HOST": ""})
    assert (s.port, s.workers, s.max_batch, s.log_level, s.host) == (9000, 3, 16, "debug", "0.0.0.0")
    with pytest.raises(ValidationError):
        Settings.from_env({"PORT": "70000"})
    with pytest.raises(ValidationError):
        Settings.from_env({"LOG_LEVEL": "chatty"})


def to_batch(inputs, entry):
    """What a JSON request goes through: the codec's conversion, then the data plane's checks."""
    return as_batch(jsonio.to_array(inputs, "inputs"), entry)


def test_to_batch_accepts_flat_and_nested(registry):
    entry = registry.get("digits")
    flat = to_batch([[1.0] * 25, [0.0] * 25], entry)
    nested = to_batch([[[1.0] * 5] * 5, [[0, 0, 0, 0, 0]] * 5], entry)
    assert flat.dtype == np.float32 and flat.shape == (2, 25) and flat.flags.c_contiguous
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize("inputs,loc,words", [
    ([[0.0] * 25, [0.0] * 24], "inputs.1", "has 24 values, but inputs.0 has 25 values"),
    ([[0.0] * 24, [0.0] * 24], "inputs.0", "has 24 values, expected 25 values (or 5x5)"),
    ([[[0.0] * 5] * 4], "inputs.0", "shape 4x5"),
    ([[[0.0] * 5] * 4 + [[0.0] * 4]], "inputs.0.4", "unequal length"),
    ([[0.0] * 25, [[0.0] * 5] * 5], "inputs", "mix flat and nested"),
    ([[0.0] * 24 + [2.0]], "inputs.0", "value 2 at position 24 is outside [0, 1]"),
    ([[0.0] * 24 + [1e300]], "inputs.0", "outside"),
    ([[0.0] * 24 + [10**40]], "inputs.0", "outside"),
    ([[0.0] * 24 + ["1"]], "inputs.0.24", "not a string"),
    ([[0.0] * 24 + [True]], "inputs.0.24", "not a boolean"),
    ([[[0.0] * 5] * 4 + [[0, 0, None, 0, 0]]], "inputs.0.4.2", "not null"),
    ([[0.0] * 24 + [{"a": 1}]], "inputs.0.24", "not an object"),
    ([[0.0] * 24 + [float("nan")]], "inputs.0.24", "finite number"),
    ([[[0.0] * 5] * 4 + [[0, 0, float("inf"), 0, 0]]], "inputs.0.4.2", "finite number"),
    ([0.5], "inputs", "not a single number"),
])
def test_to_batch_errors_name_the_sample(registry, inputs, loc, words):
    with pytest.raises(ServiceError) as info:
        to_batch(inputs, registry.get("digits"))
    assert info.value.status == 422 and info.value.details[0]["loc"] == loc, info.value.details
    assert words in info.value.message


def test_deep_nesting_is_refused_not_crashed():
    for depth in (50, 5000):
        with pytest.raises(ServiceError) as info:
            body = jsonio.loads(b"[" * depth + b"0" + b"]" * depth)
            jsonio.to_array(body, "inputs")
        assert info.value.status in (400, 422) and "nested too deeply" in info.value.message


def test_label_indices(registry):
    entry = registry.get("digits")
    assert label_indices(["1", "5"], entry).tolist() == [0, 4]
    with pytest.raises(ServiceError, match=r"labels\.1"):
        label_indices(["1", "6"], entry)


def test_union_branches_are_pruned_from_error_paths():
    from pydantic import BaseModel

    class Body(BaseModel):
        sample: list[float] | list[list[float]]

    with pytest.raises(ValidationError) as info:
        Body.model_validate({"sample": [[0.1, "x"]]})
    assert validation_details(info.value) == [
        {"loc": "sample.0.1", "message": "Input should be a valid number, unable to parse string as a number",
         "type": "float_parsing"}]


def test_envelope_errors_name_the_field():
    with pytest.raises(ValidationError) as info:
        GradcheckRequest.model_validate({"model": "m", "inputs": [[0.1]], "labels": ["1"], "version": "two"})
    assert [d["loc"] for d in validation_details(info.value)] == ["version"]


def test_unexpected_exception_is_a_clean_500(registry, caplog):
    app = create_app(model_registry=registry)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    r = app.test_client().get("/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500
    body = r.get_json()
    assert body["error"]["code"] == "internal_error" and body["error"]["details"] is None
    assert "req-500" in body["error"]["message"] and r.headers["X-Request-ID"] == "req-500"
    assert "secret" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)
    assert "req-500" in caplog.text and "secret internal detail" in caplog.text


def test_missing_model_dir_is_not_ready(tmp_path):
    client = create_app({"model_dir": str(tmp_path / "nowhere")}).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and "does not exist" in r.get_json()["models"]["model_dir"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/predict", json={"model": "xor", "inputs": [[0, 1]]}).status_code == 404


def test_max_batch_from_config(client):
    assert client.post("/predict", json={"model": "xor", "inputs": [[0, 1]] * 9}).status_code == 413
    assert client.post("/predict", json={"model": "xor", "inputs": [[0, 1]] * 8}).status_code == 200


def test_predictions_are_independent_of_batch_composition(client):
    """A sample's probabilities do not depend on what else is in the batch (eval mode, no BN stats)."""
    one = client.post("/predict", json={"model": "digits", "inputs": [[1.0] * 25]}).get_json()
    two = client.post("/predict", json={"model": "digits", "inputs": [[0.0] * 25, [1.0] * 25]}).get_json()
    assert one["predictions"][0] == two["predictions"][1]


UNLOAD_SCRIPT = """
import gc, os, shutil, sys, tempfile
from pathlib import Path
from service.policy import VersionPolicy
from service.registry import ModelRegistry

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

root = Path(tempfile.mkdtemp())
for version in (1, 2, 3):
    shutil.copytree(Path(sys.argv[1]) / "mnist" / "1", root / "mnist" / str(version))
warm = ModelRegistry(root).load_all()  # first-load costs (imports, caches) that are never given back
warm.set_unloaded("mnist", True)
del warm
gc.collect()
before = rss()
reg = ModelRegistry(root, VersionPolicy.parse("all")).load_all()
assert sorted(reg.models["mnist"]) == [1, 2, 3]
loaded = rss()
reg.set_unloaded("mnist", True)
gc.collect()
print(before, loaded, rss(), len(reg.models))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS from /proc (Linux)")
def test_unloaded_versions_give_their_memory_back(model_repository):
    """Three MNIST versions (7.4 MB of weights each) loaded, then unloaded: RSS comes back down. In a
    fresh process, so that memory the test process freed earlier cannot hide the growth."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", UNLOAD_SCRIPT, str(model_repository)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    before, loaded, after, models = (int(v) for v in out)
    print(f"\nRSS: {before / 1e6:.1f} MB, {loaded / 1e6:.1f} MB with 3 versions, {after / 1e6:.1f} MB unloaded")
    assert models == 0 and loaded - before > 6e6
    assert loaded - after > 0.75 * (loaded - before)


@pytest.mark.parametrize("text,kind,served", [
    ("latest", "latest:1", [3]), ("latest:2", "latest:2", [3, 2]), ("all", "all", [3, 2, 1]),
    ("specific:1,3", "specific:1,3", [3, 1]),
])
def test_version_policies(tmp_path, model_repository, text, kind, served):
    import shutil

    from service.policy import VersionPolicy

    for version in (1, 2, 3):
        shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / str(version))
    reg = ModelRegistry(tmp_path, VersionPolicy.parse(text)).load_all()
    assert str(VersionPolicy.parse(text)) == kind
    assert sorted(reg.models["xor"], reverse=True) == served


def test_a_model_may_set_its_own_policy_and_bad_policies_are_refused(tmp_path, model_repository):
    import json
    import shutil

    from service.policy import VersionPolicy

    for version in (1, 2):
        shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / str(version))
    (tmp_path / "xor" / "config.json").write_text(json.dumps({"version_policy": "all"}))
    assert sorted(ModelRegistry(tmp_path).load_all().models["xor"]) == [1, 2]
    for bad in ("newest", "latest:0", "specific:", "all:2", "specific:a"):
        with pytest.raises(ValueError):
            VersionPolicy.parse(bad)
    with pytest.raises(ValidationError):
        Settings.from_env({"VERSION_POLICY": "newest"})


def test_the_page_is_served_with_a_strict_policy_and_stays_out_of_the_api_document(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert b'<script type="module" src="/static/app.js">' in page.data
    script = client.get("/static/drawing.js")
    assert script.status_code == 200 and "javascript" in script.mimetype
    assert client.get("/ui/glyphs.json").json["labels"] == ["1", "2", "3", "4", "5"]
    assert client.get("/static/nope.js").status_code == 404
    assert "Content-Security-Policy" not in client.get("/healthz").headers  # the API is not a page
    paths = client.get("/openapi.json").json["paths"]
    assert "/" not in paths and not any(p.startswith(("/static", "/ui")) for p in paths)


# -- the error contract, in-process: a broken handler fails the fast suite, not only integration --
ERROR_CASES = [  # (path, request, status, code, loc of the first detail or None, words in the message)
    ("/predict", {"data": "{bad", "content_type": "application/json"}, 400, "bad_request", None, "not valid JSON"),
    ("/predict", {"data": "x", "content_type": "text/plain"}, 415, "unsupported_media_type", None, "text/plain"),
    ("/predict", {"json": {"inputs": [[0, 1]]}}, 422, "validation_error", "model", "Field required"),
    ("/predict", {"json": {"model": "xor", "inputs": [[0, 1]], "extra": 1}}, 422, "validation_error", "extra",
     "Extra inputs"),
    ("/predict", {"json": {"model": "xor", "inputs": [[0, "a"]]}}, 422, "validation_error", "inputs.0.1",
     "not a string"),
    ("/predict", {"json": {"model": "xor", "inputs": [[0, True]]}}, 422, "validation_error", "inputs.0.1", "boolean"),
    ("/predict", {"json": {"model": "xor", "inputs": [[0, 1, 1]]}}, 422, "validation_error", "inputs.0",
     "expected 2 values"),
    ("/predict", {"json": {"model": "xor", "inputs": [[0, 2]]}}, 422, "validation_error", "inputs.0",
     "outside [0, 1]"),
    ("/predict", {"json": {"model": "xor", "inputs": []}}, 422, "validation_error", "inputs", "at least 1"),
    ("/predict", {"json": {"model": "xor", "version": 0, "inputs": [[0, 1]]}}, 422, "validation_error", "version",
     "greater than or equal to 1"),
    ("/predict", {"json": {"model": "nope", "inputs": [[0, 1]]}}, 404, "not_found", None, "unknown model 'nope'"),
    ("/predict", {"json": {"model": "xor", "version": 7, "inputs": [[0, 1]]}}, 404, "not_found", None,
     "no version 7"),
    ("/predict", {"json": {"model": "xor", "inputs": [[0, 1]] * 9}}, 413, "batch_too_large", "inputs", "MAX_BATCH=8"),
    ("/gradcheck", {"json": {"model": "xor", "inputs": [[0, 1]], "labels": ["7"]}}, 422, "validation_error",
     "labels.0", "unknown class '7'"),
    ("/gradcheck", {"json": {"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "epsilon": 1}}, 422,
     "validation_error", "epsilon", "less than or equal"),
]


@pytest.mark.parametrize(("path", "request_", "status", "code", "loc", "words"), ERROR_CASES,
                         ids=[f"{c[2]}-{c[3]}-{c[4]}" for c in ERROR_CASES])
def test_error_contract(client, path, request_, status, code, loc, words):
    r = client.post(path, **request_)
    assert r.status_code == status and r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and words in body["error"]["message"]
    if loc is None:
        assert body["error"]["details"] is None
    else:
        assert body["error"]["details"][0]["loc"] == loc
    assert "Traceback" not in r.get_data(as_text=True)
    ErrorResponse.model_validate(body)


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v2/models/xor/infer", {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 1]}]},
     "input.0: has 3 values, expected 2 values"),
    ("/v2/models/nope/infer", {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]},
     "unknown model 'nope'"),
    ("/v1/models/xor:predict", {"instances": [[0, 1, 1]]}, "instances.0: has 3 values, expected 2 values"),
])
def test_standard_protocols_errors_have_their_own_shape(client, path, body, message):
    r = client.post(path, json=body)
    assert r.status_code in (400, 404) and set(r.get_json()) == {"error"}
    assert isinstance(r.get_json()["error"], str) and message in r.get_json()["error"]
