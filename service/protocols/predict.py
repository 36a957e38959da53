"""This service's own ``POST /predict`` answer, built once for the Flask view and the inference middleware."""

from __future__ import annotations

from typing import Any

from service.dataplane.dataplane import Inference


def answer(result: Inference) -> dict[str, Any]:
    """``PredictResponse``'s shape straight from the data plane's result (orjson serialises the rows)."""
    return {"model": result.model, "version": result.version, "labels": result.labels,
            "predictions": [{"label": label, "probabilities": row}
                            for label, row in zip(result.predicted(), result.probabilities, strict=True)]}
