"""The service's one error type (no Flask import, so the registry can raise it too)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error answered to the client with ``status`` and a stable machine-readable ``code``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def not_found(message: str) -> ServiceError:
    return ServiceError(404, "not_found", message)


def unavailable(message: str, reasons: dict[str, str]) -> ServiceError:
    """A 503: the model version exists but failed to load; ``reasons`` maps ``"<version>"`` to why."""
    return ServiceError(503, "model_unavailable", message,
                        [{"loc": "version", "message": f"version {version}: {reason}", "type": "model_unavailable"}
                         for version, reason in reasons.items()])


def invalid(loc: str, message: str) -> ServiceError:
    """A 422 for one field, in the same shape as pydantic's errors."""
    return ServiceError(422, "validation_error", f"{loc}: {message}",
                        [{"loc": loc, "message": message, "type": "value_error"}])


def too_large(status: int, code: str, loc: str, message: str, limit: int, got: int) -> ServiceError:
    """A limit was exceeded: ``details`` names the field, the limit and what was sent."""
    return ServiceError(status, code, message,
                        [{"loc": loc, "message": message, "type": "limit_exceeded", "limit": limit, "got": got}])
