"""Metadata, health, metrics and the OpenAPI document of the running service."""

from __future__ import annotations

import itertools
import os
import re

import pytest

from tests.conftest import served_version
from training.recipes import RECIPES


def test_models_list(base_url, http):
    body = http.get(f"{base_url}/models").json()
    names = [m["name"] for m in body["models"]]
    assert names == ["digits", "mnist", "xor"]


def mlp_parameters(name: str, inputs: int, outputs: int) -> int:
    """Weights and biases of the shipped model's MLP, from its recipe (training/recipes.py)."""
    sizes = [inputs, *RECIPES[name].hidden, outputs]
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


@pytest.mark.parametrize("name,shape,labels,params", [
    ("xor", [2], ["0", "1"], mlp_parameters("xor", 2, 2)),
    ("digits", [5, 5], ["1", "2", "3", "4", "5"], mlp_parameters("digits", 25, 5)),
    ("mnist", [28, 28], [str(d) for d in range(10)], mlp_parameters("mnist", 784, 10)),
])
def test_model_metadata(base_url, http, name, shape, labels, params):
    v = http.get(f"{base_url}/models/{name}").json()["versions"][0]
    assert v["input_shape"] == shape and v["labels"] == labels
    assert v["parameter_count"] == params
    assert v["architecture"]["layers"][0]["type"] == "dense"
    assert re.fullmatch(r"[0-9a-f]{64}", v["sha256"])
    assert v["loaded_at"] and v["created_at"]
    assert v["metrics"]["train_accuracy"] > 0.9


def test_health_and_readiness(base_url, http):
    assert http.get(f"{base_url}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{base_url}/readyz")
    assert ready.status_code == 200
    served = {f"{name}/{served_version(name).name}": "ready" for name in ("digits", "mnist", "xor")}
    body = ready.json()
    grpc = body.pop("grpc")
    assert body == {"ready": True, "models": served}
    # Both our targets run python -m service with gRPC on; a SERVICE_URL may run without it (null).
    if grpc is not None or not os.environ.get("SERVICE_URL"):
        assert re.fullmatch(r"serving \([1-9][0-9]* process(es)?\)", str(grpc)), grpc


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_across_workers(base_url, http):
    before = http.get(f"{base_url}/metrics").text
    for _ in range(6):  # spread over both workers
        r = http.post(f"{base_url}/predict", json={"model": "digits", "inputs": [[0] * 25] * 3})
        assert r.status_code == 200
    assert http.post(f"{base_url}/predict", json={"model": "digits", "inputs": [[2] * 25]}).status_code == 422
    after = http.get(f"{base_url}/metrics")
    assert after.headers["Content-Type"].startswith("text/plain")
    text = after.text
    labels = {"endpoint": "/predict", "model": "digits"}
    assert counter(text, "nn_requests_total", status="200", **labels) - \
        counter(before, "nn_requests_total", status="200", **labels) == 6
    assert counter(text, "nn_requests_total", status="422", **labels) - \
        counter(before, "nn_requests_total", status="422", **labels) == 1
    batch_sum = counter(text, "nn_batch_size_sum", model="digits", kind="request") - \
        counter(before, "nn_batch_size_sum", model="digits", kind="request")
    assert batch_sum == 18
    assert counter(text, "nn_request_duration_seconds_count", **labels) > 0
    assert counter(text, "nn_model_load_failures_total", model="mnist") == 0


def test_openapi_document_comes_from_the_schemas(base_url, http):
    doc = http.get(f"{base_url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/predict", "/gradcheck", "/models", "/models/{name}", "/healthz", "/readyz"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"PredictRequest", "PredictResponse", "GradcheckRequest", "GradcheckResponse",
            "ErrorResponse"} <= set(schemas)
    assert schemas["PredictRequest"]["additionalProperties"] is False
    predict = doc["paths"]["/predict"]["post"]
    assert {"200", "400", "404", "413", "415", "422", "500", "503", "504"} == set(predict["responses"])
    assert set(doc["paths"]["/healthz"]["get"]["responses"]) == {"200"}
    assert set(doc["paths"]["/models/{name}"]["get"]["responses"]) == {"200", "404", "422"}


def test_openapi_document_is_valid_openapi(base_url, http):
    openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
    openapi_spec_validator.validate(http.get(f"{base_url}/openapi.json").json())


def test_interactive_docs(base_url, http):
    r = http.get(f"{base_url}/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
