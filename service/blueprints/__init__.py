"""Blueprints, one per area: inference (/predict, /gradcheck), models (metadata), health (probes, metrics)."""

from __future__ import annotations

from flask import Response, current_app
from pydantic import BaseModel

from service.config import Settings
from service.registry import ModelRegistry


def registry() -> ModelRegistry:
    return current_app.extensions["model_registry"]


def settings() -> Settings:
    return current_app.extensions["settings"]


def respond(body: BaseModel, status: int = 200) -> Response:
    """A validated response model, serialised by pydantic-core (so every response is a schema instance)."""
    return Response(body.model_dump_json(), status=status, mimetype="application/json")
