"""``GET /models`` and ``GET /models/<name>``: what is loaded, and everything known about it."""

from __future__ import annotations

from flask import Response, g
from flask_openapi3 import APIBlueprint, Tag

from service.app.blueprints import dataplane, respond
from service.protocols.schemas import ErrorResponse, ModelInfo, ModelList, ModelPath

models = APIBlueprint("models", __name__, abp_tags=[Tag(name="models")])


@models.get("/models", responses={200: ModelList})
def list_models() -> Response:
    """Every model with its versions and metadata."""
    plane = dataplane()
    return respond(ModelList(models=[ModelInfo.model_validate(plane.describe(name)) for name in plane.model_names()]))


@models.get("/models/<name>", responses={200: ModelInfo, 404: ErrorResponse, 422: ErrorResponse})
def get_model(path: ModelPath) -> Response:
    """One model's versions: input shape, labels, architecture, parameter count, metrics, SHA-256."""
    g.model = path.name
    return respond(ModelInfo.model_validate(dataplane().describe(path.name)))
