"""TensorFlow Serving REST API bodies (also KServe's V1 protocol), for validation and the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

from service.protocols.schemas import ExplainParameters, Sample, StrictModel

Tensor = Annotated[Any, WithJsonSchema({"description": "A list of samples (nested lists of numbers), or an "
                                                       "object naming the input: {\"input\": [...]}"})]


class V1PredictRequest(StrictModel):
    signature_name: str | None = Field(None, description="'serving_default' (the only signature) or omitted")
    instances: list[Tensor] | None = Field(None, description="Row format: one entry per sample")
    inputs: Tensor = Field(None, description="Columnar format: the batch as one tensor")

    model_config = StrictModel.model_config | {"json_schema_extra": {"examples": [{"instances": [[0, 1], [1, 1]]}]}}


class V1PredictResponse(StrictModel):
    predictions: list[list[float]] | None = Field(None, description="Row format: probabilities per sample")
    outputs: list[list[float]] | None = Field(None, description="Columnar format: the probabilities tensor")


class VersionStatusCode(StrictModel):
    error_code: str
    error_message: str


class VersionStatus(StrictModel):
    version: str
    state: str = Field(..., description="AVAILABLE, or END for a version that failed to load")
    status: VersionStatusCode


class ModelStatus(StrictModel):
    name: str = Field(..., description="The model (KServe's V1 model-ready body)")
    ready: bool = Field(..., description="Whether a version (the one named, if any) serves")
    model_version_status: list[VersionStatus] = Field(..., description="TF Serving's version states")


class Metadata(StrictModel):
    model_spec: dict[str, Any]
    metadata: dict[str, Any]



class V1ExplainRequest(StrictModel):
    """KServe V1's ``:explain`` body: the ``:predict`` row format, and ``parameters`` choosing the method."""

    instances: list[Tensor] = Field(..., min_length=1, description="Row format: one entry per sample")
    parameters: ExplainParameters | None = Field(None, description="Default: integrated_gradients of each "
                                                 "instance's predicted class's probability, 64 steps from 0")

    model_config = StrictModel.model_config | {"json_schema_extra": {"examples": [
        {"instances": [[0, 1]], "parameters": {"method": "saliency"}}]}}


class InstanceExplanation(StrictModel):
    method: str
    output: str
    target: str = Field(..., description="The class explained")
    attributions: Sample = Field(..., description="In the shape the instance was sent")
    convergence_delta: float | None = Field(None, description="integrated_gradients only")


class V1ExplainResponse(StrictModel):
    predictions: list[list[float]] = Field(..., description="Probabilities per instance, as :predict gives them")
    explanations: list[InstanceExplanation]
