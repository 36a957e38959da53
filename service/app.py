"""The Flask application factory: the blueprints, one error handler, a log line per request."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Request, Response, current_app, g, redirect, request
from flask_openapi3 import Info, OpenAPI

from service import encoding, exchange, jsonio, metrics
from service.blueprints import ModelNameConverter, VersionConverter
from service.blueprints.health import health
from service.blueprints.inference import inference
from service.blueprints.models import models
from service.blueprints.repository import repository
from service.blueprints.ui import ui
from service.blueprints.v1 import v1
from service.blueprints.v2 import v2
from service.blueprints.v2_extensions import v2_extensions
from service.config import Settings
from service.dataplane import DataPlane, Limits
from service.diagnostics import Diagnostics
from service.error_handlers import register_error_handlers, validation_error_response
from service.errors import ServiceError, bad_request, invalid
from service.fast_lane import FastLane
from service.jsonio import ORJSONProvider
from service.policy import VersionPolicy
from service.registry import ModelRegistry

JSON_BODY_BLUEPRINTS = {"inference"}
BODY_METHODS = {"POST", "PUT", "PATCH"}


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
    """A request whose malformed JSON body is a 400 that says what is wrong (the one place it is answered)."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise bad_request(f"request body is not valid JSON: {e}")


# -- the factory ----------------------------------------------------------------------------------
def create_app(config: Settings | dict[str, Any] | None = None, model_registry: ModelRegistry | None = None) -> OpenAPI:
    """Build the app. ``config`` overrides the environment's settings; models load here, once."""
    cfg = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    # static_folder=None: the page's blueprint serves /static (service/blueprints/ui.py)
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
    plane = app.extensions["dataplane"] = DataPlane(reg, Limits.from_settings(cfg), cfg.state_dir)
    app.extensions["diagnostics"] = Diagnostics(plane, cfg.state_dir)
    register_error_handlers(app)
    app.url_map.converters.update(model=ModelNameConverter, version=VersionConverter)
    for bp in (inference, models, health, v2, v2_extensions, v1):
        app.register_api(bp)
    app.register_blueprint(ui)  # the page at / (plain Flask: not part of the API document)
    if cfg.admin_token is not None:  # the repository API exists only with a token (README: Rolling out)
        app.register_api(repository)

    @app.get("/openapi.json", doc_ui=False)
    def openapi_json() -> Response:
        return app.json.response(app.api_doc)

    @app.get("/docs", doc_ui=False)
    def docs() -> Response:
        return redirect("/docs/swagger", code=302)

    app.before_request(_before)
    app.after_request(_after)
    # POST /predict's common case in front of Flask, everything else through it (service/fast_lane.py)
    app.wsgi_app = FastLane(app.wsgi_app, plane, cfg.max_body_bytes)
    return app


def _before() -> None:
    req = request._get_current_object()  # one proxy lookup, not one per attribute (the hot path)
    ctx = g._get_current_object()
    ctx.start = time.perf_counter()
    ctx.request_id = exchange.request_id(req.headers.get("X-Request-ID"))
    coding = req.headers.get("Content-Encoding")
    if coding and req.method in BODY_METHODS and req.routing_exception is None:
        # Every protocol's body, decompressed once here (service/encoding.py: bounded by MAX_BODY_BYTES);
        # werkzeug's cached body is then what get_data() and get_json() read.
        req._cached_data = encoding.decode(req.get_data(), coding, current_app.extensions["settings"].max_body_bytes)
    # This service's own protocol takes JSON only; the standard protocols' codecs read their bodies
    # themselves (an Open Inference Protocol body may be JSON followed by raw tensor bytes).
    if req.method == "POST" and req.routing_exception is None and req.blueprint in JSON_BODY_BLUEPRINTS:
        if not req.is_json:
            raise ServiceError(415, "unsupported_media_type",
                               f"send the body as application/json (got {req.mimetype or 'no content type'})")
        # Parse once, strictly (a 400 for malformed JSON); flask-openapi3 then reads the cached result.
        # Only an object can be a request; flask-openapi3 would re-parse a JSON string as JSON text.
        jsonio.check_value_count(req.get_data(), current_app.extensions["dataplane"].max_values)
        if not isinstance(req.get_json(silent=False), dict):
            raise invalid("", "Input should be a valid dictionary (a JSON object)", "model_type")


def compressible(req: Request, response: Response) -> bool:
    """A body held in memory and not encoded yet (files, the page's assets, stream by themselves)."""
    return (req.method != "HEAD" and not response.direct_passthrough and not response.is_streamed
            and "Content-Encoding" not in response.headers and response.status_code not in (204, 304))


def _after(response: Response) -> Response:
    req = request._get_current_object()
    ctx = g._get_current_object()
    start = getattr(ctx, "start", None)
    elapsed = time.perf_counter() - start if start is not None else 0.0
    endpoint = req.url_rule.rule if req.url_rule else "unmatched"
    model = getattr(ctx, "model", None)
    request_id = getattr(ctx, "request_id", "")
    response.headers["X-Request-ID"] = request_id
    response.headers["X-Content-Type-Options"] = "nosniff"  # an API's bodies are never to be sniffed
    if "Accept-Encoding" in req.headers and compressible(req, response):
        body, coding = encoding.for_client(response.get_data(), req.headers["Accept-Encoding"])
        if coding is not None:
            response.set_data(body)
            response.headers["Content-Encoding"] = coding
        response.vary.add("Accept-Encoding")
    exchange.record(current_app.extensions["model_registry"].snapshot, endpoint, req.method, req.path, model,
                    getattr(ctx, "batch_size", None), response.status_code, elapsed, request_id)
    return response
