"""``POST /predict`` and ``POST /gradcheck``."""

from __future__ import annotations

from flask import Response, g
from flask_openapi3 import APIBlueprint, Tag

from service import metrics
from service.blueprints import registry, respond, settings
from service.exceptions import invalid, too_large
from service.registry import label_indices, timed, to_batch
from service.schemas import (
    ErrorResponse,
    GradcheckRequest,
    GradcheckResponse,
    Prediction,
    PredictRequest,
    PredictResponse,
)

# Everything a request with a body can go wrong with, in the one ErrorResponse shape.
BODY_ERRORS = {status: ErrorResponse for status in (400, 404, 413, 415, 422, 503)}

inference = APIBlueprint("inference", __name__, abp_tags=[Tag(name="inference")], abp_responses=BODY_ERRORS)


@inference.post("/predict", responses={200: PredictResponse})
def predict(body: PredictRequest) -> Response:
    """Class probabilities for a batch of samples, in one vectorised forward pass."""
    g.model = body.model
    limit = settings().max_batch
    if len(body.inputs) > limit:
        raise too_large(413, "batch_too_large", "inputs", f"batch of {len(body.inputs)} samples exceeds "
                        f"MAX_BATCH={limit}", limit, len(body.inputs))
    entry = registry().get(body.model, body.version)
    batch = to_batch(body.inputs, entry)
    g.batch_size = len(batch)
    metrics.BATCH.labels(body.model).observe(len(batch))
    probs = registry().predict(entry, batch)
    labels = entry.labels
    predictions = [Prediction(label=labels[k], probabilities=row)
                   for k, row in zip(probs.argmax(axis=1).tolist(), probs.tolist(), strict=True)]
    return respond(PredictResponse(model=entry.name, version=entry.version, labels=labels, predictions=predictions))


@inference.post("/gradcheck", responses={200: GradcheckResponse})
def gradcheck(body: GradcheckRequest) -> Response:
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
    return respond(GradcheckResponse(
        model=entry.name, version=entry.version, mode=result.mode, epsilon=result.epsilon,
        tolerance=result.tolerance, samples=body.samples, errors=result.errors, checked=result.checked,
        skipped=result.skipped, tiny=result.tiny, loss=result.loss, max_error=result.max_error,
        passed=result.passed, seconds=round(seconds, 6)))
