"""Triton's model configuration and statistics extensions of the Open Inference Protocol.

``GET /v2/models/{m}[/versions/{v}]/config`` gives the model's configuration in the JSON form of
Triton's ``ModelConfig``, with the fields that hold here: the batch limit, the input and output
tensors with their per-sample dims and data types, the version policy, one CPU instance per
worker; no ``dynamic_batching`` (requests run as they come). ``GET /v2/models[/{m}[/versions/{v}]]
/stats`` gives Triton's statistics per serving version, summed over all workers
(``service/statistics.py``). Errors are the protocol's ``{"error": "..."}`` (``service/blueprints/v2.py``).
"""

from __future__ import annotations

from typing import Any

from flask import Response, g
from flask_openapi3 import APIBlueprint, Tag

from model.repository import WEIGHTS_FILE
from service.blueprints import dataplane, respond_json, settings
from service.dataplane import TensorSpec, signature
from service.policy import VersionPolicy
from service.schemas import ModelPath, ProtocolError, VersionPath
from service.schemas_v2 import ModelConfig, ModelStatsResponse
from service.statistics import VersionStats

PLATFORM = "numpy"  # as the model metadata says
TRITON_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}
ERRORS = {status: ProtocolError for status in (400, 404, 503)}

v2_extensions = APIBlueprint("v2_extensions", __name__, abp_tags=[Tag(name="open inference protocol (v2)")])


# -- model configuration ------------------------------------------------------------------------------
def model_config(name: str, version: int | None) -> Response:
    g.model = name
    plane = dataplane()
    entry = plane.resolve(name, version)
    inputs, outputs = signature(entry)
    return respond_json({
        "name": name, "platform": PLATFORM, "version_policy": triton_policy(plane.version_policy(name)),
        "max_batch_size": plane.limits.max_batch,
        "input": [tensor_config(t) | {"format": "FORMAT_NONE"} for t in inputs],
        "output": [tensor_config(t) for t in outputs],
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": settings().workers}],
        "default_model_filename": WEIGHTS_FILE,
        "model_transaction_policy": {"decoupled": False}, "response_cache": {"enable": False}})


def tensor_config(spec: TensorSpec) -> dict[str, Any]:
    """Triton's tensor config: dims without the batch dimension; a scalar per sample is dims [1]
    reshaped to [] (as the label tensor comes back with shape [batch])."""
    dims = list(spec.shape[1:])
    config: dict[str, Any] = {"name": spec.name, "data_type": TRITON_TYPES[spec.datatype], "dims": dims or [1]}
    if not dims:
        config["reshape"] = {"shape": []}
    return config


def triton_policy(policy: VersionPolicy) -> dict[str, dict[str, Any]]:
    if policy.kind == "latest":
        return {"latest": {"num_versions": policy.count}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"all": {}}


@v2_extensions.get("/v2/models/<name>/config", responses={200: ModelConfig, **ERRORS})
def config(path: ModelPath) -> Response:
    """The configuration of the newest serving version, in Triton's JSON form."""
    return model_config(path.name, None)


@v2_extensions.get("/v2/models/<name>/versions/<version>/config", responses={200: ModelConfig, **ERRORS})
def version_config(path: VersionPath) -> Response:
    """One version's configuration."""
    return model_config(path.name, int(path.version))


# -- statistics ---------------------------------------------------------------------------------------
def model_stats(name: str | None, version: int | None) -> Response:
    g.model = name
    return respond_json({"model_stats": [model_stat(n, v, s) for n, v, s in dataplane().statistics(name, version)]})


def model_stat(name: str, version: int, s: VersionStats) -> dict[str, Any]:
    runs = s.successes  # one model execution per successful request: no server-side batching

    def stat(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    return {"name": name, "version": str(version), "last_inference": s.last_inference_ms,
            "inference_count": s.samples, "execution_count": runs,
            "inference_stats": {
                "success": stat(runs, s.ns["success"]), "fail": stat(s.failures, s.ns["fail"]),
                "queue": stat(runs, 0),  # no queue: a request runs at once on its worker
                "compute_input": stat(runs, s.ns["compute_input"]), "compute_infer": stat(runs, s.ns["compute_infer"]),
                "compute_output": stat(runs, s.ns["compute_output"]),
                "cache_hit": stat(0, 0), "cache_miss": stat(0, 0)},  # no response cache
            "batch_stats": []}


@v2_extensions.get("/v2/models/stats", responses={200: ModelStatsResponse, **ERRORS})
def all_stats() -> Response:
    """Every serving version's statistics, summed over all workers."""
    return model_stats(None, None)


@v2_extensions.get("/v2/models/<name>/stats", responses={200: ModelStatsResponse, **ERRORS})
def stats(path: ModelPath) -> Response:
    """The statistics of the model's serving versions."""
    return model_stats(path.name, None)


@v2_extensions.get("/v2/models/<name>/versions/<version>/stats", responses={200: ModelStatsResponse, **ERRORS})
def version_stats(path: VersionPath) -> Response:
    """One version's statistics."""
    return model_stats(path.name, int(path.version))
