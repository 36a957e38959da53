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

import math
import re
from typing import Any

import numpy as np
import orjson
from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Tag

from service import jsonio
from service.blueprints import dataplane, diagnostics, parses_own_body, respond_json
from service.blueprints.inference import explain_options
from service.dataplane import INPUT, LABEL, PROBABILITIES, Inference, signature
from service.diagnostics import Explanation
from service.error_handlers import register_renderer
from service.errors import ServiceError, bad_request, quote
from service.protocols import v2_extensions, v2_tensors
from service.schemas import ExplainParameters, ModelPath, ProtocolError, VersionPath
from service.schemas_v2 import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    NotReadyOrError,
    RequestInput,
    RequestOutput,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from service.worker import off_loop

EXTENSIONS = ["binary_tensor_data", *v2_extensions.EXTENSIONS]
ATTRIBUTIONS, CONVERGENCE_DELTA, TARGET = "attributions", "convergence_delta", "target"
EXPLAIN_OUTPUTS = (ATTRIBUTIONS, CONVERGENCE_DELTA)
HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION_TEXT = re.compile(r"[0-9]{1,9}")
ERRORS = {status: ProtocolError for status in (400, 404, 413, 503)}
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


def v2_error(exc: ServiceError) -> tuple[int, bytes]:
    status = 400 if exc.status == 422 else exc.status
    return status, orjson.dumps({"error": exc.message})


register_renderer("/v2", v2_error)


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
    """200 ``{"ready": true}`` when every model version found is loaded (as /readyz), else 400 ``{"ready": false}``."""
    is_ready = dataplane().readiness()[0]
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
@v2.post("/v2/models/<name>/infer", responses={200: InferenceResponse, **ERRORS}, description=BINARY_DOC)
@parses_own_body(ModelPath)
def infer(path: ModelPath, body: InferenceRequest) -> Response:
    """Inference on the newest serving version: JSON tensors, or the binary tensor data extension."""
    return run_inference(path.name, None)


@v2.post("/v2/models/<name>/versions/<version>/infer", responses={200: InferenceResponse, **ERRORS},
         description=BINARY_DOC)
@parses_own_body(VersionPath)
def infer_version(path: VersionPath, body: InferenceRequest) -> Response:
    """Inference on one version."""
    return run_inference(path.name, int(path.version))


def run_inference(name: str, version: int | None) -> Response:
    g.model = name
    head, binary = split_body(request.get_data())
    jsonio.check_value_count(head, dataplane().max_values)
    req = InferenceRequest.model_validate(jsonio.loads(head))
    version = named_in_body(req, name, version)
    names = [i.name for i in req.inputs]
    explaining = [o for o in req.outputs or [] if o.name in EXPLAIN_OUTPUTS]
    if names.count(INPUT) != 1 or not set(names) <= {INPUT, TARGET} or len(names) != len(set(names)) or \
            (TARGET in names and not explaining):
        raise bad_request(f"model '{name}' takes one input named '{INPUT}' (and '{TARGET}' with an explanation "
                          f"output); the request has {quote(names)}")
    # A JSON true/false may sit in the data only if the body holds more of them than the parameters do.
    booleans = jsonio.count_booleans(head) > sum(booleans_in(p) for p in parameter_dicts(req))
    tensor = decode_input(next(i for i in req.inputs if i.name == INPUT), binary, booleans)
    if not explaining:
        result = dataplane().infer(name, version, tensor, field=INPUT)
        g.batch_size = len(result.classes)
        return encode_outputs(req, result)
    targets = next((decode_targets(i) for i in req.inputs if i.name == TARGET), None)
    params = explain_parameters(req.parameters or {}, explaining)
    done = diagnostics().explain(name, version, tensor, targets, explain_options(params, head), field=INPUT,
                               run=off_loop)
    g.batch_size = len(done.targets)
    return encode_outputs(req, done.inference, done, tensor.shape)


def explain_parameters(request_parameters: dict[str, Any], outputs: list[RequestOutput]) -> ExplainParameters:
    """The explanation's settings: the request's parameters of those names (tritonclient sends
    request parameters only), then the explanation outputs' own (less the binary extension's)."""
    merged = {k: v for k, v in request_parameters.items() if k in ExplainParameters.model_fields}
    for out in outputs:
        merged.update({k: v for k, v in (out.parameters or {}).items() if k != "binary_data"})
    if "targets" in merged:
        raise bad_request(f"name the classes in an input '{TARGET}' (BYTES, one per sample), not a parameter")
    if isinstance(merged.get("baseline"), list | dict):
        raise bad_request("baseline must be a number here (parameters are scalars); POST /explain takes a sample")
    return ExplainParameters.model_validate(merged)


def decode_targets(inp: RequestInput) -> list[str]:
    if inp.datatype != "BYTES" or (inp.parameters or {}).get("binary_data_size") is not None:
        raise bad_request(f"input '{TARGET}' must be BYTES sent as JSON data: one class name per sample")
    data = inp.data
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data) or len(data) != math.prod(inp.shape):
        raise bad_request(f"input '{TARGET}' must hold {math.prod(inp.shape)} class names (strings) as its data")
    return data


def named_in_body(req: InferenceRequest, name: str, version: int | None) -> int | None:
    """The version to run, once the body's ``model_name``/``model_version`` (KServe's SDK sends them)
    agree with the URL: a body that names another model or version is a 400; a body version where
    the URL names none selects it."""
    if req.model_name not in (None, "") and req.model_name != name:
        raise bad_request(f"the body's model_name {quote(req.model_name)} contradicts the URL's model '{name}'")
    if req.model_version in (None, ""):
        return version
    if not VERSION_TEXT.fullmatch(req.model_version):
        raise bad_request(f"the body's model_version must be a version number, got {quote(req.model_version)}")
    named = int(req.model_version)
    if version is not None and named != version:
        raise bad_request(f"the body's model_version {quote(req.model_version)} contradicts the URL's version "
                          f"{version}")
    return named


def split_body(raw: bytes) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) per the Inference-Header-Content-Length request header."""
    header = request.headers.get(HEADER_LENGTH)
    if header is None:
        return raw, memoryview(b"")
    if not (header.isascii() and header.isdigit()) or not 0 < int(header) <= len(raw):
        raise bad_request(f"{HEADER_LENGTH} must be a byte count from 1 to the body's {len(raw)}, got {quote(header)}")
    n = int(header)
    return raw[:n], memoryview(raw)[n:]


def parameter_dicts(req: InferenceRequest) -> list[dict[str, Any]]:
    dicts = [req.parameters or {}, *((i.parameters or {}) for i in req.inputs)]
    return dicts + [o.parameters or {} for o in req.outputs or []]


def booleans_in(value: Any) -> int:
    """How many booleans a parsed JSON value holds (iteratively: parameters may nest ~1000 deep)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            count += 1
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def flag(params: dict[str, Any], name: str, default: bool, where: str) -> bool:
    """A boolean parameter, strictly: ``"no"`` or ``1`` is a client mistake, not true."""
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where} parameter {name} must be true or false, got {quote(value)}")
    return value


def decode_input(inp: RequestInput, binary: memoryview, booleans: bool) -> np.ndarray:
    """The input tensor in its declared shape and datatype, from JSON data or the binary tail
    (the rules both V2 front-ends share: service/protocols/v2_tensors.py)."""
    v2_tensors.input_dtype(inp.name, inp.datatype)
    count = math.prod(inp.shape)
    params = inp.parameters or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad_request(f"input {quote(inp.name)}: binary_data_size must be a byte count, got {size!r}")
        if inp.data is not None:
            raise bad_request(f"input {quote(inp.name)} has both data and binary_data_size; send one")
        if size != len(binary):
            raise bad_request(f"input {quote(inp.name)} declares {size} bytes of binary data, but {len(binary)} bytes "
                              f"follow the JSON header")
        return v2_tensors.from_raw(inp.name, inp.datatype, inp.shape, binary)
    if len(binary):
        raise bad_request(f"{len(binary)} bytes follow the JSON header, but no input names binary_data_size")
    if not isinstance(inp.data, list):
        raise bad_request(f"input {quote(inp.name)} has no data: send 'data' (a list) or binary_data_size")
    arr = jsonio.to_array(inp.data, inp.name, booleans)
    if arr.size != count:
        raise bad_request(f"input {quote(inp.name)}: shape {inp.shape} holds {count} values, but data has {arr.size}")
    v2_tensors.check_integers(inp.name, inp.datatype, arr)
    return arr.reshape(inp.shape)


def encode_outputs(req: InferenceRequest, result: Inference, explanation: Explanation | None = None,
                   input_shape: tuple[int, ...] = ()) -> Response:
    all_binary = flag(req.parameters or {}, "binary_data_output", False, "the request's")
    wanted = req.outputs or [RequestOutput(name=PROBABILITIES)]
    outputs, tail = [], []
    for out in wanted:
        params = out.parameters or {}
        binary = flag(params, "binary_data", all_binary, f"output {quote(out.name)}'s")
        if out.name == PROBABILITIES:
            tensor = result.probabilities
            spec = {"name": PROBABILITIES, "datatype": "FP32", "shape": list(tensor.shape)}
            raw = np.ascontiguousarray(tensor, dtype="<f4").tobytes() if binary else None
            data = tensor.ravel() if not binary else None
        elif out.name == LABEL:
            labels = result.predicted()
            spec = {"name": LABEL, "datatype": "BYTES", "shape": [len(labels)]}
            raw = v2_tensors.pack_bytes(labels) if binary else None
            data = labels if not binary else None
        elif explanation is not None and out.name in EXPLAIN_OUTPUTS:
            if out.name == ATTRIBUTIONS:
                tensor = explanation.result.attributions.reshape(input_shape)
            elif explanation.result.convergence_delta is None:
                raise bad_request(f"output '{CONVERGENCE_DELTA}' is given by method 'integrated_gradients' only")
            else:
                tensor = explanation.result.convergence_delta
            spec = {"name": out.name, "datatype": "FP64", "shape": list(tensor.shape)}
            raw = np.ascontiguousarray(tensor, dtype="<f8").tobytes() if binary else None
            data = tensor.ravel() if not binary else None
        else:
            raise bad_request(f"unknown output {quote(out.name)}; the model gives '{PROBABILITIES}' and '{LABEL}', and "
                              f"explanations as '{ATTRIBUTIONS}' and '{CONVERGENCE_DELTA}'")
        if raw is not None:
            spec["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            spec["data"] = data
        outputs.append(spec)
    body: dict[str, Any] = {"model_name": result.model, "model_version": str(result.version)}
    if req.id is not None:
        body["id"] = req.id
    body["outputs"] = outputs
    head = jsonio.dumps(body)
    if not tail:
        return Response(head, mimetype="application/json")
    response = Response(head + b"".join(tail), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(head))
    return response
