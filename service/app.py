"""The Flask application factory: blueprints per area, one error handler, a log line per request."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Request, Response, g, redirect, request
from flask_openapi3 import APIBlueprint, Info, OpenAPI, Tag

from service import metrics
from service.config import Settings
from service.errors import register_error_handlers, validation_error_response
from service.exceptions import ServiceError, invalid, too_large
from service.jsonio import ORJSONProvider
from service.registry import ModelRegistry, label_indices, timed, to_batch
from service.schemas import (
    ErrorResponse,
    GradcheckRequest,
    GradcheckResponse,
    Health,
    ModelInfo,
    ModelList,
    ModelPath,
    PredictRequest,
    PredictResponse,
    Readiness,
)

log = logging.getLogger("service.requests")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The errors each kind of endpoint can answer with, all in the one ErrorResponse shape.
BODY_ERRORS = {status: ErrorResponse for status in (400, 404, 413, 415, 422, 503)}
LOOKUP_ERRORS = {status: ErrorResponse for status in (404, 422)}

inference = APIBlueprint("inference", __name__, abp_tags=[Tag(name="inference")], abp_responses=BODY_ERRORS)
models = APIBlueprint("models", __name__, abp_tags=[Tag(name="models")])
health = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


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


def registry() -> ModelRegistry:
    from flask import current_app

    return current_app.extensions["model_registry"]


def settings() -> Settings:
    from flask import current_app

    return current_app.extensions["settings"]


def check_batch(n: int) -> None:
    limit = settings().max_batch
    if n > limit:
        raise too_large(413, "batch_too_large", "inputs", f"batch of {n} samples exceeds MAX_BATCH={limit}", limit, n)


# -- inference ------------------------------------------------------------------------------------
@inference.post("/predict", responses={200: PredictResponse})
def predict(body: PredictRequest) -> dict[str, Any]:
    """Class probabilities for a batch of samples, in one vectorised forward pass."""
    g.model = body.model
    check_batch(len(body.inputs))
    entry = registry().get(body.model, body.version)
    batch = to_batch(body.inputs, entry)
    g.batch_size = len(batch)
    metrics.BATCH.labels(body.model).observe(len(batch))
    probs = registry().predict(entry, batch)
    labels = entry.labels
    top = probs.argmax(axis=1)
    predictions = [{"label": labels[k], "probabilities": row}
                   for k, row in zip(top.tolist(), probs.tolist(), strict=True)]
    return {"model": entry.name, "version": entry.version, "labels": labels, "predictions": predictions}


@inference.post("/gradcheck", responses={200: GradcheckResponse})
def gradcheck(body: GradcheckRequest) -> dict[str, Any]:
    """Compare backprop with central differences on a float64 copy of the model."""
    g.model = body.model
    cfg = settings()
    if len(body.inputs) > cfg.gradcheck_max_batch:
        raise too_large(422, "gradcheck_too_large", "inputs", f"gradcheck takes at most {cfg.gradcheck_max_batch} "
                        "inputs", cfg.gradcheck_max_batch, len(body.inputs))
    if body.samples > cfg.gradcheck_max_samples:
        raise too_large(422, "gradcheck_too_large", "samples", f"samples is limited to {cfg.gradcheck_max_samples}",
                        cfg.gradcheck_max_samples, body.samples)
    if len(body.labels) != len(body.inputs):
        raise invalid("labels", f"{len(body.labels)} labels for {len(body.inputs)} inputs: one label per input")
    entry = registry().get(body.model, body.version)
    params = entry.network.num_params
    if body.mode == "full" and params > cfg.gradcheck_full_max_params:
        raise too_large(422, "gradcheck_too_large", "mode",
                        f"mode 'full' is limited to models of at most {cfg.gradcheck_full_max_params} parameters; "
                        f"{entry.name} has {params}: use 'sampled' or 'directional'",
                        cfg.gradcheck_full_max_params, params)
    batch = to_batch(body.inputs, entry)
    targets = label_indices(body.labels, entry)
    g.batch_size = len(batch)
    result, seconds = timed(registry().gradcheck, entry, batch, targets, mode=body.mode, epsilon=body.epsilon,
                            samples=body.samples, seed=body.seed, tolerance=body.tolerance)
    return {"model": entry.name, "version": entry.version, "mode": result.mode, "epsilon": result.epsilon,
            "tolerance": result.tolerance, "samples": body.samples, "errors": result.errors,
            "checked": result.checked, "skipped": result.skipped, "tiny": result.tiny, "loss": result.loss,
            "max_error": result.max_error, "passed": result.passed,
            "seconds": round(seconds, 6)}


# -- metadata -------------------------------------------------------------------------------------
@models.get("/models", responses={200: ModelList})
def list_models() -> dict[str, Any]:
    """Every model with its versions and metadata."""
    reg = registry()
    return {"models": [reg.describe(name) for name in sorted(reg.models)]}


@models.get("/models/<name>", responses={200: ModelInfo, **LOOKUP_ERRORS})
def get_model(path: ModelPath) -> dict[str, Any]:
    """One model's versions: input shape, labels, architecture, parameter count, metrics, SHA-256."""
    g.model = path.name
    return registry().describe(path.name)


# -- health ---------------------------------------------------------------------------------------
@health.get("/healthz", responses={200: Health})
def healthz() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@health.get("/readyz", responses={200: Readiness, 503: Readiness})
def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: every model version found is loaded (503 with the reasons otherwise)."""
    ready, states = registry().status()
    return {"ready": ready, "models": states}, 200 if ready else 503


@health.get("/metrics", doc_ui=False)
def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


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
