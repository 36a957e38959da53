"""A model's rollout through the repository API (``docs/rollouts.md``): canary, shadow, promote, roll back.

``GET``, ``PUT`` and ``DELETE /v2/repository/models/{m}/rollout``, ``POST .../rollout/promote`` and
``.../rollout/rollback``. Like the rest of the repository API they need ``Authorization: Bearer
<ADMIN_TOKEN>`` and exist only with an ``ADMIN_TOKEN``. Every answer is the rollout in force and its
evidence, as ``GET /models/{m}`` shows them. The rules are ``service/protocols/rollouts.py``'s.
"""

from __future__ import annotations

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import Field

from service.app.blueprints import dataplane, respond_json, settings
from service.app.blueprints.repository import RepositoryPath
from service.protocols import json_codec
from service.protocols import repository as repository_ops
from service.protocols import rollouts as rollout_ops
from service.protocols.schemas import ProtocolError, RolloutState, StrictModel
from service.repository.rollout import RolloutSpec


class PromoteRequest(StrictModel):
    version: int | None = Field(None, ge=1, strict=True, description="The version to promote; the only canary "
                                "(or the shadow) if omitted")


ERRORS = {status: ProtocolError for status in (400, 401, 403, 404, 409)}  # /v2: a client's mistake is a 400
OK = {200: RolloutState, **ERRORS}
rollouts = APIBlueprint("rollouts", __name__, abp_tags=[Tag(name="model repository (admin)")],
                        abp_security=[{"bearer": []}])
PATH = "/v2/repository/models/<model:name>/rollout"


@rollouts.before_request
def require_token() -> None:
    repository_ops.authorize(settings().admin_token, request.headers.get("Authorization", ""))


@rollouts.get(PATH, responses=OK)
def read(path: RepositoryPath) -> Response:
    """The model's rollout in force and the evidence so far."""
    g.model = path.name
    return respond_json(rollout_ops.describe(dataplane(), path.name))


@rollouts.put(PATH, responses=OK)
def put(path: RepositoryPath, body: RolloutSpec) -> Response:
    """Set the model's rollout for every process (409 if a version it names is missing or does not load)."""
    g.model = path.name
    return respond_json(rollout_ops.set_rollout(dataplane(), path.name, body))


@rollouts.delete(PATH, responses=OK)
def delete(path: RepositoryPath) -> Response:
    """Clear the rollout: requests naming no version go to the newest serving version."""
    g.model = path.name
    return respond_json(rollout_ops.clear(dataplane(), path.name))


@rollouts.post(f"{PATH}/promote", responses=OK)
def promote(path: RepositoryPath) -> Response:
    """Move all traffic to the canary (or the shadow), which becomes the primary."""
    g.model = path.name
    raw = request.get_data()
    version = PromoteRequest.model_validate(json_codec.loads(raw)).version if raw.strip() else None
    return respond_json(rollout_ops.promote(dataplane(), path.name, version))


@rollouts.post(f"{PATH}/rollback", responses=OK)
def rollback(path: RepositoryPath) -> Response:
    """Move all traffic back to the primary: the canaries and the shadow are removed."""
    g.model = path.name
    return respond_json(rollout_ops.roll_back(dataplane(), path.name))
