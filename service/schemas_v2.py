"""Open Inference Protocol ("V2", as served by Triton, MLServer and KServe) REST bodies.

The JSON parts of the protocol as pydantic models, for validation and the OpenAPI document. The
binary tensor data extension (raw tensor bytes after the JSON header) is described in words in
the ``infer`` operation; ``service/blueprints/v2.py`` implements it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

from service.schemas import StrictModel

Parameters = Annotated[dict[str, Any], Field(description="Free-form parameters, e.g. binary_data_size")]
TensorData = Annotated[Any, WithJsonSchema({
    "type": "array", "items": {}, "description": "The tensor's elements, flat or nested in row-major order"})]


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
    id: str | None = Field(None, max_length=256, description="Echoed in the response")
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

