"""``POST /predict`` and ``POST /gradcheck``: this service's own JSON codec over the data plane."""

from __future__ import annotations

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag

from service import jsonio
from service.blueprints import dataplane, respond, respond_json
from service.schemas import ErrorResponse, GradcheckRequest, GradcheckResponse, PredictRequest, PredictResponse
from service.worker import off_loop

# Everything a request with a body can go wrong with, in the one ErrorResponse shape.
BODY_ERRORS = {status: ErrorResponse for status in (400, 404, 413, 415, 422, 503)}

inference = APIBlueprint("inference", __name__, abp_tags=[Tag(name="inference")], abp_responses=BODY_ERRORS)


def decode_inputs(body: PredictRequest | GradcheckRequest):
    """The ``inputs`` list as one NumPy array, numbers only (see :func:`service.jsonio.to_array`)."""
    return jsonio.to_array(body.inputs, "inputs", booleans=jsonio.count_booleans(request.get_data()) > 0)


@inference.post("/predict", responses={200: PredictResponse})
def predict(body: PredictRequest) -> Response:
    """Class probabilities for a batch of samples, in one vectorised forward pass."""
    g.model = body.model
    result = dataplane().infer(body.model, body.version, decode_inputs(body))
    g.batch_size = len(result.classes)
    return respond_json({"model": result.model, "version": result.version, "labels": result.labels,
                         "predictions": [{"label": label, "probabilities": row}
                                         for label, row in zip(result.predicted(), result.probabilities, strict=True)]})


@inference.post("/gradcheck", responses={200: GradcheckResponse})
def gradcheck(body: GradcheckRequest) -> Response:
    """Compare backprop with central differences on a float64 copy of the model."""
    g.model = body.model
    check = off_loop(dataplane().gradcheck, body.model, body.version, decode_inputs(body), body.labels,
                     mode=body.mode, epsilon=body.epsilon, samples=body.samples, seed=body.seed,
                     tolerance=body.tolerance)
    g.batch_size = len(body.inputs)
    r = check.result
    return respond(GradcheckResponse(
        model=check.model, version=check.version, mode=r.mode, epsilon=r.epsilon, tolerance=r.tolerance,
        samples=check.samples, errors=r.errors, checked=r.checked, skipped=r.skipped, tiny=r.tiny, loss=r.loss,
        max_error=r.max_error, passed=r.passed, seconds=round(check.seconds, 6)))
