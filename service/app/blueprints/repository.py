"""Triton's model repository API: list what is on disk and load or unload models, while serving.

``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load`` and ``.../unload``. They
change what the server serves, so they need ``Authorization: Bearer <ADMIN_TOKEN>``; without an
``ADMIN_TOKEN`` in the environment the API is off: its routes are not registered (404) and not in
the OpenAPI document. A missing token is a
401, a wrong one a 403 (compared in constant time, never logged). A change made through any worker
reaches every worker within a second (``service/repository/shared_state.py``). Errors are the Open Inference
Protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Annotated

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import Field, RootModel

from service.app.blueprints import dataplane, empty, respond_json, settings
from service.protocols import json_codec
from service.protocols import repository as repository_ops
from service.protocols.schemas import ModelName, ProtocolError, StrictModel


class RepositoryModel(StrictModel):
    name: str
    version: str | None = None
    state: Annotated[str, Field(description="READY or UNAVAILABLE")]
    reason: str


class RepositoryIndex(RootModel[list[RepositoryModel]]):
    pass


class IndexRequest(StrictModel):
    ready: bool | None = Field(None, strict=True, description="true: only what serves")


class RepositoryPath(StrictModel):
    name: ModelName


ERRORS = {status: ProtocolError for status in (400, 401, 403, 404)}
repository = APIBlueprint("repository", __name__, abp_tags=[Tag(name="model repository (admin)")],
                          abp_security=[{"bearer": []}])


@repository.before_request
def require_token() -> None:
    repository_ops.authorize(settings().admin_token, request.headers.get("Authorization", ""))


@repository.post("/v2/repository/index", responses={200: RepositoryIndex, **ERRORS})
def index() -> Response:
    """Every model and version on disk, with its state (READY, or UNAVAILABLE and why)."""
    raw = request.get_data()
    only_ready = IndexRequest.model_validate(json_codec.loads(raw)).ready if raw.strip() else None
    return respond_json(repository_ops.index(dataplane(), bool(only_ready)))


@repository.post("/v2/repository/models/<model:name>/load", responses={200: None, **ERRORS})
def load(path: RepositoryPath) -> Response:
    """Serve the model again (after an unload) and rescan it now; 400 if no version of it loads."""
    g.model = path.name
    repository_ops.load(dataplane(), path.name)
    return empty()


@repository.post("/v2/repository/models/<model:name>/unload", responses={200: None, **ERRORS})
def unload(path: RepositoryPath) -> Response:
    """Stop serving the model in every worker (its files stay; load serves it again)."""
    g.model = path.name
    repository_ops.unload(dataplane(), path.name)
    return empty()
