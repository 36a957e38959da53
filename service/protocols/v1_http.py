"""TensorFlow Serving's REST predict body (KServe's V1), without a transport: what Flask's view
(``service/app/blueprints/v1.py``) and the inference middleware (``service/app/inference_middleware.py``) both run.

``{"instances": [...]}`` (row format, answered ``{"predictions": [...]}``) or ``{"inputs": ...}``
(columnar, answered ``{"outputs": ...}``); rows or columns may name the one input,
``[{"input": [...]}, ...]`` or ``{"input": [...]}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.dataplane.dataplane import INPUT, Inference
from service.errors import bad_request
from service.protocols import json_codec, json_numbers
from service.protocols.v1_schemas import V1PredictRequest

SIGNATURE = "serving_default"
VERSION_HEADER = "X-Model-Version"  # TF Serving's body names no version; this header says which one answered


@dataclass(frozen=True)
class Decoded:
    batch: np.ndarray
    rows: bool  # row format (instances) rather than columnar (inputs)

    @property
    def field(self) -> str:
        return "instances" if self.rows else "inputs"


def decode(raw: bytes, max_values: Callable[[], int]) -> Decoded:
    """The samples of a predict body; a :class:`ServiceError` or ``ValidationError`` for a client's
    mistake, and nothing else touched. ``max_values()`` bounds the numbers a (large) body may hold."""
    json_codec.check_value_count(raw, max_values)
    doc, batch = json_codec.loads_samples(raw, (b"instances", b"inputs"))  # batch: rows of plain numbers, or None
    req = V1PredictRequest.model_validate(doc)
    if req.signature_name not in (None, "", SIGNATURE):
        raise bad_request(f"unknown signature_name {req.signature_name!r}; the model has '{SIGNATURE}'")
    if (req.instances is None) == (req.inputs is None):
        raise bad_request("send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    rows = req.instances is not None
    field = "instances" if rows else "inputs"
    tensor = named_input(req.instances if rows else req.inputs, field)
    if not isinstance(tensor, list) or not tensor:
        raise bad_request(f"'{field}' must be a non-empty list of samples")
    if batch is not None and tensor == json_numbers.PLACEHOLDER:
        return Decoded(batch, rows)
    return Decoded(json_codec.samples(tensor, raw, field), rows)


def answer(result: Inference, rows: bool) -> dict[str, Any]:
    """Each sample's probabilities, aligned with the model's labels, in the request's format."""
    return {"predictions" if rows else "outputs": result.probabilities}


def named_input(value: Any, field: str) -> Any:
    """Rows or columns may name the input: ``[{"input": [...]}, ...]`` or ``{"input": [...]}``."""
    def unwrap(obj: dict[str, Any], where: str) -> Any:
        if set(obj) != {INPUT}:
            raise bad_request(f"{where}: the model takes one input named '{INPUT}', got {sorted(obj)}")
        return obj[INPUT]
    if isinstance(value, dict):
        return unwrap(value, field)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [unwrap(v, f"{field}.{i}") for i, v in enumerate(value)]
    return value
