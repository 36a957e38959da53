"""The Open Inference Protocol ("V2": Triton, MLServer, KServe) over REST, as a codec of the data plane.

Health (``{"live": true}``, ``{"ready": ...}`` and ``{"name", "ready"}`` bodies, as KServe's
server sends them; the status code is the answer for Triton's clients), server and model
metadata, and inference with JSON tensors or with the binary tensor data extension. A body may
name ``model_name``/``model_version`` (KServe's SDK does) if they agree with the URL.

The binary tensor data extension: a request body may be a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw little-endian bytes of each input that names its
``parameters.binary_data_size``; outputs asked for with ``parameters.binary_data`` (or all, with the
request's ``parameters.binary_data_output``) come back the same way, with that header set on the
response. Explanations are two more outputs a request may ask for by name: ``attributions`` (FP64, the
input's shape) and ``convergence_delta`` (FP64, [batch], integrated gradients only). The request's
``parameters`` of ``POST /explain``'s names (or those outputs' own) choose the method and its settings,
default integrated gradients; an optional second input ``target`` (BYTES, [batch], JSON data) names
the classes to explain (default: the predicted ones). Errors are ``{"error": "<message>"}``: 400 for a client
mistake, 404 for an unknown model or version, 413 for a batch or body over the limits, 503 for a
version that failed to load or when the server's explanation slots are all busy.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag

from service.app.blueprints import dataplane, diagnostics, parses_own_body, respond_json, settings
from service.app.blueprints.inference import explain_options
from service.dataplane.dataplane import INPUT, signature
from service.observability import grpc_readiness, tracing
from service.protocols import rollout_key, timeouts, v2_extensions, v2_http
from service.protocols.schemas import ModelPath, ProtocolError, VersionPath
from service.protocols.v2_http import HEADER_LENGTH, TARGET, decode_targets, explain_parameters
from service.protocols.v2_schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    NotReadyOrError,
    ServerLive,
    ServerMetadata,
    ServerReady,
)

EXTENSIONS = ["binary_tensor_data", *v2_extensions.EXTENSIONS]
ERRORS = {status: ProtocolError for status in (400, 404, 413, 503)}
INFER_ERRORS = {**ERRORS, **{status: ProtocolError for status in (415, 500, 504)}}  # a body, a pass, a deadline
BINARY_DOC = (
    "Binary tensor data extension: send the JSON header, then each input's raw little-endian bytes in "
    "input order, an input naming its byte count in parameters.binary_data_size instead of data, and the "
    f"header's length in the {HEADER_LENGTH} request header. Outputs asked for with parameters.binary_data "
    "(or all of them, with the request's parameters.binary_data_output) come back the same way: raw bytes "
    f"after the JSON header, whose length is the response's {HEADER_LENGTH} header; a BYTES element is a "
    "4-byte little-endian length and its UTF-8 bytes. Explanations: ask for the output 'attributions' (FP64, "
    "the input's shape; the request's parameters, or that output's, choose the method as POST /explain's "
    "body does: method, output, "
    "baseline (a number), steps, noise, samples, seed) and 'convergence_delta' (FP64, [batch], integrated "
    "gradients); an optional input 'target' (BYTES, [batch], JSON data) names the classes explained.")

v2 = APIBlueprint("v2", __name__, abp_tags=[Tag(name="open inference protocol (v2)")])



# -- health and metadata ------------------------------------------------------------------------------
@v2.get("/v2", responses={200: ServerMetadata})
def server_metadata() -> Response:
    """Server name, version and the protocol extensions it supports."""
    return respond_json({"name": v2_extensions.SERVER_NAME, "version": v2_extensions.SERVER_VERSION,
                         "extensions": EXTENSIONS})


@v2.get("/v2/health/live", responses={200: ServerLive})
def live() -> Response:
    """200 while the process answers, with KServe's body ``{"live": true}``."""
    return respond_json({"live": True})


@v2.get("/v2/health/ready", responses={200: ServerReady, 400: ServerReady})
def ready() -> Response:
    """200 ``{"ready": true}`` when every model version found is loaded and, with gRPC on, a gRPC process
    serves (as /readyz: KServe's runtime probes this one), else 400 ``{"ready": false}``."""
    is_ready = dataplane().readiness()[0] and grpc_readiness.readiness(settings().state_dir,
                                                                       settings().grpc_port)[0]
    return respond_json({"ready": is_ready}, 200 if is_ready else 400)


def model_ready(name: str, version: int | None) -> Response:
    g.model = name
    is_ready = dataplane().is_ready(name, version)
    return respond_json({"name": name, "ready": is_ready}, 200 if is_ready else 400)


@v2.get("/v2/models/<name>/ready", responses={200: ModelReady, 400: NotReadyOrError, 404: ProtocolError})
def model_is_ready(path: ModelPath) -> Response:
    """200 when the model has a version that serves, 400 when it has none, 404 for an unknown model."""
    return model_ready(path.name, None)


@v2.get("/v2/models/<name>/versions/<version>/ready", responses={200: ModelReady, 400: NotReadyOrError,
                                                                 404: ProtocolError})
def version_is_ready(path: VersionPath) -> Response:
    """200 when that version serves, 400 when it failed to load, 404 when there is no such version."""
    return model_ready(path.name, int(path.version))


def metadata(name: str, version: int | None) -> Response:
    g.model = name
    plane = dataplane()
    entry = plane.resolve(name, version)
    versions = [version] if version is not None else plane.ready_versions(name)
    inputs, outputs = signature(entry)
    return respond_json({"name": name, "versions": [str(v) for v in versions], "platform": v2_extensions.PLATFORM,
                          "inputs": [tensor_metadata(t) for t in inputs],
                          "outputs": [tensor_metadata(t) for t in outputs]})


def tensor_metadata(spec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


@v2.get("/v2/models/<name>", responses={200: ModelMetadata, **ERRORS})
def model_metadata(path: ModelPath) -> Response:
    """The model's serving versions and its input and output tensors (-1: the batch dimension)."""
    return metadata(path.name, None)


@v2.get("/v2/models/<name>/versions/<version>", responses={200: ModelMetadata, **ERRORS})
def version_metadata(path: VersionPath) -> Response:
    """One version's input and output tensors."""
    return metadata(path.name, int(path.version))


# -- inference ----------------------------------------------------------------------------------------
@v2.post("/v2/models/<name>/infer", responses={200: InferenceResponse, **INFER_ERRORS}, description=BINARY_DOC)
@parses_own_body(ModelPath)
def infer(path: ModelPath, body: InferenceRequest) -> Response:
    """Inference on the newest serving version: JSON tensors, or the binary tensor data extension."""
    return run_inference(path.name, None)


@v2.post("/v2/models/<name>/versions/<version>/infer", responses={200: InferenceResponse, **INFER_ERRORS},
         description=BINARY_DOC)
@parses_own_body(VersionPath)
def infer_version(path: VersionPath, body: InferenceRequest) -> Response:
    """Inference on one version."""
    return run_inference(path.name, int(path.version))


def run_inference(name: str, version: int | None) -> Response:
    g.model = name
    with tracing.span("decode"):  # tracing's spans: a shared no-op when off (Flask's requests are the rare ones)
        call = v2_http.decode(request.get_data(), request.headers.get(HEADER_LENGTH), name, version,
                              dataplane().max_values)
    if not call.explaining:
        key = rollout_key.of(request.headers.get(rollout_key.HEADER), call.request.parameters)
        timeout = timeouts.of(request.headers.get(timeouts.HEADER), call.request.parameters)
        result = dataplane().infer(name, call.version, call.tensor, field=INPUT, request_id=g.request_id,
                                   route_key=key, timeout_us=timeout, received=g.start)
        g.batch_size = len(result.classes)
        with tracing.span("encode"):
            return response(*v2_http.encode_outputs(call.request, result))
    # an explanation is bounded by its own limits (EXPLAIN_MAX_COST, the gradcheck's slots), not by a
    # deadline; a timeout it carries is still checked, as on every V2 request
    timeouts.of(request.headers.get(timeouts.HEADER), call.request.parameters)
    targets = next((decode_targets(i) for i in call.request.inputs if i.name == TARGET), None)
    params = explain_parameters(call.request.parameters or {}, call.explaining)
    done = diagnostics().explain(name, call.version, call.tensor, targets, explain_options(params, call.head),
                               field=INPUT)
    g.batch_size = len(done.targets)
    with tracing.span("encode"):
        return response(*v2_http.encode_outputs(call.request, done.inference, done, call.tensor.shape))


def response(head: bytes, tail: bytes | None) -> Response:
    """The JSON header alone, or followed by the binary outputs (``v2_http.framed``)."""
    body, headers = v2_http.framed(head, tail)
    return Response(body, headers=headers)


