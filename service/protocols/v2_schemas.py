"""Open Inference Protocol ("V2", as served by Triton, MLServer and KServe) REST bodies.

The JSON parts of the protocol as pydantic models, for validation and the OpenAPI document. The
binary tensor data extension (raw tensor bytes after the JSON header) is described in words in
the ``infer`` operation; ``service/protocols/v2_http.py`` decodes and encodes it,
``service/app/blueprints/v2.py`` serves it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, RootModel, WithJsonSchema

from service.protocols.schemas import ProtocolError, StrictModel

Parameters = Annotated[dict[str, Any], Field(description="Free-form parameters, e.g. binary_data_size")]
TensorData = Annotated[Any, WithJsonSchema({
    "type": "array", "items": {}, "description": "The tensor's elements, flat or nested in row-major order"})]


MAX_ID_LENGTH = 256  # a request id, REST and gRPC alike: an echo, not a payload

class RequestInput(StrictModel):
    name: str = Field(..., description="The model's input name (see the model metadata): 'input'")
    shape: list[Annotated[int, Field(ge=0, strict=True)]]
    datatype: str = Field(..., description="FP32, FP64 or an integer type (INT8..INT64, UINT8..UINT64)")
    parameters: Parameters | None = None
    data: TensorData | None = None


class RequestOutput(StrictModel):
    name: str = Field(..., description="'probabilities' (FP32) or 'label' (BYTES)")
    parameters: Parameters | None = None


class InferenceRequest(StrictModel):
    # KServe's SDK names the model in the body too; accepted when it agrees with the URL
    model_name: str | None = Field(None, max_length=256, description="If given, the URL's model")
    model_version: str | None = Field(None, max_length=32, description="If given, the URL's version, or the "
                                      "version to run when the URL names none")
    id: str | None = Field(None, max_length=MAX_ID_LENGTH, description="Echoed in the response")
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(..., min_length=1)
    outputs: list[RequestOutput] | None = None

    model_config = StrictModel.model_config | {"json_schema_extra": {"examples": [{
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}],
        "outputs": [{"name": "probabilities"}, {"name": "label"}]}]}}


class ResponseOutput(StrictModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: TensorData | None = None


class InferenceResponse(StrictModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(StrictModel):
    name: str
    datatype: str
    shape: list[int]


class ServerLive(StrictModel):
    live: bool


class ServerReady(StrictModel):
    ready: bool


class ModelReady(StrictModel):
    name: str
    ready: bool


class NotReadyOrError(RootModel[ModelReady | ProtocolError]):
    """A 400 of a readiness route: the model (version) does not serve, or the request was malformed."""


class ServerMetadata(StrictModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(StrictModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]



# -- Triton's extensions: model configuration and statistics -------------------------------------
class TensorConfig(StrictModel):
    name: str
    data_type: str = Field(..., description="TYPE_FP32, TYPE_STRING")
    dims: list[int] = Field(..., description="Per sample: the batch dimension is max_batch_size's")
    format: str | None = Field(None, description="Inputs: FORMAT_NONE")
    reshape: dict[str, list[int]] | None = Field(None, description="A per-sample scalar: dims [1] served as []")


class ModelConfig(StrictModel):
    """The fields of Triton's ``ModelConfig`` (model_config.proto) that hold for this server's models."""

    name: str
    platform: str
    version_policy: dict[str, dict[str, Any]] = Field(..., description="latest/num_versions, all, or specific")
    max_batch_size: int = Field(..., description="MAX_BATCH: the largest batch one request may send")
    input: list[TensorConfig]
    output: list[TensorConfig]
    instance_group: list[dict[str, Any]] = Field(..., description="One model copy per gunicorn worker, on the CPU")
    default_model_filename: str
    model_transaction_policy: dict[str, bool]
    response_cache: dict[str, bool]
    dynamic_batching: dict[str, Any] | None = Field(None, description=(
        "Present when the answering process batches concurrent requests (BATCHING for REST, GRPC_BATCHING for "
        "gRPC): preferred_batch_size, max_queue_delay_microseconds"))


class DurationStat(StrictModel):
    count: int
    ns: int


class InferenceStats(StrictModel):
    success: DurationStat
    fail: DurationStat
    queue: DurationStat
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat
    cache_hit: DurationStat
    cache_miss: DurationStat


class ModelStat(StrictModel):
    name: str
    version: str
    last_inference: int = Field(..., description="Milliseconds since the epoch; 0 before the first")
    inference_count: int = Field(..., description="Samples inferred")
    execution_count: int = Field(..., description="Model executions (one per request: no server-side batching)")
    inference_stats: InferenceStats
    batch_stats: list[dict[str, Any]] = Field(..., description="Empty: no server-side batching")


class ModelStatsResponse(StrictModel):
    model_stats: list[ModelStat]
