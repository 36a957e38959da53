"""The feedback loop end to end, as docs/feedback-loop.md walks through it, against the real server.

A population of digits the served MNIST version reads poorly (``training/field_digits.py``: drawn
with pen strokes, another hand than MNIST's) goes through ``/predict`` with capture on; every answer
is labelled through ``POST /feedback``; ``python -m training mnist --feedback`` fine-tunes the next
version on MNIST plus that feedback; the server picks it up by hot reload; and the new version reads
the held-out field share and fresh digits of the same population far better, while MNIST's test set
stays at 99.2 % or more (the training run's own gate). On the way, the drift score stays near 1 for
MNIST's test digits and rises for the drawn ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from model.io import load_model
from tests.conftest import ROOT
from tests.integration.conftest import LocalServer
from training.field_digits import make_field_digits

TRAFFIC, TRAFFIC_SEED = 2000, 1  # the population served and labelled (the seed the docs' figures use)
FRESH_SEED = 2  # digits of the same population never served: the new version's accuracy on new traffic
BATCH = 50  # samples per /predict request (each request id labels 50 answers)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("walkthrough") / "repo"
    root.mkdir()
    shutil.copytree(ROOT / "model_repository" / "mnist", root / "mnist")
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walkthrough-server")
    srv = LocalServer(tmp, MODEL_DIR=str(repo), CAPTURE_DIR=str(tmp / "capture"), MODEL_POLL_SECONDS="1",
                      MODEL_SETTLE_SECONDS="0.5").start()
    srv.capture_dir = tmp / "capture"
    yield srv
    assert srv.stop() == 0, srv.read_log()[-3000:]


def predict(url: str, x: np.ndarray, ids_from: str | None = None) -> tuple[list[str], list[np.ndarray], int]:
    """(request ids, predicted classes per request, version) for ``x`` sent ``BATCH`` samples a request,
    each on a new connection, so both workers serve (and each keeps its own drift window) as under load."""
    ids, classes, versions = [], [], set()
    for start in range(0, len(x), BATCH):
        # the client's own request ids, as a labelling client keeps them (the field share is by a hash of the inputs)
        headers = {"X-Request-ID": f"{ids_from}-{start // BATCH:04d}"} if ids_from else {}
        r = requests.post(f"{url}/predict", json={"model": "mnist", "inputs": x[start:start + BATCH].tolist()},
                          headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        ids.append(r.headers["X-Request-ID"])
        classes.append(np.array([int(p["label"]) for p in body["predictions"]]))
        versions.add(body["version"])
    assert len(versions) == 1, versions
    return ids, classes, versions.pop()


def drift(url: str, version: int, timeout: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = requests.get(f"{url}/models/mnist", timeout=10).json()
        row = next(v for v in info["versions"] if v["version"] == version)
        if row.get("drift") or time.monotonic() > deadline:
            return row.get("drift") or {}
        time.sleep(0.1)


def test_the_loop_from_traffic_to_a_better_version(server, repo, mnist_data, mnist_dir):
    test_x, test_y = mnist_data.eval_sets["test"]

    # 1. MNIST's own test digits: the drift score stays near 1 (the training inputs average 1.0)
    _, classes, parent = predict(server.url, test_x[:1000])
    assert (np.concatenate(classes) == test_y[:1000]).mean() > 0.98
    calm = drift(server.url, parent)
    assert calm["samples"] >= 1000 and 0.7 < calm["score"] < 1.2, calm

    # 2. the drawn population: read poorly, and the drift score rises clearly
    x, y = make_field_digits(TRAFFIC, TRAFFIC_SEED)
    ids, classes, version = predict(server.url, x, ids_from=f"walk-{TRAFFIC_SEED}")
    assert version == parent
    served_accuracy = (np.concatenate(classes) == y).mean()
    assert served_accuracy < 0.9, served_accuracy
    shifted = drift(server.url, parent)
    assert shifted["score"] > calm["score"] + 0.3, (calm, shifted)  # docs: 0.92 -> 1.4

    # 3. every answer labelled through POST /feedback (one id labels its request's 50 answers)
    items = [{"id": rid, "labels": [str(v) for v in y[k * BATCH:(k + 1) * BATCH]]} for k, rid in enumerate(ids)]
    r = requests.post(f"{server.url}/feedback", json=items, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(items)
    live = next(v for v in requests.get(f"{server.url}/models/mnist", timeout=10).json()["versions"]
                if v["version"] == parent)["feedback"]
    assert live["labelled"] == TRAFFIC and live["accuracy"] == pytest.approx(served_accuracy, abs=1e-6)

    # 4. retrain on it: the next version, written only if its gates pass
    run = subprocess.run([sys.executable, "-m", "training", "mnist", "--feedback", str(server.capture_dir),
                          "--out", str(repo), "--data-dir", str(mnist_dir), "--no-download", "--no-plot", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    new = parent + 1
    meta = load_model(repo / "mnist" / str(new) / "model.npz").metadata
    record = meta["feedback"]
    assert record["count"] == TRAFFIC and record["train_count"] + record["field_count"] == TRAFFIC
    before, after = record["field_accuracy"]["parent"], record["field_accuracy"]["new"]
    assert after - before >= 0.10, record["field_accuracy"]  # docs: 82.5 % -> 99.3 %
    assert meta["metrics"]["test_accuracy"] >= 0.992
    assert "input_summary" in meta

    # 5. hot reload: the server serves it within the poll interval, and reads fresh digits far better
    deadline, seen = time.monotonic() + 30, 0
    while seen < 10:  # ten answers in a row on fresh connections: every worker has rescanned, not just one
        seen = seen + 1 if requests.get(f"{server.url}/models/mnist", timeout=10).json()["latest_version"] == new else 0
        assert time.monotonic() < deadline, "the new version was not picked up"
        time.sleep(0.2)
    fresh_x, fresh_y = make_field_digits(1000, FRESH_SEED)
    _, classes, version = predict(server.url, fresh_x)
    assert version == new
    fresh_accuracy = (np.concatenate(classes) == fresh_y).mean()
    assert fresh_accuracy - served_accuracy >= 0.10, (served_accuracy, fresh_accuracy)
    print(f"\nwalk-through: served v{parent} {served_accuracy:.3f} on the drawn digits; field set "
          f"{before:.3f} -> {after:.3f}; v{new} on fresh drawn digits {fresh_accuracy:.3f}; MNIST test "
          f"{meta['metrics']['test_accuracy']:.4f}; drift {calm['score']:.2f} (MNIST test) -> {shifted['score']:.2f}")
