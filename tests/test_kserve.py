"""deploy/kserve/, checked offline and strictly: every field against KServe's own generated API models
(the kserve wheel's ``kserve.models``, the same OpenAPI the InferenceService CRD is generated from),
and every embedded Kubernetes object (container, metadata) against the Kubernetes schemas."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")
MODELS_DIR = Path(os.environ.get("KSERVE_MODELS", ROOT / ".venv" / "kserve-models"))
MANIFESTS = {"servingruntime.yaml": "V1alpha1ServingRuntime", "inferenceservice-v2.yaml": "V1beta1InferenceService",
             "inferenceservice-v1.yaml": "V1beta1InferenceService",
             "servingruntime-grpc.yaml": "V1alpha1ServingRuntime",
             "inferenceservice-grpc-v2.yaml": "V1beta1InferenceService"}


@pytest.fixture(scope="module")
def kserve_models():
    """``kserve.models`` without running ``kserve/__init__`` (which needs kserve's whole server stack)."""
    if not (MODELS_DIR / "kserve" / "models").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"KServe's API models are missing from {MODELS_DIR}: run make .venv/.dev")
        pytest.skip(f"no KServe API models in {MODELS_DIR} (make .venv/.dev installs them)")
    saved = {k: v for k, v in sys.modules.items() if k == "kserve" or k.startswith("kserve.")}
    package = types.ModuleType("kserve")
    package.__path__ = [str(MODELS_DIR / "kserve")]
    sys.modules["kserve"] = package
    import kserve.models

    yield kserve.models
    for name in [k for k in sys.modules if k == "kserve" or k.startswith("kserve.")]:
        del sys.modules[name]
    sys.modules.update(saved)


# Core Kubernetes types met inside KServe objects, checked by embedding them in a Pod.
POD_EMBEDDING = {
    "V1ObjectMeta": lambda v: {"metadata": {**v, "name": v.get("name", "x")}, "spec": {"containers": [{"name": "c"}]}},
    "V1Container": lambda v: {"metadata": {"name": "x"}, "spec": {"containers": [v]}},
    "V1Volume": lambda v: {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}], "volumes": [v]}},
    "V1PodSecurityContext": lambda v: {"metadata": {"name": "x"},
                                       "spec": {"containers": [{"name": "c"}], "securityContext": v}},
}


def check(value, type_name: str, where: str, models) -> list[str]:
    """Errors of ``value`` against a KServe model type name (strict: unknown fields are errors)."""
    if type_name in ("str", "int", "bool", "float", "object", "datetime"):
        expected = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
                    "datetime": str}[type_name]
        return [] if isinstance(value, expected) else [f"{where}: expected {type_name}, got {value!r}"]
    if (m := re.fullmatch(r"list\[(.+)\]", type_name)):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, item in enumerate(value) for e in check(item, m.group(1), f"{where}[{i}]", models)]
    if (m := re.fullmatch(r"dict\(str, (.+)\)", type_name)):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, item in value.items() for e in check(item, m.group(1), f"{where}.{k}", models)]
    if type_name in POD_EMBEDDING:
        pod = {"apiVersion": "v1", "kind": "Pod", **POD_EMBEDDING[type_name](value)}
        try:
            kubernetes_validate.validate(pod, "1.37.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{where}: {exc}"]
        return []
    model = getattr(models, type_name, None)
    if model is None:
        return [f"{where}: type {type_name} is not checked here (add it to POD_EMBEDDING)"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: unknown field of {type_name}")
        else:
            errors += check(item, model.openapi_types[by_json[key]], f"{where}.{key}", models)
    return errors


@pytest.mark.parametrize("name", MANIFESTS)
def test_kserve_manifest_is_valid(kserve_models, name):
    doc = yaml.safe_load((ROOT / "deploy" / "kserve" / name).read_text())
    assert check(doc, MANIFESTS[name], name, kserve_models) == []


@pytest.mark.parametrize("mutation", [
    lambda d: d["spec"]["predictor"]["model"].update(protocolVerison="v2"),
    lambda d: d["spec"]["predictor"].update(minReplicas="two"),
    lambda d: d["spec"]["predictor"].update(containers=[{"name": "c", "imagee": "x"}]),
])
def test_the_check_catches_mistakes(kserve_models, mutation):
    doc = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice-v2.yaml").read_text())
    mutation(doc)
    assert check(doc, "V1beta1InferenceService", "isvc", kserve_models)


def test_runtime_matches_the_image_and_the_services(repo_root):
    runtime = yaml.safe_load((repo_root / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 8000 and "EXPOSE 8000" in (repo_root / "Dockerfile").read_text()
    assert container["securityContext"]["runAsUser"] == 10001
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2"}
    for proto in ("v1", "v2"):
        isvc = yaml.safe_load((repo_root / "deploy" / "kserve" / f"inferenceservice-{proto}.yaml").read_text())
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == proto
        assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]


def test_grpc_runtime_matches_the_image_and_its_service(repo_root):
    """KServe routes a grpc-v2 predictor to its container's one port, named h2c: the server's GRPC_PORT."""
    runtime = yaml.safe_load((repo_root / "deploy" / "kserve" / "servingruntime-grpc.yaml").read_text())
    rest = yaml.safe_load((repo_root / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert "EXPOSE 8000 8001" in (repo_root / "Dockerfile").read_text()
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    # both probes over HTTP: a gRPC health check takes a call slot, refused when GRPC_MAX_CALLS are busy
    # (/v2/health/ready says whether the gRPC processes serve too; tests/test_deploy.py)
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert container["securityContext"] == rest["spec"]["containers"][0]["securityContext"]
    assert container["image"] == rest["spec"]["containers"][0]["image"]
    assert runtime["spec"]["supportedModelFormats"] == rest["spec"]["supportedModelFormats"]
    isvc = yaml.safe_load((repo_root / "deploy" / "kserve" / "inferenceservice-grpc-v2.yaml").read_text())
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "grpc-v2"
