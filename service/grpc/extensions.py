"""Triton's configuration and statistics RPCs over gRPC, and the RPCs of its service not served here.

``ModelConfig`` and ``ModelStatistics`` answer with the very dicts REST's ``/config`` and ``/stats``
answer with (``service/protocols/v2_extensions.py``), parsed into Triton's messages: the two
transports cannot disagree. The shared-memory, trace and log-settings RPCs
are UNIMPLEMENTED through the codec's one error path (counted, no traceback): the generated base
class would answer UNIMPLEMENTED too, but by raising an exception grpcio logs with its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from service.dataplane.dataplane import DataPlane
from service.errors import ServiceError, bad_request
from service.grpc.calls import answers, model_name, version_of
from service.grpc.stubs import grpc_service_pb2 as pb
from service.protocols import v2_extensions


class ExtensionRPCs:
    """The configuration and statistics part of the servicer (mixed into ``service/grpc/servicer.py``'s)."""

    plane: DataPlane
    instances: int  # the instance group's count in the configuration: WORKERS, as REST says

    @answers
    def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.ServicerContext) -> pb.ModelConfigResponse:
        config = v2_extensions.model_config(self.plane, model_name(request.name), version_of(request.version),
                                            self.instances)
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config)
        return response

    @answers
    def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                        context: grpc.ServicerContext) -> pb.ModelStatisticsResponse:
        if not request.name and request.version:
            raise bad_request("statistics of a version need the model's name")
        name = model_name(request.name) if request.name else None
        stats = v2_extensions.model_stats(self.plane, name, version_of(request.version))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())


def not_served(method: str) -> Callable[..., Any]:
    def rpc(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        raise ServiceError(501, "not_implemented", f"{method} is not supported by this server")

    rpc.__name__ = rpc.__qualname__ = method
    return answers(rpc)


class NotServedRPCs:
    """Triton's RPCs this server does not serve: UNIMPLEMENTED, each named in its message."""

    SystemSharedMemoryStatus = not_served("SystemSharedMemoryStatus")
    SystemSharedMemoryRegister = not_served("SystemSharedMemoryRegister")
    SystemSharedMemoryUnregister = not_served("SystemSharedMemoryUnregister")
    CudaSharedMemoryStatus = not_served("CudaSharedMemoryStatus")
    CudaSharedMemoryRegister = not_served("CudaSharedMemoryRegister")
    CudaSharedMemoryUnregister = not_served("CudaSharedMemoryUnregister")
    TraceSetting = not_served("TraceSetting")
    LogSettings = not_served("LogSettings")
