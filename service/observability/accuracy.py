"""Live accuracy: labels sent to ``POST /feedback`` against what each model version answered.

One counter, ``nn_feedback_total{model, version, outcome}`` with ``outcome`` ``right`` or ``wrong``,
per labelled sample. Labels are bounded by the repository: only a captured request's own model and
version (or the version now serving a self-contained example) are ever counted, never a name a
client sends. Summed over the workers like the inference statistics (``statistics.py``).
"""

from __future__ import annotations

from prometheus_client import Counter
from prometheus_client.metrics_core import Metric

from service.observability import metrics

FEEDBACK = Counter("nn_feedback_total", "Labelled samples received through POST /feedback, by whether the model "
                   "version's answer was right", ["model", "version", "outcome"])


def count(model: str, version: int, right: int, wrong: int) -> None:
    if right:
        FEEDBACK.labels(model, str(version), "right").inc(right)
    if wrong:
        FEEDBACK.labels(model, str(version), "wrong").inc(wrong)


def read(families: list[Metric] | None = None) -> dict[tuple[str, int], tuple[int, int]]:
    """(model, version) -> (right, wrong) so far, summed over every worker (``families``: an earlier
    ``metrics.collect()``, else read now)."""
    out: dict[tuple[str, int], list[int]] = {}
    for family in families if families is not None else metrics.collect():
        if family.name != FEEDBACK._name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            pair = out.setdefault((sample.labels["model"], int(sample.labels["version"])), [0, 0])
            pair[0 if sample.labels["outcome"] == "right" else 1] += round(sample.value)
    return {key: (right, wrong) for key, (right, wrong) in out.items()}
