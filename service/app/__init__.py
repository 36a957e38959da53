"""The Flask app: ``create_app`` builds it (flaskr's factory), with a blueprint per area of the API,
one error handler, the request hooks, and the inference middleware in front (``inference_middleware.py``)."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect
from flask_openapi3 import Info, OpenAPI

from service.app.blueprints import ModelNameConverter, VersionConverter, feedback
from service.app.blueprints.health import health
from service.app.blueprints.inference import inference
from service.app.blueprints.models import models
from service.app.blueprints.page import ui
from service.app.blueprints.repository import repository
from service.app.blueprints.rollouts import rollouts
from service.app.blueprints.v1 import v1
from service.app.blueprints.v2 import v2
from service.app.blueprints.v2_extensions import v2_extensions
from service.app.error_handlers import register_error_handlers, validation_error_response
from service.app.hooks import StrictJSONRequest, after, before, teardown
from service.app.inference_middleware import InferenceMiddleware
from service.app.json_provider import ORJSONProvider
from service.app.openapi import ServiceAPI
from service.config import Settings
from service.dataplane.dataplane import DataPlane
from service.dataplane.diagnostics import Diagnostics
from service.dataplane.feedback import Feedback
from service.observability import metrics
from service.repository.registry import ModelRegistry
from service.repository.version_policy import VersionPolicy


def create_app(config: Settings | dict[str, Any] | None = None, model_registry: ModelRegistry | None = None) -> OpenAPI:
    """Build the app. ``config`` overrides the environment's settings; models load here, once."""
    cfg = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    # static_folder=None: the page's blueprint serves /static (service/app/blueprints/page.py)
    app = ServiceAPI(__name__, static_folder=None, info=Info(title="numpy-nets model server", version="1"),
                     doc_prefix="/docs",
                     security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
                     validation_error_status=422, validation_error_callback=validation_error_response)
    app.request_class = StrictJSONRequest
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json = ORJSONProvider(app)
    app.extensions["settings"] = cfg
    reg = model_registry or ModelRegistry(
        cfg.model_dir, VersionPolicy.parse(cfg.version_policy), cfg.model_settle_seconds,
        cfg.state_dir / "repository.json" if cfg.state_dir else None).load_all()
    for name in reg.snapshot.models:  # a zero sample per model, so "no failures" is visible as 0
        metrics.LOAD_FAILURES.labels(name)
    app.extensions["model_registry"] = reg
    plane = app.extensions["dataplane"] = DataPlane.from_settings(reg, cfg)
    app.extensions["diagnostics"] = Diagnostics(plane, cfg.state_dir)
    app.extensions["feedback"] = Feedback(plane)
    register_error_handlers(app)
    app.url_map.converters.update(model=ModelNameConverter, version=VersionConverter)
    for bp in (inference, feedback.blueprint(cfg.feedback_token is not None), models, health, v2, v2_extensions, v1):
        app.register_api(bp)
    app.register_blueprint(ui)  # the page at / (plain Flask: not part of the API document)
    if cfg.admin_token is not None:  # the repository API exists only with a token (docs/operations.md)
        app.register_api(repository)
        app.register_api(rollouts)

    @app.get("/openapi.json", doc_ui=False)
    def openapi_json() -> Response:
        return app.json.response(app.api_doc)

    @app.get("/docs", doc_ui=False)
    def docs() -> Response:
        return redirect("/docs/swagger", code=302)

    app.before_request(before)
    app.after_request(after)
    app.teardown_request(teardown)  # a server span (tracing on) is always ended
    # POST /predict's common case in front of Flask, everything else through it (service/app/inference_middleware.py)
    app.wsgi_app = InferenceMiddleware(app.wsgi_app, plane, cfg.max_body_bytes)
    return app
