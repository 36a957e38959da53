"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), a codec of the data plane.

The same models, versions, limits and rules as the REST codec (``service/blueprints/v2.py``): the
tensor rules are shared (``service/protocols/v2_tensors.py``), everything else is the data plane's.
An input's values come either in ``contents`` (the typed field of its datatype) or, for every input at
once, in ``raw_input_contents``; outputs always come back in ``raw_output_contents`` (as Triton sends
them). With no outputs named, every output is returned (the protocol's rule). Errors are gRPC status
codes as Triton gives them: NOT_FOUND (unknown model or version), INVALID_ARGUMENT (a client mistake),
RESOURCE_EXHAUSTED (over MAX_BATCH; the message size limit is grpcio's own), UNAVAILABLE (a version
that failed to load), and UNAUTHENTICATED / PERMISSION_DENIED for the repository RPCs without or with
a wrong token.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import unknown_fields
from pydantic import SecretStr

from model.repository import NAME_PATTERN
from service import metrics
from service.dataplane import INPUT, LABEL, PROBABILITIES, DataPlane, signature
from service.errors import ServiceError, bad_request, not_found, quote
from service.protocols import grpc_predict_v2_pb2 as pb
from service.protocols import grpc_predict_v2_pb2_grpc as pb_grpc
from service.protocols import repository, v2_tensors

SERVER_NAME, SERVER_VERSION = "numpy-nets", "1"
VERSION_TEXT = re.compile(r"[0-9]{1,9}")
NAME = re.compile(NAME_PATTERN)  # what REST routes take as a model name
# Status -> gRPC code, as Triton maps its errors.
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
         401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
# Which typed field of InferTensorContents carries each input datatype.
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents"}
METHOD_PREFIX = "/inference.GRPCInferenceService/"
log = logging.getLogger("service.grpc")


def answers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An RPC whose ServiceError becomes its gRPC status (never a traceback), counted in /metrics
    under the endpoint ``grpc:<method>`` with the model on record (an unknown name counts as one)."""
    endpoint = f"grpc:{METHOD_PREFIX}{fn.__name__}"

    @functools.wraps(fn)
    def rpc(self: InferenceServicer, request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        status = 200
        try:
            with self.calls:
                if self.draining:  # after SIGTERM: a call that arrives is told to go elsewhere (retryable)
                    raise ServiceError(503, "stopping", "the server is stopping; retry on another instance")
                self.active += 1
            try:
                return fn(self, request, context)
            finally:
                with self.calls:
                    self.active -= 1
                    self.calls.notify_all()
        except ServiceError as exc:
            status = exc.status
            context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception:  # a bug: the log has it, the client a status and no text of ours
            status = 500
            log.exception("gRPC %s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            name = getattr(request, "name", None) or getattr(request, "model_name", "")
            known = name if not name or self.plane.registry.knows(name) else metrics.UNKNOWN_MODEL
            metrics.observe_request(endpoint, known, status, time.perf_counter() - start)

    return rpc


def model_name(text: str) -> str:
    """A model name as REST's routes take one (model/repository.py's pattern); anything else is no
    model here: NOT_FOUND, with the name quoted (escaped, cut) as every error message does."""
    if not NAME.fullmatch(text):
        raise not_found(f"unknown model {quote(text)}")
    return text


def version_of(text: str) -> int | None:
    if text == "":
        return None
    if not VERSION_TEXT.fullmatch(text):
        raise bad_request(f"model_version must be a version number, got {quote(text)}")
    return int(text)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC service over one data plane."""

    def __init__(self, plane: DataPlane, running: int = 1, admin_token: SecretStr | None = None) -> None:
        self.plane, self.admin_token = plane, admin_token
        self.running = threading.BoundedSemaphore(running)  # inferences at once (GRPC_THREADS)
        self.calls = threading.Condition()
        self.active, self.draining = 0, False

    def drain(self, deadline: float, quiet: float = 0.5) -> None:
        """Refuse new calls (UNAVAILABLE) and wait until none has run for ``quiet`` seconds or until
        ``deadline`` (``time.monotonic()``): grpcio's own stop cancels calls it has taken but not
        yet handed to a thread, so the server is stopped only once nothing is in flight."""
        with self.calls:
            self.draining = True
            idle_since = None
            while time.monotonic() < deadline:
                if self.active:
                    idle_since = None
                    self.calls.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= quiet:
                    return
                self.calls.wait(0.05)

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
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @answers
    def ModelMetadata(self, request: pb.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        version = version_of(request.version)
        entry = self.plane.resolve(model_name(request.name), version)
        versions = [version] if version is not None else self.plane.ready_versions(request.name)
        inputs, outputs = signature(entry)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name, versions=[str(v) for v in versions], platform="numpy",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in outputs])

    @answers
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        name, version = model_name(request.model_name), version_of(request.model_version)
        names = [i.name for i in request.inputs]
        if names != [INPUT]:
            raise bad_request(f"model '{name}' takes one input named '{INPUT}'; the request has "
                              f"{quote(names)}")
        wanted = [o.name for o in request.outputs] or [PROBABILITIES, LABEL]
        unknown = [n for n in wanted if n not in (PROBABILITIES, LABEL)]
        if unknown or len(set(wanted)) != len(wanted):
            raise bad_request(f"outputs {quote(wanted)}: the model gives '{PROBABILITIES}' and '{LABEL}', each once")
        tensor = decode_input(request)
        with self.running:
            result = self.plane.infer(name, version, tensor, field=INPUT)
        response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request.id)
        for name in wanted:
            if name == PROBABILITIES:
                probabilities = np.ascontiguousarray(result.probabilities, dtype="<f4")
                response.outputs.add(name=name, datatype="FP32", shape=list(probabilities.shape))
                response.raw_output_contents.append(probabilities.tobytes())
            else:
                labels = result.predicted()
                response.outputs.add(name=name, datatype="BYTES", shape=[len(labels)])
                response.raw_output_contents.append(v2_tensors.pack_bytes(labels))
        return response


    # -- the repository (behind ADMIN_TOKEN, as gRPC metadata ``authorization: Bearer ...``) --------------
    def authorize(self, context: grpc.ServicerContext) -> None:
        """UNAUTHENTICATED without the token, PERMISSION_DENIED with a wrong one; without an ADMIN_TOKEN
        the repository RPCs do not exist (UNIMPLEMENTED, as REST's routes are a 404)."""
        if self.admin_token is None:
            raise ServiceError(501, "not_implemented", "the repository API is off (no ADMIN_TOKEN)")
        given = next((v for k, v in context.invocation_metadata() if k == "authorization"), "")
        repository.authorize(self.admin_token, given if isinstance(given, str) else "")

    @answers
    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                            context: grpc.ServicerContext) -> pb.RepositoryModelLoadResponse:
        self.authorize(context)
        repository.load(self.plane, model_name(repository_model(request)))
        return pb.RepositoryModelLoadResponse(model_name=repository_model(request), isLoaded=True)

    @answers
    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                              context: grpc.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        self.authorize(context)
        repository.unload(self.plane, model_name(repository_model(request)))
        return pb.RepositoryModelUnloadResponse(model_name=repository_model(request), isUnloaded=True)


def repository_model(request: Any) -> str:
    """The model a load or unload names: KServe's proto has it as field 1; Triton's (what tritonclient
    sends) has ``repository_name`` = 1 and ``model_name`` = 2, which this proto does not know, so a
    request with field 1 empty is read for Triton's field 2."""
    if request.model_name:
        return request.model_name
    for field in unknown_fields.UnknownFieldSet(request):
        if field.field_number == 2 and field.wire_type == 2:
            return bytes(field.data).decode("utf-8", "backslashreplace")
    return ""


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
    arr = np.asarray(values, dtype=np.float64 if field.startswith("fp") else None)
    v2_tensors.check_integers(inp.name, inp.datatype, arr)
    return arr.astype(dtype, copy=False).reshape(shape)

