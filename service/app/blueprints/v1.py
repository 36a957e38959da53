"""The TensorFlow Serving REST API (also KServe's V1 protocol), as a codec of the data plane.

``POST /v1/models/{m}[/versions/{n}]:explain`` (KServe's explain verb) takes ``{"instances": [...]}``
and optional ``parameters`` (those of ``POST /explain``; default: integrated gradients of each
instance's predicted class) and answers ``{"predictions": [...], "explanations": [...]}``.

``POST /v1/models/{m}[/versions/{n}]:predict`` takes ``{"instances": [...]}`` (row format, answered
``{"predictions": [...]}``) or ``{"inputs": ...}`` (columnar, answered ``{"outputs": ...}``); each
prediction is the probabilities aligned with the model's labels (``GET /models/{m}``). The one
signature is ``serving_default``. Version status and signature metadata as TF Serving gives them.
Errors are ``{"error": "<message>"}``: 400 for a client mistake, 404 for an unknown model.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag

from service.app.blueprints import dataplane, diagnostics, parses_own_body, respond_json
from service.app.blueprints.inference import attributions_as_sent, explain_options
from service.dataplane.dataplane import INPUT, signature
from service.protocols import json_codec, rollout_key, timeouts, v1_http
from service.protocols.schemas import ExplainParameters, ModelPath, ProtocolError, VersionPath
from service.protocols.v1_http import SIGNATURE, named_input
from service.protocols.v1_schemas import (
    Metadata,
    ModelStatus,
    V1ExplainRequest,
    V1ExplainResponse,
    V1PredictRequest,
    V1PredictResponse,
)

ERRORS = {status: ProtocolError for status in (400, 404, 413, 503)}
INFER_ERRORS = {**ERRORS, **{status: ProtocolError for status in (415, 500, 504)}}  # a body, a pass, a deadline
TF_DTYPES = {"FP32": "DT_FLOAT", "BYTES": "DT_STRING"}

v1 = APIBlueprint("v1", __name__, abp_tags=[Tag(name="tensorflow serving / kserve v1")])



def server_live() -> Response:
    """KServe's model server root, ``GET /``: its V1 SDK's server-live check reads ``status``. Served
    by the page's view (``service/app/blueprints/page.py``) to every client that does not ask for HTML."""
    return respond_json({"status": "alive"})


@v1.post("/v1/models/<model:name>:predict", responses={200: V1PredictResponse, **INFER_ERRORS})
@parses_own_body(ModelPath)
def predict(path: ModelPath, body: V1PredictRequest) -> Response:
    """Probabilities for each instance, from the newest serving version."""
    return run_predict(path.name, None)


@v1.post("/v1/models/<model:name>/versions/<version:version>:predict",
         responses={200: V1PredictResponse, **INFER_ERRORS})
@parses_own_body(VersionPath)
def predict_version(path: VersionPath, body: V1PredictRequest) -> Response:
    """Probabilities for each instance, from one version."""
    return run_predict(path.name, int(path.version))


def run_predict(name: str, version: int | None) -> Response:
    g.model = name
    call = v1_http.decode(request.get_data(), dataplane().max_values)
    result = dataplane().infer(name, version, call.batch, field=call.field, request_id=g.request_id,
                               route_key=rollout_key.of(request.headers.get(rollout_key.HEADER)),
                               timeout_us=timeouts.of(request.headers.get(timeouts.HEADER)), received=g.start)
    g.batch_size = len(result.classes)
    response = respond_json(v1_http.answer(result, call.rows))
    response.headers[v1_http.VERSION_HEADER] = str(result.version)
    return response


@v1.post("/v1/models/<model:name>:explain", responses={200: V1ExplainResponse, **INFER_ERRORS})
@parses_own_body(ModelPath)
def explain(path: ModelPath, body: V1ExplainRequest) -> Response:
    """Predictions and attributions for each instance, from the newest serving version."""
    return run_explain(path.name, None)


@v1.post("/v1/models/<model:name>/versions/<version:version>:explain",
         responses={200: V1ExplainResponse, **INFER_ERRORS})
@parses_own_body(VersionPath)
def explain_version(path: VersionPath, body: V1ExplainRequest) -> Response:
    """Predictions and attributions for each instance, from one version."""
    return run_explain(path.name, int(path.version))


def run_explain(name: str, version: int | None) -> Response:
    g.model = name
    raw = request.get_data()
    json_codec.check_value_count(raw, dataplane().max_values)
    req = V1ExplainRequest.model_validate(json_codec.loads(raw))
    batch = json_codec.samples(named_input(req.instances, "instances"), raw, "instances")
    params = req.parameters or ExplainParameters()
    done = diagnostics().explain(name, version, batch, params.targets, explain_options(params, raw),
                               field="instances")
    g.batch_size = len(batch)
    r = done.result
    attributions = attributions_as_sent(done, batch.shape[1:])
    explanations = [{"method": r.method, "output": r.output, "target": target, "attributions": attributions[i],
                     **({} if r.convergence_delta is None else {"convergence_delta": r.convergence_delta[i]})}
                    for i, target in enumerate(done.targets)]
    return respond_json({"predictions": done.inference.probabilities, "explanations": explanations})


# -- status and metadata ------------------------------------------------------------------------------
def status(name: str, version: int | None) -> Response:
    """Both conventions in one body: KServe's model server answers ``{"name", "ready"}`` (its SDK's
    model-ready check reads ``ready``), TF Serving ``model_version_status``."""
    g.model = name
    versions = dataplane().describe(name)["versions"]
    if version is not None:
        versions = [v for v in versions if v["version"] == version]
        if not versions:
            dataplane().resolve(name, version)  # the 404, worded as everywhere
    return respond_json({"name": name, "ready": any(v["status"] == "ready" for v in versions),
                         "model_version_status": [
        {"version": str(v["version"]), "state": "AVAILABLE" if v["status"] == "ready" else "END",
         "status": {"error_code": "OK" if v["status"] == "ready" else "UNKNOWN", "error_message": v["error"] or ""}}
        for v in versions]})


@v1.get("/v1/models/<model:name>", responses={200: ModelStatus, **ERRORS})
def model_status(path: ModelPath) -> Response:
    """Whether the model serves (``ready``), and every version's state: AVAILABLE, or END with the reason."""
    return status(path.name, None)


@v1.get("/v1/models/<model:name>/versions/<version:version>", responses={200: ModelStatus, **ERRORS})
def version_status(path: VersionPath) -> Response:
    """One version's state."""
    return status(path.name, int(path.version))


def metadata(name: str, version: int | None) -> Response:
    g.model = name
    entry = dataplane().resolve(name, version)
    inputs, outputs = signature(entry)

    def tensors(specs) -> dict[str, Any]:
        return {s.name: {"dtype": TF_DTYPES[s.datatype], "name": s.name, "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in s.shape], "unknown_rank": False}}
            for s in specs if s.datatype == "FP32" or s.name == INPUT}

    return respond_json({"model_spec": {"name": name, "signature_name": "", "version": str(entry.version)},
                         "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
                             "inputs": tensors(inputs), "outputs": tensors(outputs),
                             "method_name": "tensorflow/serving/predict"}}}}})


@v1.get("/v1/models/<model:name>/metadata", responses={200: Metadata, **ERRORS})
def model_metadata(path: ModelPath) -> Response:
    """The serving_default signature: input and output tensors (-1: the batch dimension)."""
    return metadata(path.name, None)


@v1.get("/v1/models/<model:name>/versions/<version:version>/metadata", responses={200: Metadata, **ERRORS})
def version_metadata(path: VersionPath) -> Response:
    """One version's signature."""
    return metadata(path.name, int(path.version))
