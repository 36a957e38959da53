"""The service in-process: settings, input validation, error rendering, and the app factory."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings
from service.dataplane.dataplane import as_batch, label_indices
from service.errors import ServiceError, validation_details
from service.protocols import json_codec
from service.protocols.schemas import ErrorResponse, GradcheckRequest
from service.repository.registry import ModelRegistry
from tests.bad_weights import ALL_KINDS, make_bad
from tests.floats import assert_probabilities_close


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


@pytest.fixture(scope="module")
def client(registry):
    return create_app({"max_batch": 8}, model_registry=registry).test_client()


def test_preferred_batch_sizes_are_a_comma_separated_list():
    assert Settings.from_env({"PREFERRED_BATCH_SIZE": " 16, 8,8 "}).preferred_batch_sizes() == (8, 16)
    assert Settings.from_env({"PREFERRED_BATCH_SIZE": ""}).preferred_batch_sizes() == ()
    assert Settings.from_env({"PREFERRED_BATCH_SIZE": "8,16,"}).preferred_batch_sizes() == (8, 16)  # as before
    for bad in ("8 16", "8,,16", "x"):  # "8 16" was read as 816
        with pytest.raises(ValidationError):
            Settings.from_env({"PREFERRED_BATCH_SIZE": bad})


def test_settings_from_environment():
    s = Settings.from_env({"PORT": "9000", "WORKERS": "3", "MAX_BATCH": "16", "LOG_LEVEL": "DEBUG", "HOST": ""})
    assert (s.port, s.workers, s.max_batch, s.log_level, s.host) == (9000, 3, 16, "debug", "0.0.0.0")
    with pytest.raises(ValidationError):
        Settings.from_env({"PORT": "70000"})
    with pytest.raises(ValidationError):
        Settings.from_env({"LOG_LEVEL": "chatty"})


def test_grpc_settings():
    assert Settings.from_env({}).grpc_port == 8001  # Triton's
    assert Settings.from_env({"GRPC_PORT": "0"}).grpc_port == 0  # off
    with pytest.raises(ValidationError, match="GRPC_PORT=9000 is PORT too"):
        Settings.from_env({"PORT": "9000", "GRPC_PORT": "9000"})


def test_a_retry_after_becomes_grpcs_pushback_in_milliseconds():
    """gRFC A6's trailer for REST's Retry-After; a value that is not whole seconds (an HTTP date) gives
    none, rather than an error inside the error handler (the call would end UNKNOWN, not UNAVAILABLE)."""
    from service.grpc.calls import pushback

    assert pushback("1") == (("grpc-retry-pushback-ms", "1000"),)
    assert pushback("60") == (("grpc-retry-pushback-ms", "60000"),)
    for other in ("Wed, 21 Oct 2015 07:28:00 GMT", "0.5", "", "\u00b2", "1" * 7):
        assert pushback(other) == (), other


def test_bad_settings_stop_the_server_with_one_line_each_and_no_traceback():
    """``python -m service`` as an operator starts it: each bad variable named with what is wrong, exit 1;
    never a traceback, never a value (a token may be among them)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}  # only the test's
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "PORT": "0", "MAX_BODY_BYTES": "hunter2-is-no-size", "GRPC_PORT": "9001"})
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == ["Error: the settings are not valid:",
                                       "  PORT: Input should be greater than or equal to 1",
                                       "  MAX_BODY_BYTES: Input should be a valid integer, unable to parse string as "
                                       "an integer"], run.stderr
    same = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**env, "PORT": "9000", "GRPC_PORT": "9000"})
    assert (same.returncode, same.stderr.splitlines()) == (1, [
        "Error: the settings are not valid:",
        "  GRPC_PORT=9000 is PORT too: give gRPC a port of its own (0 turns it off)"]), same.stderr


def to_batch(inputs, entry):
    """What a JSON request goes through: the codec's conversion, then the data plane's checks."""
    return as_batch(json_codec.to_array(inputs, "inputs"), entry)


def test_to_batch_accepts_flat_and_nested(registry):
    entry = registry.snapshot.get("digits")
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
        to_batch(inputs, registry.snapshot.get("digits"))
    assert info.value.status == 422 and info.value.details[0]["loc"] == loc, info.value.details
    assert words in info.value.message


def test_deep_nesting_is_refused_not_crashed():
    for depth in (50, 5000):
        with pytest.raises(ServiceError) as info:
            body = json_codec.loads(b"[" * depth + b"0" + b"]" * depth)
            json_codec.to_array(body, "inputs")
        assert info.value.status in (400, 422) and "nested too deeply" in info.value.message


def test_label_indices(registry):
    entry = registry.snapshot.get("digits")
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


@pytest.mark.parametrize("model", ["xor", "digits", "mnist"])
def test_predictions_are_independent_of_batch_composition(client, registry, model):
    """A sample's answer does not depend on what else is in the batch (eval mode, no batch statistics),
    to float32 precision: alone (OpenBLAS's one-row kernel) and among others (its many-row kernels) the
    sums run in another order, so the last digits may differ by CPU (tests/floats.py states by how much)."""
    features = registry.snapshot.get(model).network.input_features
    rng = np.random.default_rng(5)
    batch = rng.random((8, features)).round(3).tolist()  # the fixture's MAX_BATCH
    together = client.post("/predict", json={"model": model, "inputs": batch}).get_json()["predictions"]
    for i in (0, 3, 7):
        alone = client.post("/predict", json={"model": model, "inputs": [batch[i]]}).get_json()["predictions"][0]
        assert_probabilities_close(alone["probabilities"], together[i]["probabilities"], err_msg=f"sample {i}")
        assert alone["label"] == together[i]["label"] or max(alone["probabilities"]) < 0.51


UNLOAD_SCRIPT = """
import gc, os, shutil, sys, tempfile
from pathlib import Path
from service.repository.version_policy import VersionPolicy
from service.repository.registry import ModelRegistry

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
assert sorted(reg.snapshot.models["mnist"]) == [1, 2, 3]
loaded = rss()
reg.set_unloaded("mnist", True)
gc.collect()
print(before, loaded, rss(), len(reg.snapshot.models))
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


def test_an_unloaded_model_whose_directory_is_deleted_is_no_model(tmp_path, model_repository):
    """The index listed a deleted model as 'unloaded' for ever, and a request for it was a 503, not a 404.
    Its mark stays: the directory put back comes back unloaded, as the operator left it."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(model_repository / "xor" / "1", repo / "xor" / "1")
    reg = ModelRegistry(repo, state_file=tmp_path / "state.json").load_all()
    reg.set_unloaded("xor", True)
    assert reg.snapshot.index() == [{"name": "xor", "state": "UNAVAILABLE", "reason": "unloaded"}]
    shutil.rmtree(repo / "xor")
    reg.refresh(settle=False)
    assert reg.snapshot.index() == []
    with pytest.raises(ServiceError) as info:
        reg.snapshot.versions("xor")
    assert info.value.status == 404
    shutil.copytree(model_repository / "xor" / "1", repo / "xor" / "1")
    reg.refresh(settle=False)
    assert reg.snapshot.index() == [{"name": "xor", "state": "UNAVAILABLE", "reason": "unloaded"}]


@pytest.mark.parametrize("text,kind,served", [
    ("latest", "latest:1", [3]), ("latest:2", "latest:2", [3, 2]), ("all", "all", [3, 2, 1]),
    ("specific:1,3", "specific:1,3", [3, 1]),
])
def test_version_policies(tmp_path, model_repository, text, kind, served):
    import shutil

    from service.repository.version_policy import VersionPolicy

    for version in (1, 2, 3):
        shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / str(version))
    reg = ModelRegistry(tmp_path, VersionPolicy.parse(text)).load_all()
    assert str(VersionPolicy.parse(text)) == kind
    assert sorted(reg.snapshot.models["xor"], reverse=True) == served


def test_a_model_may_set_its_own_policy_and_bad_policies_are_refused(tmp_path, model_repository):
    import json
    import shutil

    from service.repository.version_policy import VersionPolicy

    for version in (1, 2):
        shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / str(version))
    (tmp_path / "xor" / "config.json").write_text(json.dumps({"version_policy": "all"}))
    assert sorted(ModelRegistry(tmp_path).load_all().snapshot.models["xor"]) == [1, 2]
    for bad in ("newest", "latest:0", "specific:", "all:2", "specific:a"):
        with pytest.raises(ValueError):
            VersionPolicy.parse(bad)
    with pytest.raises(ValidationError):
        Settings.from_env({"VERSION_POLICY": "newest"})


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def test_the_page_is_served_with_a_strict_policy_and_stays_out_of_the_api_document(client):
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.mimetype == "text/html" and "Accept" in page.headers["Vary"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert b'<script type="module" src="/static/app.js">' in page.data
    script = client.get("/static/drawing.js")
    assert script.status_code == 200 and "javascript" in script.mimetype
    assert client.get("/ui/glyphs.json").json["labels"] == ["1", "2", "3", "4", "5"]
    assert client.get("/static/nope.js").status_code == 404
    assert "Content-Security-Policy" not in client.get("/healthz").headers  # the API is not a page
    paths = client.get("/openapi.json").json["paths"]
    assert "/" not in paths and not any(p.startswith(("/static", "/ui")) for p in paths)


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html;q=0.5, application/json"])
def test_the_root_answers_an_api_client_as_kserve_does(client, accept):
    """KServe's model server root: its V1 SDK's server-live check reads {"status": "alive"} from GET /."""
    r = client.get("/", headers={"Accept": accept} if accept else {})
    assert r.status_code == 200 and r.mimetype == "application/json" and r.json == {"status": "alive"}
    assert "Accept" in r.headers["Vary"]


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


# -- rules pinned by hand, on models unlike the shipped ones ---------------------------------------
def hand_count(architecture: dict) -> tuple[int, int]:
    """(parameters, parameter tensors) of a dense network, counted from its architecture by hand."""
    assert {layer["type"] for layer in architecture["layers"]} <= {"dense", "relu", "tanh", "sigmoid", "dropout"}
    dense = [layer for layer in architecture["layers"] if layer["type"] == "dense"]  # W and b each
    return sum(d["in_features"] * d["out_features"] + d["out_features"] for d in dense), 2 * len(dense)


@pytest.mark.parametrize("model", ["xor", "digits", "mnist"])
def test_gradcheck_cost_is_a_hand_count(registry, model):
    """Two forward passes of the batch per comparison, each about (parameters) multiply-adds per input:
    full compares every parameter; sampled and directional compare ``samples`` per parameter tensor."""
    from service.dataplane.diagnostics import gradcheck_cost

    network = registry.snapshot.get(model).network
    params, tensors = hand_count(registry.snapshot.get(model).metadata["architecture"])
    assert network.num_params == params
    for inputs, samples in ((1, 1), (4, 10), (16, 100)):
        for mode in ("sampled", "directional"):
            assert gradcheck_cost(network, inputs, mode, samples) == 2.0 * samples * tensors * params * inputs
        assert gradcheck_cost(network, inputs, "full", samples) == 2.0 * params * params * inputs


def test_a_gradcheck_just_over_its_cost_bound_is_refused(registry):
    """A bound set to exactly the hand-counted cost of 2 inputs: 2 run, 3 are refused."""
    params, tensors = hand_count(registry.snapshot.get("digits").metadata["architecture"])
    bound = 2.0 * 5 * tensors * params * 2  # directional, samples=5, two inputs
    client = create_app({"max_batch": 8, "gradcheck_max_cost": bound}, model_registry=registry).test_client()
    body = {"model": "digits", "labels": ["1"], "inputs": [[1.0] * 25], "mode": "directional", "samples": 5}
    ok = client.post("/gradcheck", json={**body, "inputs": [[1.0] * 25] * 2, "labels": ["1", "2"]})
    assert ok.status_code == 200 and ok.get_json()["passed"], ok.get_json()
    over = client.post("/gradcheck", json={**body, "inputs": [[1.0] * 25] * 3, "labels": ["1", "2", "3"]})
    assert over.status_code == 422 and over.get_json()["error"]["code"] == "gradcheck_too_large"


ODD_LABELS = ["β-Zelle", "zwei", "äpfel"]  # neither sorted nor ASCII: the model's own order rules


@pytest.fixture(scope="module")
def odd_client(tmp_path_factory):
    from model.io import save_model
    from model.layers import Dense
    from model.network import Sequential

    layer = Dense(2, 3, rng=np.random.default_rng(0))
    layer.params["W"][...] = [[4.0, 0.0, -4.0], [-4.0, 0.0, 4.0]]  # [1, 0] -> class 0, [0, 1] -> class 2
    layer.params["b"][...] = 0.0
    root = tmp_path_factory.mktemp("odd")
    save_model(root / "odd" / "1" / "model.npz", Sequential([layer]).eval(),
               {"name": "odd", "version": 1, "labels": ODD_LABELS, "input_shape": [2],
                "preprocessing": {"input_range": [0.0, 1.0]}})
    reg = ModelRegistry(root).load_all()
    assert reg.snapshot.get("odd").labels == ODD_LABELS
    return create_app({"max_batch": 8}, model_registry=reg).test_client()


def test_a_gradcheck_of_a_batchnorm_model_on_one_input_is_a_422(tmp_path):
    """The check runs the training-mode network, whose BatchNorm refuses one sample (as PyTorch's):
    that ValueError was a 500; two inputs are checked."""
    from model.io import save_model
    from model.layers import BatchNorm1d, Dense, ReLU
    from model.network import Sequential

    rng = np.random.default_rng(0)
    net = Sequential([Dense(2, 4, rng=rng), BatchNorm1d(4), ReLU(), Dense(4, 2, rng=rng)]).eval()
    save_model(tmp_path / "bn" / "1" / "model.npz", net, {"name": "bn", "version": 1, "labels": ["0", "1"],
                                                           "input_shape": [2], "preprocessing": {}})
    client = create_app(model_registry=ModelRegistry(tmp_path).load_all()).test_client()
    one = client.post("/gradcheck", json={"model": "bn", "inputs": [[0.5, 1.0]], "labels": ["1"], "mode": "full"})
    assert one.status_code == 422 and "2 inputs or more" in one.get_json()["error"]["message"], one.get_json()
    two = client.post("/gradcheck", json={"model": "bn", "inputs": [[0.5, 1.0], [0.1, 0.2]], "labels": ["1", "0"],
                                          "mode": "full"})
    assert two.status_code == 200 and two.get_json()["passed"], two.get_json()


def test_labels_are_the_model_s_own_order_and_any_text(odd_client):
    import tritonclient.http as triton

    entry = odd_client.application.extensions["model_registry"].snapshot.get("odd")
    assert label_indices(["äpfel", "β-Zelle", "zwei"], entry).tolist() == [2, 0, 1]
    r = odd_client.post("/predict", json={"model": "odd", "inputs": [[1, 0], [0, 1]]}).get_json()
    assert r["labels"] == ODD_LABELS and [p["label"] for p in r["predictions"]] == ["β-Zelle", "äpfel"]
    check = odd_client.post("/gradcheck", json={"model": "odd", "inputs": [[1, 0], [0, 1]],
                                                "labels": ["β-Zelle", "äpfel"], "mode": "full"}).get_json()
    assert check["passed"] and check["loss"] < 0.05  # the loss of the right classes: both are confident
    # V2's BYTES output in the binary extension, read by Triton's own client: lengths are UTF-8 bytes
    v2 = odd_client.post("/v2/models/odd/infer", json={
        "inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 0, 0, 1]}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}]})
    assert v2.status_code == 200, v2.get_data()[:300]
    result = triton.InferResult.from_response_body(v2.get_data(), header_length=int(
        v2.headers["Inference-Header-Content-Length"]))
    assert [s.decode() for s in result.as_numpy("label")] == ["β-Zelle", "äpfel"]
    as_json = odd_client.post("/v2/models/odd/infer", json={
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}],
        "outputs": [{"name": "label"}]}).get_json()
    assert as_json["outputs"][0]["data"] == ["äpfel"]


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_bad_weights_files_do_not_stop_the_others(tmp_path, model_repository, kind):
    """A bad file of any kind, beside good ones: the registry loads, the bad version is reported with a
    one-line reason and answers 503, the newest good one serves."""
    import shutil

    shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / "1")
    shutil.copytree(model_repository / "digits" / "1", tmp_path / "digits" / "1")
    make_bad(kind, tmp_path / "xor" / "1" / "model.npz", tmp_path / "xor" / "2" / "model.npz")
    reg = ModelRegistry(tmp_path).load_all()
    versions = {v["version"]: v for v in reg.snapshot.describe("xor")["versions"]}
    assert versions[2]["status"] == "failed" and versions[2]["error"] and "\n" not in versions[2]["error"], versions
    assert reg.snapshot.get("xor").version == 1 and reg.snapshot.get("digits").version == 1
    client = create_app({"max_batch": 8}, model_registry=reg).test_client()
    assert client.post("/predict", json={"model": "xor", "inputs": [[0, 1]]}).status_code == 200
    assert client.post("/predict", json={"model": "xor", "version": 2, "inputs": [[0, 1]]}).status_code == 503


def test_a_version_number_no_client_could_name_is_no_version(tmp_path, model_repository):
    """Versions are 1 to 999,999,999 (nine digits, what URLs and gRPC calls take). A larger directory
    name is ignored: served unnamed, a 20-digit version made every /predict a 500 (its answer could not
    be written), and a 10-digit one answered with a number no client could send back."""
    import shutil

    from model.repository import MAX_VERSION, next_version, versions

    xor = tmp_path / "repo" / "xor"
    shutil.copytree(model_repository / "xor" / "1", xor / "1")
    for name in ("1700000000", "99999999999999999999", str(MAX_VERSION)):
        shutil.copytree(model_repository / "xor" / "1", xor / name)
    assert versions(xor) == [1, MAX_VERSION]
    with pytest.raises(FileExistsError, match="no version can follow"):
        next_version(xor)
    client = create_app({"model_dir": str(tmp_path / "repo")}).test_client()
    r = client.post("/predict", json={"model": "xor", "inputs": [[0, 1]]})
    assert r.status_code == 200 and r.get_json()["version"] == MAX_VERSION
    r = client.post(f"/v2/models/xor/versions/{MAX_VERSION}/infer",
                    json={"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]})
    assert r.status_code == 200 and r.get_json()["model_version"] == str(MAX_VERSION)


def test_a_configuration_or_rollout_nested_too_deeply_is_ignored_not_fatal(tmp_path, model_repository, caplog):
    """json.loads raises RecursionError (not a ValueError) for deep nesting: a config.json or rollout.json
    of 30,000 brackets stopped every scan of the repository, and the app could not start (as did a
    version policy that is not text)."""
    import shutil

    xor = tmp_path / "repo" / "xor"
    shutil.copytree(model_repository / "xor" / "1", xor / "1")
    for name in ("config.json", "rollout.json"):
        (xor / name).write_text("[" * 30_000)
    registry = ModelRegistry(tmp_path / "repo", settle_seconds=0.0).load_all()
    assert sorted(registry.snapshot.serving["xor"]) == [1]
    assert "nested too deeply" in caplog.text
    for policy in (2, None, ["all"], {"kind": "all"}):  # not text: {"version_policy": 2} stopped every scan
        (xor / "config.json").write_text(json.dumps({"version_policy": policy}))
        assert sorted(ModelRegistry(tmp_path / "repo", settle_seconds=0.0).load_all().snapshot.serving["xor"]) == [1]
    client = create_app(model_registry=registry).test_client()
    assert client.post("/predict", json={"model": "xor", "inputs": [[0, 1]]}).status_code == 200
    assert "nested too deeply" in client.get("/models/xor").get_json()["rollout_error"]


def test_an_unforeseen_load_error_fails_that_version_only(tmp_path, model_repository, monkeypatch):
    """Whatever a weights file makes the loader raise, that version fails and the scan goes on: one
    exception no rule foresaw (an OverflowError once) stopped every model from serving."""
    import shutil

    from service.repository import model_version

    shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / "1")
    shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / "2")
    real = model_version.load_model

    def flaky(path):
        if path.parent.name == "2":
            raise RuntimeError("nobody saw this coming")
        return real(path)

    monkeypatch.setattr(model_version, "load_model", flaky)
    reg = ModelRegistry(tmp_path, every_version(), 0.0).load_all()
    versions = {v["version"]: v for v in reg.snapshot.describe("xor")["versions"]}
    assert versions[1]["status"] == "ready" and versions[2]["status"] == "failed"
    assert "unexpected" in versions[2]["error"] and "nobody saw" not in versions[2]["error"]


def every_version():
    from service.repository.version_policy import VersionPolicy

    return VersionPolicy.parse("all")


@pytest.mark.parametrize("outputs", [None, [{"name": "attributions"}]])
def test_a_v2_tensor_of_shape_nothing_is_no_batch_for_inference_or_explanation(client, outputs):
    """Shape [] is one number, not a batch of samples: a 400 (V2's status for a client's mistake) naming
    the input, for an explanation too (there, len() of the 0-d array was a 500)."""
    body = {"inputs": [{"name": "input", "shape": [], "datatype": "FP32", "data": [0.5]}]}
    if outputs:
        body["outputs"] = outputs
    r = client.post("/v2/models/xor/infer", json=body)
    assert r.status_code == 400 and "not a single number" in r.get_json()["error"], r.get_json()


def test_integers_sent_as_floats_are_checked_against_their_type_s_exact_range():
    """float(2**64 - 1) is 2**64: compared with the range's float bound it passed, then wrapped to 0."""
    from service.protocols import v2_tensors
    v2_tensors.check_integers("x", "UINT64", np.array([0.0, 2.0**63]))
    v2_tensors.check_integers("x", "INT64", np.array([-(2.0**63), 2.0**62]))
    for datatype, value in (("UINT64", 2.0**64), ("INT64", 2.0**63), ("UINT8", 256.0), ("INT8", -129.0)):
        with pytest.raises(ServiceError, match="outside the range"):
            v2_tensors.check_integers("x", datatype, np.array([value]))


@pytest.mark.parametrize("outputs,parameters,says", [
    ([{"name": "bogus"}], None, "unknown output"),
    ([{"name": "label", "parameters": {"binary_data": "x"}}], None, "true or false"),
    ([{"name": "label"}], {"binary_data_output": 1}, "true or false"),
    ([{"name": "label"}, {"name": "label"}], None, "more than once"),
    ([{"name": "probabilities", "parameters": {"classification": 2}}], None, "classification"),  # class_count
    ([{"name": "convergence_delta"}], {"method": "saliency"}, "'integrated_gradients' only"),
])
def test_v2_outputs_are_checked_before_the_model_runs(client, outputs, parameters, says):
    """A wrong output is a 400 before any pass: it was one after the pass had run, been counted a
    success in Triton's statistics and captured, so feedback could label a request that failed."""
    def inferred() -> int:
        return client.get("/v2/models/xor/stats").get_json()["model_stats"][0]["inference_stats"]["success"]["count"]

    before = inferred()
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}], "outputs": outputs}
    if parameters:
        body["parameters"] = parameters
    r = client.post("/v2/models/xor/infer", json=body)
    assert r.status_code == 400 and says in r.get_json()["error"], r.get_json()
    assert inferred() == before


def test_the_openapi_document_gives_each_route_its_own_schemas(client):
    """Components are keyed by class name: V1's PredictRequest (instances) replaced /predict's (inputs),
    so the document described /predict and /explain with V1's bodies, and a client built from it got 422s."""
    doc = client.get("/openapi.json").json
    schemas = doc["components"]["schemas"]

    def body_of(path: str, status: str | None = None) -> dict:
        operation = doc["paths"][path]["post"]
        content = operation["requestBody"] if status is None else operation["responses"][status]
        return schemas[content["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]

    assert {"model", "inputs"} <= set(body_of("/predict")["properties"])
    assert {"predictions", "model", "version"} <= set(body_of("/predict", "200")["properties"])
    assert {"model", "inputs", "method"} <= set(body_of("/explain")["properties"])
    assert "instances" in body_of("/v1/models/{name}:predict")["properties"]


def test_the_openapi_document_declares_the_inference_headers_as_the_server_reads_them(client):
    """flask-openapi3 drops an operation's own parameters, so the two headers every inference route
    reads were undocumented there; the schema must admit what the server takes and nothing more."""
    doc = client.get("/openapi.json").json
    declared = {(method.upper(), path): {p["name"]: p["schema"] for p in op.get("parameters", [])
                                         if p["in"] == "header"}
                for path, item in doc["paths"].items() for method, op in item.items()}
    inference = {k for k, headers in declared.items() if headers}
    assert inference == {("POST", "/predict"), ("POST", "/v1/models/{name}:predict"),
                         ("POST", "/v1/models/{name}/versions/{version}:predict"), ("POST", "/v2/models/{name}/infer"),
                         ("POST", "/v2/models/{name}/versions/{version}/infer")}
    timeout = declared[("POST", "/predict")]["X-Timeout-Microseconds"]
    body = {"model": "xor", "inputs": [[0, 1]]}

    def status(value: str) -> int:
        return client.post("/predict", json=body, headers={"X-Timeout-Microseconds": value}).status_code

    assert status(str(timeout["maximum"])) == 200
    for refused in (str(timeout["maximum"] + 1), "-1", "1.5"):
        assert status(refused) == 400, refused
    assert declared[("POST", "/v2/models/{name}/infer")]["X-Rollout-Key"] == {"type": "string"}


def test_no_two_schemas_share_a_name():
    import importlib
    import inspect
    import pkgutil

    from pydantic import BaseModel

    import service
    homes: dict[str, set[str]] = {}
    for found in pkgutil.walk_packages(service.__path__, "service."):
        if "stubs" in found.name:
            continue
        module = importlib.import_module(found.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                homes.setdefault(obj.__name__, set()).add(module.__name__)
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}


def test_a_model_without_an_input_range_still_takes_only_finite_float32_inputs(registry):
    """Without preprocessing.input_range the range was (-inf, inf): a float64 1e300 passed, became inf in
    the network's float32, and was answered (an integrated-gradients baseline too)."""
    import dataclasses

    from service.dataplane.dataplane import as_batch
    xor = registry.snapshot.get("xor")
    bare = dataclasses.replace(xor, metadata={k: v for k, v in xor.metadata.items() if k != "preprocessing"})
    largest = float(np.finfo(np.float32).max)
    assert bare.input_range == (-largest, largest)
    np.testing.assert_array_equal(as_batch(np.array([[0.0, -5e30]]), bare), np.array([[0, -5e30]], np.float32))
    for value in (1e300, -1e39, math.inf):
        with pytest.raises(ServiceError) as err:
            as_batch(np.array([[0.0, value]]), bare)
        assert err.value.status == 422, value
    from service.dataplane.diagnostics import as_baseline  # integrated gradients' start: the same bound
    for baseline in (1e300, [0.0, 1e300]):
        with pytest.raises(ServiceError) as err:
            as_baseline(baseline, bare)
        assert err.value.status == 422 and "outside" in err.value.message


def test_a_version_being_replaced_serves_on_until_its_new_file_settles(tmp_path, model_repository):
    """A loaded version whose weights file was just rewritten (or touched) was dropped at the next scan
    until the file settled: a lone version left the model with nothing serving."""
    import shutil

    shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / "1")
    registry = ModelRegistry(tmp_path, settle_seconds=30.0).load_all()
    entry = registry.snapshot.serving["xor"][1]
    os.utime(tmp_path / "xor" / "1" / "model.npz")  # as a copy over it would, just now
    registry.refresh()
    assert registry.snapshot.serving["xor"] == {1: entry}  # the loaded one, until the new file settles


def test_the_repository_api_loads_a_model_just_copied_in(tmp_path, model_repository):
    """Copy the directory, then load it (Triton's way): its files are meant to be ready. The load read
    only settled files, answered 400 'no version found', and the model served a few seconds later."""
    import shutil

    registry = ModelRegistry(tmp_path, settle_seconds=30.0, state_file=tmp_path / "state.json").load_all()
    shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / "1", copy_function=shutil.copy)  # now
    registry.set_unloaded("xor", False)
    assert sorted(registry.snapshot.serving["xor"]) == [1]


def test_a_worker_started_after_a_repository_change_catches_up_at_once(tmp_path, model_repository):
    """A worker forked from the master's snapshot after an unload served the model again until the next
    poll (never, with MODEL_POLL_SECONDS=0): the watcher took the changed state as its baseline."""
    import shutil

    from service.repository.watcher import watch
    shutil.copytree(model_repository / "xor" / "1", tmp_path / "xor" / "1")
    state = tmp_path / "state.json"
    forked = ModelRegistry(tmp_path, state_file=state).load_all()  # the master's snapshot, before the unload
    ModelRegistry(tmp_path, state_file=state).load_all().set_unloaded("xor", True)  # another process
    assert "xor" in forked.snapshot.serving
    watch(forked, 0, lambda seconds: True)  # polls off; the process stops at its first wait
    assert "xor" not in forked.snapshot.serving


def test_a_request_id_ending_in_a_newline_is_not_the_client_s():
    """re's "$" also matches before a final newline: 'abc\\n' was kept as the id, captured under it, and
    no feedback could name it (its schema refuses the newline)."""
    from service.observability.request_record import request_id
    assert request_id("abc") == "abc"
    assert request_id("abc\n") != "abc\n" and len(request_id("abc\n")) == 32


@pytest.mark.parametrize("where", ["input", "request", "output"])
def test_a_parameter_nested_a_thousand_deep_is_a_400(client, where):
    """The error quoted the client's value with repr(), which raised RecursionError at this depth
    (orjson parses up to 1,024): a 500, with a traceback in the log."""
    nest = "[" * 1000 + "0" + "]" * 1000
    params = {"input": ('{"binary_data_size": %s}', "{}", "{}"), "request": ("{}", '{"binary_data_output": %s}', "{}"),
              "output": ("{}", "{}", '{"binary_data": %s}')}[where]
    inp, req, out = (p.replace("%s", nest) for p in params)
    body = ('{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1], "parameters": '
            f'{inp}}}], "parameters": {req}, "outputs": [{{"name": "label", "parameters": {out}}}]}}')
    r = client.post("/v2/models/xor/infer", data=body, content_type="application/json")
    assert r.status_code == 400, r.data[:300]
    assert "[[[[...]]]]" in r.get_json()["error"]


def test_an_integer_baseline_beyond_a_float_is_a_422(client):
    """A scalar baseline of 10**400 reached np.asarray(float64): an OverflowError, a 500 on every
    explanation protocol (inside a list it was already a 422)."""
    huge = "1" + "0" * 400
    for path, body, status in (("/explain", '{"model": "xor", "inputs": [[0, 1]], "baseline": %s}', 422),
                               ("/v1/models/xor:explain", '{"instances": [[0, 1]], "parameters": {"baseline": %s}}',
                                400)):  # V1 answers every client error 400, as TF Serving
        r = client.post(path, data=body % huge, content_type="application/json")
        assert r.status_code == status and "beyond the range of a float" in r.get_data(as_text=True), path


def test_an_explanation_within_its_own_limit_is_not_refused_by_the_value_count(client):
    """The count of a large body's values allowed MAX_BATCH samples (8 here) of the largest model,
    though an explanation may take EXPLAIN_MAX_BATCH (64): 40 MNIST samples (373 kB) were a 413 that
    blamed MAX_BATCH, and 16 (under the count's 256 kB) were answered."""
    x = np.random.default_rng(0).random((40, 784)).round(6).tolist()
    body = json.dumps({"model": "mnist", "inputs": x, "method": "saliency"})
    assert len(body) > json_codec.SMALL_JSON
    r = client.post("/explain", data=body, content_type="application/json")
    assert r.status_code == 200, r.data[:300]
    assert np.asarray(r.get_json()["attributions"]).shape == (40, 784)


def test_grpc_checks_the_rollout_key_when_a_version_is_named(registry):
    """REST refused a rollout_key that is no string whether or not a version was named; gRPC only without one."""
    from service.dataplane.dataplane import DataPlane
    from service.grpc.servicer import InferenceServicer
    from service.grpc.stubs import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="xor", model_version="1")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([0, 1])
    request.parameters["rollout_key"].int64_param = 5
    with pytest.raises(ServiceError) as err:
        InferenceServicer(DataPlane(registry)).infer(request)
    assert err.value.status == 400 and "rollout_key" in err.value.message


def test_an_ipv6_host_is_bound_in_brackets_and_the_body_limit_fits_grpc():
    """HOST=:: made gunicorn's bind ':::8000' ("'' is not a valid port number"); a MAX_BODY_BYTES of 2 GiB
    or more made every gRPC process die at start (its message limit is a C int), restarted forever."""
    assert Settings.from_env({"HOST": "::"}).bind_address(8000) == "[::]:8000"
    assert Settings.from_env({"HOST": "[::1]"}).host == "::1"  # as getaddrinfo takes it
    assert Settings.from_env({"HOST": "[::1]"}).bind_address(8001) == "[::1]:8001"
    assert Settings.from_env({}).bind_address(8000) == "0.0.0.0:8000"
    assert Settings.from_env({"MAX_BODY_BYTES": str(2**31 - 1)}).max_body_bytes == 2**31 - 1
    with pytest.raises(ValidationError, match="less than or equal to 2147483647"):
        Settings.from_env({"MAX_BODY_BYTES": str(2**31)})


@pytest.mark.parametrize("data, expected", [
    ([0, 2**64 - 1], [[0, 2**64 - 1]]),
    ([[2**63, 1]], [[2**63, 1]]),
    ([0, 2**64], "outside the range of UINT64"),
    ([0.5, 2**64 - 1], "non-integer values"),
    ([-1, 2**64 - 1], "outside the range of UINT64"),
])
def test_uint64_json_data_is_read_exactly(data, expected):
    """NumPy reads a list mixing integers under and over 2**63 as float64, which rounded 2**64 - 1 up to
    2**64: V2 JSON refused a UINT64 value that binary tensors, gRPC and /predict took."""
    from service.protocols.v2_http import decode_input
    from service.protocols.v2_schemas import RequestInput

    inp = RequestInput(name="input", shape=[1, 2], datatype="UINT64", data=data)
    if isinstance(expected, str):
        with pytest.raises(ServiceError, match=expected):
            decode_input(inp, memoryview(b""), False)
    else:
        arr = decode_input(inp, memoryview(b""), False)
        assert arr.dtype == np.uint64 and arr.tolist() == expected
