"""Blueprints, one per area: inference (/predict, /gradcheck), models (metadata), health (probes, metrics).

Each is a thin codec: it decodes a request, asks the data plane (``service/dataplane/dataplane.py``), and
encodes the answer. No serving rule lives in a blueprint.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Response, current_app
from pydantic import BaseModel
from werkzeug.routing import BaseConverter

from model.repository import NAME_PATTERN
from service.config import Settings
from service.dataplane.dataplane import DataPlane
from service.dataplane.diagnostics import Diagnostics
from service.protocols import json_codec


def dataplane() -> DataPlane:
    return current_app.extensions["dataplane"]


def diagnostics() -> Diagnostics:
    return current_app.extensions["diagnostics"]


def settings() -> Settings:
    return current_app.extensions["settings"]


def respond(body: BaseModel, status: int = 200) -> Response:
    """A validated response model, serialised by pydantic-core (metadata and health: small, rare)."""
    return Response(body.model_dump_json(), status=status, mimetype="application/json")


def respond_json(body: Any, status: int = 200) -> Response:
    """A hot-path body serialised straight from Python and NumPy by orjson, not re-validated: its
    shape is the documented schema's by construction, and the integration tests check it is."""
    return Response(json_codec.dumps(body), status=status, mimetype="application/json")


def empty(status: int = 200) -> Response:
    return Response(status=status)


def parses_own_body(path_model):
    """For views of protocols whose bodies are not plain JSON objects (V2's JSON-then-bytes, V1's
    bodies sent with any content type): the signature documents the path and body models for the
    OpenAPI document; at run time the view gets the validated path and reads the body itself."""
    def decorate(func):
        @functools.wraps(func)
        def view(**path_values):
            return func(path=path_model.model_validate(path_values), body=None)
        view.__delay_validate_request__ = True  # flask-openapi3: do not parse and validate the body
        return view
    return decorate


class ModelNameConverter(BaseConverter):
    """``<model:name>``: the characters of a model name only, so ``/v1/models/mnist:predict`` is never
    read as the model ``mnist:predict`` by the ``/v1/models/<name>`` route."""

    regex = NAME_PATTERN


class VersionConverter(BaseConverter):
    """``<version:version>``: digits only (``/versions/1:predict`` is version 1, then the verb)."""

    regex = r"[0-9]+"
