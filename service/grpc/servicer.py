"""The Open Inference Protocol over gRPC (Triton's ``inference.GRPCInferenceService``), a codec of the data plane.

The same models, versions, limits and rules as the REST codec (``service/protocols/v2_http.py``): the
tensor rules are shared (``service/protocols/v2_tensors.py``), everything else is the data plane's.
An input's values come either in ``contents`` (the typed field of its datatype) or, for every input at
once, in ``raw_input_contents``; outputs always come back in ``raw_output_contents`` (as Triton sends
them). With no outputs named, every output is returned (the protocol's rule). Errors are gRPC status
codes as Triton gives them (``service/grpc/calls.py``): NOT_FOUND (unknown model or
version), INVALID_ARGUMENT (a client mistake), RESOURCE_EXHAUSTED (over MAX_BATCH; the message size
limit is grpcio's own), UNAVAILABLE (a version that failed to load). The repository RPCs are
``grpc_repository.py``'s, configuration and statistics ``grpc_extensions.py``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
from pydantic import SecretStr

from service.dataplane.dataplane import INPUT, LABEL, PROBABILITIES, DataPlane, signature
from service.errors import ServiceError, bad_request, quote
from service.grpc.calls import METHOD_PREFIX, Calls, answers, model_name, version_of
from service.grpc.extensions import ExtensionRPCs, NotServedRPCs
from service.grpc.repository import RepositoryRPCs
from service.grpc.stubs import grpc_service_pb2 as pb
from service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
from service.observability import tracing
from service.observability.request_record import request_id
from service.protocols import rollout_key, timeouts, v2_tensors
from service.protocols.v2_extensions import EXTENSIONS, PLATFORM, SERVER_NAME, SERVER_VERSION
from service.protocols.v2_schemas import MAX_ID_LENGTH

STREAM_ENDPOINT = f"{METHOD_PREFIX}ModelStreamInfer"
MAX_DEADLINE_SECONDS = 3600.0  # a call's time_remaining() beyond this is no deadline (grpcio gives ~1e9 then)
# Which typed field of InferTensorContents carries each input datatype.
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents"}


class InferenceServicer(ExtensionRPCs, RepositoryRPCs, NotServedRPCs, Calls, pb_grpc.GRPCInferenceServiceServicer):
    """Triton's V2 gRPC service over one data plane: health, metadata and inference here, the rest mixed in."""

    def __init__(self, plane: DataPlane, admin_token: SecretStr | None = None, instances: int = 1) -> None:
        Calls.__init__(self, plane)
        self.admin_token, self.instances = admin_token, instances
        # GRPC_THREADS forward passes at once are the runner's to bound (the thread batcher's slots, or
        # the inline runner's): a semaphore around the whole call would keep the calls the batcher
        # merges from ever meeting, and hide the calls waiting for it from MAX_QUEUE_SIZE and deadlines

    @answers
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @answers
    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.readiness()[0])

    @answers
    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        """Triton's answer: ready false, not an error, for a model or version it does not have."""
        try:
            ready = self.plane.is_ready(model_name(request.name), version_of(request.version))
        except ServiceError as exc:
            if exc.status != 404:
                raise
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @answers
    def ServerMetadata(self, request: pb.ServerMetadataRequest,
                       context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS))

    @answers
    def ModelMetadata(self, request: pb.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        version = version_of(request.version)
        entry = self.plane.resolve(model_name(request.name), version)
        versions = [version] if version is not None else self.plane.ready_versions(request.name)
        inputs, outputs = signature(entry)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name, versions=[str(v) for v in versions], platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in outputs])

    @answers
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        return self.infer(request, context)

    def ModelStreamInfer(self, requests: Iterator[pb.ModelInferRequest],
                         context: grpc.ServicerContext) -> Iterator[pb.ModelStreamInferResponse]:
        """Triton's stream: one answer per request, in order; a request's error is its answer's
        ``error_message`` and the stream goes on (tritonclient's callback gets it as the error). Each
        request is a call of its own (limits, batching, metrics under this RPC); after SIGTERM the
        stream ends UNAVAILABLE once a request arrives."""
        for request in requests:
            try:
                response = self.attempt(STREAM_ENDPOINT, request, self.infer, request, context)
            except ServiceError as exc:
                if exc.status == 503 and exc.code == "stopping":
                    context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
                yield pb.ModelStreamInferResponse(error_message=exc.message)
                continue
            asked = request.parameters.get("triton_enable_empty_final_response")  # .get: [] would add the key
            if asked is not None and asked.bool_param:
                # as Triton marks the last answer to a request (a model here gives one answer per request)
                response.parameters["triton_final_response"].bool_param = True
            yield pb.ModelStreamInferResponse(infer_response=response)

    def infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext | None = None
              ) -> pb.ModelInferResponse:
        received = time.perf_counter()
        timeout_us = timeout_of(request, context)  # the call's deadline as it stood when it arrived
        if len(request.id) > MAX_ID_LENGTH:  # as REST's schema bounds it
            raise bad_request(f"id must have at most {MAX_ID_LENGTH} characters, got {len(request.id)}")
        name, version = model_name(request.model_name), version_of(request.model_version)
        names = [i.name for i in request.inputs]
        if names != [INPUT]:
            raise bad_request(f"model '{name}' takes one input named '{INPUT}'; the request has "
                              f"{quote(names)}")
        wanted = [o.name for o in request.outputs] or [PROBABILITIES, LABEL]
        unknown = [n for n in wanted if n not in (PROBABILITIES, LABEL)]
        if unknown or len(set(wanted)) != len(wanted):
            raise bad_request(f"outputs {quote(wanted)}: the model gives '{PROBABILITIES}' and '{LABEL}', each once")
        if any("classification" in o.parameters for o in request.outputs):
            raise bad_request(f"the classification extension is not supported; ask for '{LABEL}' (the predicted "
                              f"class) and '{PROBABILITIES}'")
        decoding = time.time_ns() if tracing.ENABLED else 0
        tensor = decode_input(request)
        if decoding:
            tracing.between("decode", decoding, time.time_ns())
        # with capture on, the request's own id names its capture (if it is a safe token: else, or with
        # none, one is made) and the answer carries that id, for POST /feedback
        rid = request_id(request.id) if self.plane.capture is not None else None
        result = self.plane.infer(name, version, tensor, field=INPUT, request_id=rid,
                                  route_key=route_key(request, context),  # checked as REST does, used without a version
                                  timeout_us=timeout_us, received=received)
        encoding = time.time_ns() if tracing.ENABLED else 0
        response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version),
                                         id=rid or request.id)
        for name in wanted:
            if name == PROBABILITIES:
                probabilities = np.ascontiguousarray(result.probabilities, dtype="<f4")
                response.outputs.add(name=name, datatype="FP32", shape=list(probabilities.shape))
                response.raw_output_contents.append(probabilities.tobytes())
            else:
                labels = result.predicted()
                response.outputs.add(name=name, datatype="BYTES", shape=[len(labels)])
                response.raw_output_contents.append(v2_tensors.pack_bytes(labels))
        if encoding:
            tracing.between("encode", encoding, time.time_ns())
        return response


def timeout_of(request: pb.ModelInferRequest, context: grpc.ServicerContext | None) -> int | None:
    """The call's timeout in microseconds: the ``timeout`` parameter (as Triton reads it) or the call's
    own deadline, whichever is shorter; None for neither."""
    found = []
    param = request.parameters.get(timeouts.PARAMETER)  # .get: [] would add the key
    if param is not None:
        kind = param.WhichOneof("parameter_choice")
        found.append(timeouts.of(None, {timeouts.PARAMETER: getattr(param, kind) if kind else None}))
    remaining = context.time_remaining() if context is not None else None
    if remaining is not None and remaining < MAX_DEADLINE_SECONDS:  # no deadline: a huge number
        found.append(max(1, int(remaining * 1e6)))
    found = [t for t in found if t]
    return min(found) if found else None


def route_key(request: pb.ModelInferRequest, context: grpc.ServicerContext | None) -> str | None:
    """A rollout's sticky key: the ``rollout_key`` string parameter, else the ``x-rollout-key`` metadata."""
    param = request.parameters.get(rollout_key.PARAMETER)  # .get: [] would add the key
    if param is not None:
        if param.WhichOneof("parameter_choice") != "string_param" or not param.string_param:
            raise bad_request(f"parameters.{rollout_key.PARAMETER} must be a non-empty string")
        return param.string_param
    for key, value in (context.invocation_metadata() if context is not None else ()):
        if key == rollout_key.METADATA:
            return value or None
    return None


def decode_input(request: pb.ModelInferRequest) -> np.ndarray:
    """The one input's tensor, from ``raw_input_contents`` or from its typed ``contents``."""
    inp = request.inputs[0]
    shape = list(inp.shape)
    dtype = v2_tensors.input_dtype(inp.name, inp.datatype)
    count = v2_tensors.element_count(inp.name, shape)
    sent = [field.name for field, _ in inp.contents.ListFields()]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or sent:
            raise bad_request(f"raw_input_contents must hold one entry per input ({len(request.inputs)}) and the "
                              "inputs no contents")
        return v2_tensors.from_raw(inp.name, inp.datatype, shape, request.raw_input_contents[0])
    field = CONTENTS[inp.datatype]
    if sent not in ([field], []):
        raise bad_request(f"input {quote(inp.name)} is {inp.datatype}: send its values in contents.{field}")
    values = getattr(inp.contents, field)
    if len(values) != count:
        raise bad_request(f"input {quote(inp.name)}: shape {shape} holds {count} values, but contents has "
                          f"{len(values)}")
    # integers exactly (uint64 for the unsigned fields): inferred, 2**64 - 1 became a float and then 0
    arr = np.asarray(values, dtype=np.float64 if field.startswith("fp") else np.uint64 if field.startswith("uint")
                     else np.int64)
    v2_tensors.check_integers(inp.name, inp.datatype, arr)
    return arr.astype(dtype, copy=False).reshape(shape)

