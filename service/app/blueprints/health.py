"""``GET /healthz`` (liveness), ``GET /readyz`` (readiness) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from service.app.blueprints import dataplane, respond, settings
from service.observability import grpc_readiness, metrics
from service.protocols.schemas import Health, Readiness

health = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


@health.get("/healthz", responses={200: Health})
def healthz() -> Response:
    """Liveness: the process answers."""
    return respond(Health(status="ok"))


@health.get("/readyz", responses={200: Readiness, 503: Readiness})
def readyz() -> Response:
    """Readiness: every model version found is loaded and, with gRPC on, a gRPC process serves (503
    with the reasons otherwise)."""
    models_ready, states = dataplane().readiness()
    grpc_ready, grpc = grpc_readiness.readiness(settings().state_dir, settings().grpc_port)
    ready = models_ready and grpc_ready
    return respond(Readiness(ready=ready, models=states, grpc=grpc), 200 if ready else 503)


@health.get("/metrics", doc_ui=False)
def prometheus_metrics() -> Response:
    """Prometheus exposition text, summed over all gunicorn workers."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
