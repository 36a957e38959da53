"""The Flask application factory: the blueprints, one error handler, a log line per request."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Request, Response, g, redirect, request
from flask_openapi3 import Info, OpenAPI

from service import metrics
from service.blueprints.health import health
from service.blueprints.inference import inference
from service.blueprints.models import models
from service.config import Settings
from service.errors import register_error_handlers, validation_error_response
from service.exceptions import ServiceError
from service.jsonio import ORJSONProvider
from service.registry import ModelRegistry

log = logging.getLogger("service.requests")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ServiceAPI(OpenAPI):
    """flask-openapi3, with its generated document corrected to describe this server exactly.

    Two things it generates do not hold here: ``components.securitySchemes`` is ``null`` when
    there are none (invalid OpenAPI), and operations that declare no 422 get one in its own
    validation-error format, which this server never sends (its 422s are ``ErrorResponse``,
    declared where they can happen). Both are fixed once, when the document is first built.
    """

    def generate_spec_json(self) -> None:
        super().generate_spec_json()
        doc = self.spec_json
        components = doc.get("components", {})
        if components.get("securitySchemes") is None:
            components.pop("securitySchemes", None)
        foreign = f"#/components/schemas/{self.validation_error_model.__name__}"
        for path_item in doc["paths"].values():
            for operation in path_item.values():
                response = operation.get("responses", {}).get(self.validation_error_status, {})
                if foreign in json.dumps(response):
                    del operation["responses"][self.validation_error_status]
        if foreign not in json.dumps(doc["paths"]):
            for name in (self.validation_error_model.__name__, "Context"):
                components.get("schemas", {}).pop(name, None)


class StrictJSONRequest(Request):
    """A request whose malformed JSON body is a 400 that says what is wrong."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise ServiceError(400, "bad_request", f"request body is not valid JSON: {e}")


# -- the factory ----------------------------------------------------------------------------------
def create_app(config: Settings | dict[str, Any] | None = None, model_registry: ModelRegistry | None = None) -> OpenAPI:
    """Build the app. ``config`` overrides the environment's settings; models load here, once."""
    cfg = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    app = ServiceAPI(__name__, info=Info(title="numpy-nets model server", version="1"), doc_prefix="/docs",
                  validation_error_status=422, validation_error_callback=validation_error_response)
    app.request_class = StrictJSONRequest
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json = ORJSONProvider(app)
    app.extensions["settings"] = cfg
    reg = model_registry or ModelRegistry(cfg.model_dir).load_all()
    for name in reg.models:  # a zero sample per model, so "no failures" is visible as 0
        metrics.LOAD_FAILURES.labels(name)
    for key in reg.failures():
        metrics.LOAD_FAILURES.labels(key.split("/")[0]).inc()
    app.extensions["model_registry"] = reg
    register_error_handlers(app)
    for bp in (inference, models, health):
        app.register_api(bp)

    @app.get("/openapi.json", doc_ui=False)
    def openapi_json() -> Response:
        return app.json.response(app.api_doc)

    @app.get("/docs", doc_ui=False)
    def docs() -> Response:
        return redirect("/docs/swagger", code=302)

    app.before_request(_before)
    app.after_request(_after)
    return app


def _before() -> None:
    g.start = time.perf_counter()
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if REQUEST_ID.match(supplied) else uuid.uuid4().hex
    g.model, g.batch_size = None, None
    if request.method == "POST" and request.routing_exception is None:  # a 404/405 is answered as such
        if not request.is_json:
            raise ServiceError(415, "unsupported_media_type",
                               f"send the body as application/json (got {request.mimetype or 'no content type'})")
        # Parse once, strictly (a 400 for malformed JSON); flask-openapi3 then reads the cached result.
        request.get_json(silent=False)


def _after(response: Response) -> Response:
    elapsed = time.perf_counter() - g.get("start", time.perf_counter())
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    model = g.get("model") or ""
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if endpoint != "/metrics":
        metrics.REQUESTS.labels(endpoint, model, str(response.status_code)).inc()
        metrics.LATENCY.labels(endpoint, model).observe(elapsed)
    log.info("request", extra={"fields": {
        "method": request.method, "path": request.path, "model": g.get("model"), "batch_size": g.get("batch_size"),
        "status": response.status_code, "latency_ms": round(elapsed * 1000, 3), "request_id": g.get("request_id")}})
    return response
