"""Triton's model configuration and statistics extensions, transport-free: the REST blueprint
(``service/app/blueprints/v2_extensions.py``) and the gRPC codec (``service/grpc/extensions.py``)
both answer with these dicts, REST as JSON and gRPC parsed into Triton's messages.

The configuration is Triton's ``ModelConfig`` (model_config.proto) in its JSON form, with the fields
that hold here: the batch limit, the input and output tensors with their per-sample dims and data
types, the version policy, one CPU instance per worker, and ``dynamic_batching`` when the process
answering batches (its data plane's runner: the gunicorn worker's for REST, the gRPC process's for
gRPC, so each transport reports the batching it does; ``BATCHING``, ``GRPC_BATCHING``). The statistics are
Triton's ``ModelStatistics`` per serving version, summed over all processes (``service/observability/statistics.py``).
"""

from __future__ import annotations

from typing import Any

from model.repository import WEIGHTS_FILE
from service.dataplane.dataplane import DataPlane, TensorSpec, signature
from service.observability.statistics import VersionStats
from service.repository.version_policy import VersionPolicy

# What both V2 front-ends say of the server and its models (REST adds binary_tensor_data, its own).
SERVER_NAME, SERVER_VERSION = "numpy-nets", "1"
EXTENSIONS = ("model_configuration", "statistics")
PLATFORM = "numpy"  # the model metadata's and the configuration's platform
TRITON_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def model_config(plane: DataPlane, name: str, version: int | None, instances: int) -> dict[str, Any]:
    """The configuration of a version (the newest serving one when ``version`` is None); ``instances``
    is the instance group's count (the workers)."""
    entry = plane.resolve(name, version)
    inputs, outputs = signature(entry)
    batching = plane.runner.describe([entry])
    dynamic = {"dynamic_batching": {"preferred_batch_size": batching["preferred_batch_size"],
                                    "max_queue_delay_microseconds": batching["max_queue_delay_microseconds"]}} \
        if batching["enabled"] else {}
    return {
        "name": name, "platform": PLATFORM, "version_policy": triton_policy(plane.version_policy(name)),
        "max_batch_size": plane.limits.max_batch,
        "input": [tensor_config(t) | {"format": "FORMAT_NONE"} for t in inputs],
        "output": [tensor_config(t) for t in outputs],
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": instances}],
        "default_model_filename": WEIGHTS_FILE,
        "model_transaction_policy": {"decoupled": False}, "response_cache": {"enable": False}, **dynamic}


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


def model_stats(plane: DataPlane, name: str | None, version: int | None) -> dict[str, Any]:
    """Every serving version's statistics (of one model, or of one version of it)."""
    return {"model_stats": [model_stat(n, v, s) for n, v, s in plane.statistics(name, version)]}


def model_stat(name: str, version: int, s: VersionStats) -> dict[str, Any]:
    runs = s.successes  # one execution per successful request (the batcher's merged runs are not counted apart)

    def stat(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    return {"name": name, "version": str(version), "last_inference": s.last_inference_ms,
            "inference_count": s.samples, "execution_count": runs,
            "inference_stats": {
                "success": stat(runs, s.ns["success"]), "fail": stat(s.failures, s.ns["fail"]),
                "queue": stat(runs, 0),  # not measured: the batcher's wait is inside compute_infer
                "compute_input": stat(runs, s.ns["compute_input"]), "compute_infer": stat(runs, s.ns["compute_infer"]),
                "compute_output": stat(runs, s.ns["compute_output"]),
                "cache_hit": stat(0, 0), "cache_miss": stat(0, 0)},  # no response cache
            "batch_stats": []}
