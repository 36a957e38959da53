"""Triton's repository RPCs over gRPC (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload):
the rules are the transport-free ``service/protocols/repository.py``, which REST's blueprint shares.

They change or reveal what the server serves, so they need ``ADMIN_TOKEN``, sent as the metadata
``authorization: Bearer <token>`` (UNAUTHENTICATED without it, PERMISSION_DENIED with a wrong one);
without an ``ADMIN_TOKEN`` they do not exist (UNIMPLEMENTED, as REST's routes are a 404). Triton
answers a ``repository_name`` with UNIMPLEMENTED (``'repository_name' specification is not
supported``); so does this server, which has one repository.
"""

from __future__ import annotations

from typing import Any

import grpc
from pydantic import SecretStr

from service.dataplane.dataplane import DataPlane
from service.errors import ServiceError, bad_request, quote
from service.grpc.calls import answers, model_name
from service.grpc.stubs import grpc_service_pb2 as pb
from service.protocols import repository


class RepositoryRPCs:
    """The repository part of the servicer (mixed into ``service/grpc/servicer.py``'s)."""

    plane: DataPlane
    admin_token: SecretStr | None

    def authorize(self, context: grpc.ServicerContext) -> None:
        if self.admin_token is None:
            raise ServiceError(501, "not_implemented", "the repository API is off (no ADMIN_TOKEN)")
        given = next((v for k, v in context.invocation_metadata() if k == "authorization"), "")
        repository.authorize(self.admin_token, given if isinstance(given, str) else "")

    @answers
    def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                        context: grpc.ServicerContext) -> pb.RepositoryIndexResponse:
        self.authorize(context)
        one_repository(request.repository_name)
        rows = repository.index(self.plane, only_ready=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @answers
    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                            context: grpc.ServicerContext) -> pb.RepositoryModelLoadResponse:
        self.authorize(context)
        repository.load(self.plane, model_name(repository_model(request)))
        return pb.RepositoryModelLoadResponse()

    @answers
    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                              context: grpc.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        self.authorize(context)
        # tritonclient's unload_model always sends unload_dependents; no model here has dependents
        repository.unload(self.plane, model_name(repository_model(request, frozenset({"unload_dependents"}))))
        return pb.RepositoryModelUnloadResponse()


def one_repository(name: str) -> None:
    if name:
        raise ServiceError(501, "not_implemented", "'repository_name' specification is not supported")


def repository_model(request: Any, taken: frozenset[str] = frozenset()) -> str:
    """The model a load or unload names. Triton's proto has it as ``model_name`` (field 2), after
    ``repository_name`` (1); KServe's proto has ``model_name`` as field 1, so a request with only
    field 1 set names its model there. Parameters other than those ``taken`` (Triton's config
    override and model files for a load) are refused: the server loads its repository's files,
    never a client's."""
    others = sorted(set(request.parameters) - taken)
    if others:
        raise bad_request(f"repository parameters {quote(others)} are not supported: the server loads the "
                          "model's files from its repository")
    if request.model_name:
        one_repository(request.repository_name)
        return request.model_name
    return request.repository_name
