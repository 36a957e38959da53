"""Input drift per model version: the mean drift score of the last ``DRIFT_WINDOW`` samples served.

The score of a sample is ``model/input_summary.py``'s (1.0 on average for the version's own training
inputs); a version whose metadata holds no ``input_summary`` (trained before it existed) has none.
Each process keeps a ring of its last ``window`` scores per version (``window`` floats: bounded
memory) and publishes the ring's sum and count as two gauges that ``/metrics`` adds up over the live
processes (once a window is full, at most ``PUBLISH_SECONDS`` stale while requests come, and at
most a second once they stop: :meth:`DriftMonitor.flush`), so the server's score is
``sum / count`` over every worker's recent samples (PromQL:
``sum by (model, version) (nn_input_drift_score_sum) / sum by (model, version) (nn_input_drift_samples)``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from prometheus_client import Gauge
from prometheus_client.metrics_core import Metric

from model.input_summary import DriftScorer
from service.observability import metrics

PUBLISH_SECONDS = 0.1  # how stale the exported window may be

SCORE_SUM = Gauge("nn_input_drift_score_sum", "Sum of the drift scores of the recent samples (1.0 each: like the "
                  "training inputs)", ["model", "version"], multiprocess_mode="livesum")
SAMPLES = Gauge("nn_input_drift_samples", "Recent samples the drift score averages over", ["model", "version"],
                multiprocess_mode="livesum")


class Window:
    """The last ``size`` drift scores of one model version in this process."""

    def __init__(self, scorer: DriftScorer, size: int, model: str, version: int) -> None:
        self.scorer, self.size = scorer, size
        self.ring = np.zeros(size)
        self.position = self.filled = 0
        self.publish_at = 0.0
        self.stale = False  # scores observed since the gauges were last written
        # a gRPC process observes on its calls' threads and flushes on its watcher's: a sum read before
        # another thread's newer one must not be written after it (and then never again)
        self.lock = threading.Lock()
        self.sum_gauge, self.count_gauge = SCORE_SUM.labels(model, str(version)), SAMPLES.labels(model, str(version))

    def observe(self, batch: np.ndarray) -> None:
        scores = self.scorer.scores(batch)[-self.size:]
        with self.lock:
            self._add(scores)

    def _add(self, scores: np.ndarray) -> None:
        n = len(scores)
        end = self.position + n
        if end <= self.size:
            self.ring[self.position:end] = scores
        else:
            split = self.size - self.position
            self.ring[self.position:] = scores[:split]
            self.ring[:end - self.size] = scores[split:]
        self.position = end % self.size
        filling = self.filled < self.size
        self.filled = min(self.size, self.filled + n)
        now = time.monotonic()
        # the gauges (a locked write each) at most every PUBLISH_SECONDS once the window was full
        if filling or now >= self.publish_at:
            self.publish_at = now + PUBLISH_SECONDS
            self.publish()
        else:
            self.stale = True

    def flush(self) -> None:
        """Publish what was observed since the gauges were last written, if anything was."""
        with self.lock:
            if self.stale:
                self.publish()

    def publish(self) -> None:
        """Write the gauges (the caller holds the lock)."""
        self.stale = False
        self.sum_gauge.set(float(self.ring[:self.filled].sum()))
        self.count_gauge.set(self.filled)


class DriftMonitor:
    """Drift windows of the versions this process serves, made on a version's first request."""

    def __init__(self, window: int = 1000) -> None:
        self.window = window
        # (model, version) -> (the metadata its window was made from, the window or None: no score)
        self.windows: dict[tuple[str, int], tuple[dict[str, Any], Window | None]] = {}

    def observe(self, model: str, version: int, metadata: dict[str, Any], batch: np.ndarray) -> None:
        """Score ``batch`` (n, features) of inputs served by ``model`` ``version``. A version whose file
        was replaced (reloaded: other metadata) starts a window of its own summary."""
        key = (model, version)
        known = self.windows.get(key)
        if known is None or known[0] is not metadata:
            known = self.windows[key] = (metadata, self._make(model, version, metadata, batch.shape[1]))
        if known[1] is not None:
            known[1].observe(batch)

    def window_of(self, model: str, version: int) -> Window | None:
        """The version's window in this process (None: not served yet, or no score)."""
        return self.windows.get((model, version), ({}, None))[1]

    def flush(self) -> None:
        """Write the gauges of windows observed since they were last written (a process's periodic
        call: otherwise the last samples before traffic stops would never be published)."""
        for _, window in list(self.windows.values()):
            if window is not None and window.stale:
                window.flush()

    def _make(self, model: str, version: int, metadata: dict[str, Any], features: int) -> Window | None:
        summary = metadata.get("input_summary")
        if not self.window or not isinstance(summary, dict):
            return None
        try:
            scorer = DriftScorer(summary)
        except (KeyError, TypeError, ValueError):
            return None  # a summary this server cannot read: no score rather than a failed request
        return Window(scorer, self.window, model, version) if scorer.features == features else None


def read(families: list[Metric] | None = None) -> dict[tuple[str, int], tuple[float, int]]:
    """(model, version) -> (sum of recent scores, their count), over every live process (``families``: an earlier
    ``metrics.collect()``, else read now)."""
    out: dict[tuple[str, int], list[float]] = {}
    for family in families if families is not None else metrics.collect():
        if family.name not in (SCORE_SUM._name, SAMPLES._name):
            continue
        for sample in family.samples:
            key = (sample.labels["model"], int(sample.labels["version"]))
            pair = out.setdefault(key, [0.0, 0.0])
            pair[0 if family.name == SCORE_SUM._name else 1] += sample.value
    return {key: (total, round(count)) for key, (total, count) in out.items()}
