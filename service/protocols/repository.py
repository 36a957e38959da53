"""Triton's model repository operations, transport-free: the REST blueprint (``service/app/blueprints/repository.py``)
and the gRPC codec (``service/grpc/repository.py``) both call these.

``authorize`` checks an ``Authorization`` value against ``ADMIN_TOKEN`` (401 missing, 403 wrong,
compared in constant time and never logged); ``index`` lists what is on record; ``load`` and
``unload`` change what every process serves through the registry's shared state (``repository/shared_state.py``).
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.dataplane.dataplane import DataPlane
from service.errors import ServiceError, not_found, quote


def authorize(token: SecretStr, authorization: str, what: str = "the repository API",
              setting: str = "ADMIN_TOKEN") -> None:
    """A bearer token's check: 401 without one, 403 for a wrong one (compared in constant time, never logged)."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ServiceError(401, "unauthorized", f"{what} needs 'Authorization: Bearer <{setting}>'",
                           headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise ServiceError(403, "forbidden", f"wrong token for {what}")


def model_dir_exists(plane: DataPlane, name: str) -> None:
    if not (plane.registry.root / name).is_dir():
        raise not_found(f"no model {quote(name)} in the repository")


def load(plane: DataPlane, name: str) -> None:
    """Serve the model again (after an unload) and rescan it now; 400 if no version of it loads."""
    model_dir_exists(plane, name)
    registry = plane.registry
    registry.set_unloaded(name, False)
    snap = registry.snapshot
    if not snap.models.get(name):
        reasons = "; ".join(f"{k}: {v}" for k, v in snap.failures().items() if k.startswith(f"{name}/"))
        raise ServiceError(400, "load_failed", f"failed to load {name!r}: {reasons or 'no version found'}")


def unload(plane: DataPlane, name: str) -> None:
    """Stop serving the model in every process (its files stay; load serves it again)."""
    model_dir_exists(plane, name)
    plane.registry.set_unloaded(name, True)


def index(plane: DataPlane, only_ready: bool = False) -> list[dict[str, str]]:
    """Every model and version on record with its state (READY, or UNAVAILABLE and why); with
    ``only_ready``, what serves only."""
    rows = plane.registry.snapshot.index()
    return [r for r in rows if r["state"] == "READY"] if only_ready else rows
