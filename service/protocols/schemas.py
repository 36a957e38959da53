"""Request and response bodies: pydantic v2 models, the single source of validation and of the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from model.repository import NAME_PATTERN

ModelName = Annotated[str, Field(min_length=1, max_length=64, pattern=f"^{NAME_PATTERN}$",
                                  description="Model name, e.g. mnist")]
# A sample is documented as what it is, a flat or nested list of numbers, but pydantic does not walk
# its elements: the JSON codec converts the whole batch to NumPy in one step and checks every element
# there (numbers only, regular shape, finite), naming the offending location just as pydantic would.
SAMPLE_SCHEMA = {
    "anyOf": [{"type": "array", "items": {"type": "number"}},
              {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}],
    "description": "One input: a flat list (e.g. 784 numbers) or the nested image (e.g. 28 x 28), values in [0, 1]",
}
Sample = Annotated[Any, WithJsonSchema(SAMPLE_SCHEMA)]


class StrictModel(BaseModel):
    """Unknown fields are errors, and NaN / Infinity are never accepted as numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# -- /predict -----------------------------------------------------------------------------------
class PredictRequest(StrictModel):
    model: ModelName
    version: int | None = Field(None, ge=1, strict=True, description="Model version; the newest loaded one if omitted")
    inputs: list[Sample] = Field(..., min_length=1, description="A batch of samples (at most MAX_BATCH)")

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "xor", "inputs": [[0, 1], [1, 1]]}]})


class Prediction(StrictModel):
    label: str = Field(..., description="The most probable class name")
    probabilities: list[float] = Field(..., description="One probability per class, aligned with the model's labels")


class PredictResponse(StrictModel):
    model: str
    version: int
    labels: list[str]
    predictions: list[Prediction]


# -- /gradcheck ---------------------------------------------------------------------------------
class GradcheckRequest(StrictModel):
    model: ModelName
    version: int | None = Field(None, ge=1, strict=True)
    inputs: list[Sample] = Field(..., min_length=1)
    labels: list[str] = Field(..., min_length=1, description="One class name per input, as /predict names them")
    mode: Literal["sampled", "directional", "full"] = "sampled"
    # below 1e-10 a float64 central difference is roundoff only (and its floor, eps |L| / (h tolerance),
    # overflows); below 1e-12 no relative error can be told from roundoff
    epsilon: float = Field(1e-5, ge=1e-10, le=1e-2, strict=True, description="Central-difference step")
    samples: int = Field(10, ge=1, strict=True,
                         description="Coordinates (sampled) or directions (directional) per tensor")
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True)
    tolerance: float = Field(1e-6, ge=1e-12, le=1.0, strict=True, description="Largest relative error that passes")

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "mode": "full"}]})


class GradcheckResponse(StrictModel):
    model: str
    version: int
    mode: str
    epsilon: float
    tolerance: float
    samples: int
    errors: dict[str, float] = Field(..., description="Max relative error per parameter tensor")
    checked: dict[str, int] = Field(..., description="Comparisons made per parameter tensor")
    skipped: dict[str, int] = Field(..., description="Comparisons skipped because a ReLU unit crossed its kink")
    tiny: float = Field(..., description="Gradients below this are compared by absolute error (roundoff floor)")
    loss: float = Field(..., description="Loss of the checked batch")
    max_error: float
    passed: bool
    seconds: float


# -- /explain ------------------------------------------------------------------------------------
class ExplainParameters(StrictModel):
    """How to explain: the method, the output explained, the classes, and the method's own settings."""

    method: Literal["integrated_gradients", "saliency", "gradient", "gradient_x_input", "smoothgrad"] = Field(
        "integrated_gradients", description="saliency |df/dx|, gradient df/dx, gradient_x_input x*df/dx, "
        "integrated_gradients, or smoothgrad (the mean gradient over noisy copies)")
    output: Literal["probability", "logit"] = Field("probability", description="What f is: the target class's "
                                                    "probability (what /predict reports) or its logit")
    targets: list[str] | None = Field(None, min_length=1, description="One class name per input, as /predict "
                                      "names them; default: each input's predicted class")
    baseline: float | Sample = Field(0.0, description="integrated_gradients: the starting point, a number or "
                                     "one sample (flat or nested)")
    steps: int = Field(64, ge=1, strict=True, description="integrated_gradients: Gauss-Legendre points (at most "
                       "EXPLAIN_MAX_STEPS)")
    noise: float = Field(0.15, ge=0, le=10, strict=True,
                         description="smoothgrad: the noise's standard deviation, in input units")
    samples: int = Field(32, ge=1, strict=True,
                         description="smoothgrad: noisy copies per input (at most EXPLAIN_MAX_SAMPLES)")
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True,
                      description="smoothgrad: the noise's seed (same seed, same answer)")


class ExplainRequest(ExplainParameters):
    model: ModelName
    version: int | None = Field(None, ge=1, strict=True)
    inputs: list[Sample] = Field(..., min_length=1, description="A batch of samples (at most EXPLAIN_MAX_BATCH)")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "xor", "inputs": [[0, 1]], "method": "integrated_gradients", "steps": 64}]})


class ExplainResponse(StrictModel):
    model: str
    version: int
    method: str
    output: str
    targets: list[str] = Field(..., description="The class explained, per input")
    attributions: list[Sample] = Field(..., description="Per input, in the shape it was sent: each value's share")
    convergence_delta: list[float] | None = Field(None, description="integrated_gradients: sum(attributions) - "
                                                  "(f(input) - f(baseline)) per input; 0 for the exact integral")
    seconds: float


# -- metadata and health ------------------------------------------------------------------------
# -- /feedback ----------------------------------------------------------------------------------
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                                 description="The X-Request-ID of the answer being labelled (the gRPC answer's id)")]
ClassName = Annotated[str, Field(min_length=1, max_length=64, description="A class name, as /predict names them")]


class RequestLabel(StrictModel):
    """The ground truth for a captured request: ``label`` for one sample, ``labels`` for a batch."""

    id: RequestId
    label: ClassName | None = None
    labels: list[ClassName] | None = Field(None, min_length=1, max_length=1024, description="One per sample")

    def given(self) -> list[str]:
        return [self.label] if self.label is not None else list(self.labels or [])


class LabelledExample(StrictModel):
    """Inputs with their labels, for a client that keeps no request ids."""

    model: ModelName
    inputs: list[Sample] = Field(..., min_length=1, description="A batch of samples, as /predict takes them")
    labels: list[ClassName] = Field(..., min_length=1, description="One class name per input")


class FeedbackResult(StrictModel):
    id: str = Field(..., description="The request labelled, or the stored example's id")
    model: str
    version: int = Field(..., description="The version whose answers the labels judge")
    labels: list[str]
    predicted: list[str] = Field(..., description="What that version answered")
    correct: list[bool]
    duplicate: bool = Field(..., description="true: this id already had these labels; nothing new was stored")


class FeedbackResponse(StrictModel):
    stored: int = Field(..., description="Pieces of feedback newly stored (duplicates are not)")
    results: list[FeedbackResult]


class ModelPath(StrictModel):
    name: ModelName


VERSION_PATTERN = r"[1-9][0-9]{0,8}"  # a version in a URL (the inference middleware's routes ask this too)


class VersionPath(StrictModel):
    name: ModelName
    version: Annotated[str, Field(pattern=f"^{VERSION_PATTERN}$", description="A version number")]


class ProtocolError(StrictModel):
    """The standard protocols' error body (Open Inference Protocol and TF Serving): ``{"error": "..."}``."""

    error: str


class LiveAccuracy(StrictModel):
    labelled: int = Field(..., description="samples labelled through POST /feedback")
    right: int = Field(..., description="of which this version's answer was right")
    accuracy: float | None = Field(..., description="right / labelled")


class Drift(StrictModel):
    score: float | None = Field(..., description="mean drift score of the recent samples (1.0: like the training "
                                "inputs; docs/feedback-loop.md)")
    samples: int = Field(..., description="recent samples averaged (up to DRIFT_WINDOW per worker)")


class VersionRequests(StrictModel):
    succeeded: int = Field(..., description="inference requests this version answered (all workers)")
    failed: int = Field(..., description="inference requests that failed on this version")
    mean_ms: float | None = Field(..., description="mean time of a successful request in the data plane (ms)")


class Comparison(StrictModel):
    served: int = Field(..., description="the version that answered")
    compared: int = Field(..., description="the version the same samples ran on, off the request path")
    agree: int = Field(..., description="samples whose predicted labels agree")
    disagree: int = Field(..., description="samples whose predicted labels differ")
    dropped: int = Field(..., description="samples not compared: the queue (SHADOW_QUEUE) was full")
    agreement: float | None = Field(..., description="agree / (agree + disagree)")
    max_probability_difference: float = Field(..., description="largest difference of one class probability")


class RolloutEvidence(StrictModel):
    routed: dict[str, dict[str, int]] = Field(..., description="version -> role (primary, canary) -> requests "
                                              "routed there (requests naming a version are not routed)")
    comparisons: list[Comparison]
    rollbacks: dict[str, int] = Field(..., description="automatic rollbacks by reason (errors, disagreement)")


class RolloutState(StrictModel):
    name: str
    rollout: dict[str, Any] | None = Field(..., description="the rollout in force (docs/rollouts.md), who set it "
                                           "(api, file or guard) and when; null: requests naming no version go to "
                                           "the newest version")
    rollout_error: str | None = Field(None, description="why the model's rollout.json is ignored")
    evidence: RolloutEvidence = Field(..., description="summed over every process since the server started")


class VersionInfo(StrictModel):
    version: int
    status: Literal["ready", "failed"]
    error: str | None = None
    input_shape: list[int] | None = None
    labels: list[str] | None = None
    architecture: dict[str, Any] | None = None
    parameter_count: int | None = None
    metrics: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    sha256: str | None = None
    created_at: str | None = None
    loaded_at: str | None = None
    feedback: LiveAccuracy | None = Field(None, description="labels received through POST /feedback for this "
                                          "version's answers (all workers)")
    drift: Drift | None = Field(None, description="input drift of the recent requests (needs the version's "
                                "input_summary metadata)")
    requests: VersionRequests | None = None


class ModelInfo(StrictModel):
    name: str
    latest_version: int | None
    versions: list[VersionInfo]
    rollout: dict[str, Any] | None = Field(None, description="the rollout in force (docs/rollouts.md)")
    rollout_error: str | None = Field(None, description="why the model's rollout.json is ignored")
    evidence: RolloutEvidence | None = Field(None, description="the rollout's evidence, summed over every process")
    batching: dict[str, Any] | None = Field(None, description=(
        "this worker's batching: enabled, mode, max_batch_size, max_queue_delay_microseconds, "
        "preferred_batch_size, and per serving version the measured forward pass by rows (µs) and the "
        "largest request that joins a batch (merge_limit)"))


class ModelList(StrictModel):
    models: list[ModelInfo]


class Health(StrictModel):
    status: Literal["ok"]


class Readiness(StrictModel):
    ready: bool
    models: dict[str, str] = Field(..., description="'<name>/<version>' -> 'ready' or the reason it is not")
    grpc: str | None = Field(None, description="with gRPC on (python -m service): 'serving (N processes)', or "
                             "why not; null when this server runs no gRPC")


class ErrorBody(StrictModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(StrictModel):
    error: ErrorBody
