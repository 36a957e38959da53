"""The evidence a rollout is judged by, as Prometheus series summed over every process.

- ``nn_rollout_routed_total{model, version, role}``: requests a rollout routed (role ``primary`` or
  ``canary``); requests naming their version are not routed and not counted here;
- ``nn_rollout_comparisons_total{model, served, compared, outcome}``: samples of a served request run
  again on another version off the request path (a shadow of the primary, or the primary behind a
  canary) and whether the predicted labels ``agree`` or ``disagree``; ``dropped`` when the comparison
  queue was full;
- ``nn_rollout_probability_difference_max{model, served, compared}``: the largest absolute difference
  of one class probability between the two, over every compared sample;
- ``nn_rollout_rollbacks_total{model, reason}``: canaries the guard took traffic from (``errors``,
  ``disagreement``).

Every label is a model on record, one of its version numbers, or a fixed word: bounded by the
repository, never by what a client sends. Requests, errors and latency per version are the inference
statistics' (``statistics.py``), live accuracy is ``accuracy.py``'s.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from prometheus_client.metrics_core import Metric

from service.observability import metrics

ROUTED = Counter("nn_rollout_routed_total", "Requests routed by a rollout, by the version that served them",
                 ["model", "version", "role"])
COMPARISONS = Counter("nn_rollout_comparisons_total", "Samples compared between the version that served them and "
                      "another (shadow or primary), by whether the labels agree; dropped when the queue was full",
                      ["model", "served", "compared", "outcome"])
DIFFERENCE = Gauge("nn_rollout_probability_difference_max", "Largest difference of one class probability between "
                   "a served answer and its comparison", ["model", "served", "compared"], multiprocess_mode="max")
ROLLBACKS = Counter("nn_rollout_rollbacks_total", "Canaries whose traffic the guard sent back to the primary",
                    ["model", "reason"])
OUTCOMES = ("agree", "disagree", "dropped")
_largest: dict[tuple[str, str, str], float] = {}


def routed(model: str, version: int, canary: bool) -> None:
    metrics._child(ROUTED, (model, str(version), "canary" if canary else "primary")).inc()


def compared(model: str, served: int, other: int, agree: int, disagree: int, difference: float) -> None:
    labels = (model, str(served), str(other))
    if agree:
        metrics._child(COMPARISONS, (*labels, "agree")).inc(agree)
    if disagree:
        metrics._child(COMPARISONS, (*labels, "disagree")).inc(disagree)
    if difference > _largest.get(labels, -1.0):  # a max gauge: each process sets its own largest
        _largest[labels] = difference
        metrics._child(DIFFERENCE, labels).set(difference)


def dropped(model: str, served: int, other: int, samples: int) -> None:
    metrics._child(COMPARISONS, (model, str(served), str(other), "dropped")).inc(samples)


def rolled_back(model: str, reason: str) -> None:
    ROLLBACKS.labels(model, reason).inc()


def read(model: str, families: list[Metric] | None = None) -> dict[str, dict]:
    """The model's evidence so far, summed over every process: ``routed`` {(version, role): n},
    ``comparisons`` {(served, compared): {outcome: n, "max_difference": x}}, ``rollbacks`` {reason: n}
    (``families``: an earlier ``metrics.collect()``, else read now)."""
    out: dict[str, dict] = {"routed": {}, "comparisons": {}, "rollbacks": {}}
    names = {ROUTED._name: "routed", COMPARISONS._name: "comparisons", DIFFERENCE._name: "difference",
             ROLLBACKS._name: "rollbacks"}
    for family in families if families is not None else metrics.collect():
        kind = names.get(family.name)
        if kind is None:
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_created") or labels.get("model") != model:
                continue
            if kind == "routed":
                key = (int(labels["version"]), labels["role"])
                out["routed"][key] = out["routed"].get(key, 0) + round(sample.value)
            elif kind == "rollbacks":
                out["rollbacks"][labels["reason"]] = out["rollbacks"].get(labels["reason"], 0) + round(sample.value)
            else:
                pair = out["comparisons"].setdefault((int(labels["served"]), int(labels["compared"])),
                                                     {**dict.fromkeys(OUTCOMES, 0), "max_difference": 0.0})
                if kind == "comparisons":
                    pair[labels["outcome"]] += round(sample.value)
                else:
                    pair["max_difference"] = max(pair["max_difference"], sample.value)
    return out
