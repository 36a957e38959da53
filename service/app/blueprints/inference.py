"""``POST /predict``, ``POST /gradcheck`` and ``POST /explain``: this service's own JSON codec over the data plane."""

from __future__ import annotations

import numpy as np
from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag

from service.app.blueprints import dataplane, diagnostics, respond, respond_json
from service.dataplane.diagnostics import ExplainOptions, Explanation
from service.errors import invalid
from service.protocols import json_codec, rollout_key, timeouts
from service.protocols.predict import answer as predict_answer
from service.protocols.schemas import (
    ErrorResponse,
    ExplainParameters,
    ExplainRequest,
    ExplainResponse,
    GradcheckRequest,
    GradcheckResponse,
    PredictRequest,
    PredictResponse,
)

# Everything a request with a body can go wrong with, in the one ErrorResponse shape.
BODY_ERRORS = {status: ErrorResponse for status in (400, 404, 413, 415, 422, 500, 503, 504)}

inference = APIBlueprint("inference", __name__, abp_tags=[Tag(name="inference")], abp_responses=BODY_ERRORS)


def decode_inputs(body: PredictRequest | GradcheckRequest | ExplainRequest) -> np.ndarray:
    """The ``inputs`` list as one NumPy array, numbers only (see :func:`service.protocols.json_codec.samples`)."""
    return json_codec.samples(body.inputs, request.get_data())


@inference.post("/predict", responses={200: PredictResponse})
def predict(body: PredictRequest) -> Response:
    """Class probabilities for a batch of samples, in one vectorised forward pass."""
    g.model = body.model
    result = dataplane().infer(body.model, body.version, decode_inputs(body), request_id=g.request_id,
                               route_key=rollout_key.of(request.headers.get(rollout_key.HEADER)),
                               timeout_us=timeouts.of(request.headers.get(timeouts.HEADER)), received=g.start)
    g.batch_size = len(result.classes)
    return respond_json(predict_answer(result))


@inference.post("/gradcheck", responses={200: GradcheckResponse})
def gradcheck(body: GradcheckRequest) -> Response:
    """Compare backprop with central differences on a float64 copy of the model."""
    g.model = body.model
    check = diagnostics().gradcheck(body.model, body.version, decode_inputs(body), body.labels, mode=body.mode,
                                  epsilon=body.epsilon, samples=body.samples, seed=body.seed,
                                  tolerance=body.tolerance)
    g.batch_size = len(body.inputs)
    r = check.result
    return respond(GradcheckResponse(
        model=check.model, version=check.version, mode=r.mode, epsilon=r.epsilon, tolerance=r.tolerance,
        samples=check.samples, errors=r.errors, checked=r.checked, skipped=r.skipped, tiny=r.tiny, loss=r.loss,
        max_error=r.max_error, passed=r.passed, seconds=round(check.seconds, 6)))


@inference.post("/explain", responses={200: ExplainResponse})
def explain(body: ExplainRequest) -> Response:
    """Attributions of each input's target class, from the backward pass of a float64 copy of the model."""
    g.model = body.model
    inputs = decode_inputs(body)
    done = diagnostics().explain(body.model, body.version, inputs, body.targets,
                               explain_options(body, request.get_data()))
    g.batch_size = len(inputs)
    r = done.result
    return respond_json({"model": done.inference.model, "version": done.inference.version, "method": r.method,
                         "output": r.output, "targets": done.targets,
                         "attributions": attributions_as_sent(done, inputs.shape[1:]),
                         "convergence_delta": r.convergence_delta, "seconds": round(done.seconds, 6)})


def explain_options(params: ExplainParameters, raw: bytes, field: str = "baseline") -> ExplainOptions:
    """The data plane's options from validated parameters (a baseline list becomes an array)."""
    given = params.model_fields_set & {"baseline", "steps", "noise", "samples", "seed"}
    baseline = params.baseline
    if not isinstance(baseline, int | float) or isinstance(baseline, bool):
        if not isinstance(baseline, list) or not baseline:
            raise invalid(field, "Input should be a number or a list of numbers (one sample)")
        baseline = json_codec.samples(baseline, raw, field)
    elif isinstance(baseline, int):  # JSON's integers have no bound: 1e400 written out is one
        try:
            float(baseline)
        except OverflowError:
            raise invalid(field, "value is beyond the range of a float") from None
    return ExplainOptions(method=params.method, output=params.output, baseline=baseline, steps=params.steps,
                          noise=params.noise, samples=params.samples, seed=params.seed, given=frozenset(given))


def attributions_as_sent(done: Explanation, sample_shape: tuple[int, ...]) -> np.ndarray:
    """(batch, *sample_shape): each input's attributions in the shape that input was sent."""
    return done.result.attributions.reshape(len(done.targets), *sample_shape)
