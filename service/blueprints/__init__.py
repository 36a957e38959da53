"""Blueprints, one per area: inference (/predict, /gradcheck), models (metadata), health (probes, metrics).

Each is a thin codec: it decodes a request, asks the data plane (``service/dataplane.py``), and
encodes the answer. No serving rule lives in a blueprint.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app
from pydantic import BaseModel

from service import jsonio
from service.dataplane import DataPlane


def dataplane() -> DataPlane:
    return current_app.extensions["dataplane"]


def respond(body: BaseModel, status: int = 200) -> Response:
    """A validated response model, serialised by pydantic-core (metadata and health: small, rare)."""
    return Response(body.model_dump_json(), status=status, mimetype="application/json")


def respond_json(body: Any, status: int = 200) -> Response:
    """A hot-path body serialised straight from Python and NumPy by orjson, not re-validated: its
    shape is the documented schema's by construction, and the integration tests check it is."""
    return Response(jsonio.dumps(body), status=status, mimetype="application/json")
