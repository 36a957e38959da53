"""Triton's model configuration and statistics extensions of the Open Inference Protocol, over REST.

``GET /v2/models/{m}[/versions/{v}]/config`` gives the model's configuration in the JSON form of
Triton's ``ModelConfig``; ``GET /v2/models[/{m}[/versions/{v}]]/stats`` gives Triton's statistics per
serving version, summed over all workers. Both answers are made transport-free in
``service/protocols/v2_extensions.py``, which the gRPC codec shares. Errors are the protocol's
``{"error": "..."}`` (``service/app/blueprints/v2.py``).
"""

from __future__ import annotations

from flask import Response, g
from flask_openapi3 import APIBlueprint, Tag

from service.app.blueprints import dataplane, respond_json, settings
from service.protocols import v2_extensions as extensions
from service.protocols.schemas import ModelPath, ProtocolError, VersionPath
from service.protocols.v2_schemas import ModelConfig, ModelStatsResponse

ERRORS = {status: ProtocolError for status in (400, 404, 503)}

v2_extensions = APIBlueprint("v2_extensions", __name__, abp_tags=[Tag(name="open inference protocol (v2)")])


# -- model configuration ------------------------------------------------------------------------------
def model_config(name: str, version: int | None) -> Response:
    g.model = name
    return respond_json(extensions.model_config(dataplane(), name, version, settings().workers))


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
    return respond_json(extensions.model_stats(dataplane(), name, version))


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
