"""/gradcheck over HTTP: passes on every shipped model with real inputs, in every mode allowed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import served_weights
from training.datasets import digits, xor


def payload(name, mnist_data, n=8):
    if name == "xor":
        ds = xor()
        return ds.x.tolist(), [str(v) for v in ds.y]
    if name == "digits":
        x, y = digits().eval_sets["noisy"]
        return x[:n].tolist(), [str(v + 1) for v in y[:n]]
    x, y = mnist_data.eval_sets["test"]
    return x[:n].tolist(), [str(v) for v in y[:n]]


@pytest.mark.parametrize("name,mode", [
    ("xor", "full"), ("xor", "sampled"), ("xor", "directional"),
    ("digits", "full"), ("digits", "sampled"), ("digits", "directional"),
    ("mnist", "sampled"), ("mnist", "directional"),
])
def test_gradcheck_passes(base_url, http, mnist_data, name, mode):
    inputs, labels = payload(name, mnist_data)
    r = http.post(f"{base_url}/gradcheck", timeout=60,
                  json={"model": name, "inputs": inputs, "labels": labels, "mode": mode, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["passed"] is True, body
    assert body["max_error"] <= body["tolerance"] == 1e-6
    assert set(body["errors"]) == set(body["checked"])
    assert all(n > 0 for n in body["checked"].values())


def test_gradcheck_reports_wrong_labels_still_pass(base_url, http, mnist_data):
    """Wrong labels give large gradients; the check is about backprop, so it still passes."""
    inputs, labels = payload("mnist", mnist_data)
    wrong = [str((int(v) + 5) % 10) for v in labels]
    r = http.post(f"{base_url}/gradcheck", json={"model": "mnist", "inputs": inputs, "labels": wrong}, timeout=60)
    assert r.status_code == 200 and r.json()["passed"], r.text


def test_mnist_gradcheck_defaults_are_quick(base_url, http, mnist_data):
    """How long the defaults take; measured and printed, not asserted against a clock."""
    inputs, labels = payload("mnist", mnist_data, n=16)
    architecture = http.get(f"{base_url}/models/mnist", timeout=10).json()["versions"][-1]["architecture"]
    seconds = []
    for seed in range(3):
        r = http.post(f"{base_url}/gradcheck", json={"model": "mnist", "inputs": inputs, "labels": labels,
                                                    "seed": seed}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        # the defaults, as documented: sampled, 10 coordinates of each parameter tensor, tolerance 1e-6
        assert (body["mode"], body["samples"], body["tolerance"], body["epsilon"]) == ("sampled", 10, 1e-6, 1e-5)
        tensors = {f"{i}.{p}" for i, layer in enumerate(architecture["layers"]) if layer["type"] == "dense"
                   for p in ("W", "b")}
        assert set(body["checked"]) == set(body["errors"]) == tensors, body
        assert all(body["checked"][t] + body["skipped"].get(t, 0) == 10 for t in tensors), body
        assert body["passed"] is True and body["max_error"] <= 1e-6 and body["loss"] > 0, body
        seconds.append(body["seconds"])
    print(f"\nmnist /gradcheck with defaults (16 inputs): median {np.median(seconds):.3f} s")


def test_a_gradcheck_over_its_cost_bound_is_refused(base_url, http, mnist_data):
    inputs, labels = payload("mnist", mnist_data, n=64)
    r = http.post(f"{base_url}/gradcheck", json={"model": "mnist", "inputs": inputs, "labels": labels,
                                                 "mode": "directional", "samples": 100}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["code"] == "gradcheck_too_large"
    assert "GRADCHECK_MAX_COST" in r.json()["error"]["message"]


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_predict_stays_fast_while_clients_loop_on_the_largest_gradchecks(gunicorn_server, mnist_data):
    """Two clients loop on the largest gradchecks the bounds allow while a third sends /predict: at
    most WORKERS - 1 gradchecks run (the others are told to retry), so /predict's p99 stays low."""
    import threading
    import time

    import requests

    from model.io import load_model
    from service.dataplane.dataplane import Limits
    from service.dataplane.diagnostics import gradcheck_cost

    url = gunicorn_server.url
    network = load_model(served_weights("mnist")).network
    n = 1
    while gradcheck_cost(network, n + 1, "directional", 100) <= Limits().gradcheck_max_cost:
        n += 1  # the largest batch the cost bound allows (4 images for the 784-1024-1024-10 model)
    inputs, labels = payload("mnist", mnist_data, n=n)
    big = {"model": "mnist", "inputs": inputs, "labels": labels, "mode": "directional", "samples": 100}
    statuses: list[int] = []
    stop = threading.Event()

    refusals: list[tuple[str | None, str]] = []  # what each 503 said, checked below (not in the thread)
    durations: list[float] = []  # each gradcheck's own seconds

    def loop() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{url}/gradcheck", json=big, timeout=60)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    durations.append(r.json()["seconds"])
                if r.status_code == 503:
                    refusals.append((r.headers.get("Retry-After"), r.json()["error"]["code"]))
                    time.sleep(0.05)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    latencies = []
    x = mnist_data.eval_sets["test"][0]
    for i in range(150):  # a new connection each time, so both workers are reached
        start = time.perf_counter()
        r = requests.post(f"{url}/predict", json={"model": "mnist", "inputs": [x[i].tolist()]}, timeout=30)
        latencies.append(time.perf_counter() - start)
        assert r.status_code == 200
    stop.set()
    for t in threads:
        t.join(60)
    p99 = float(np.percentile(latencies, 99)) * 1000
    print(f"\n/predict beside looping gradchecks: p50 {np.median(latencies) * 1000:.1f} ms, p99 {p99:.1f} ms; "
          f"gradchecks {statuses.count(200)} run ({np.median(durations or [0]):.2f} s each), "
          f"{statuses.count(503)} told to retry")
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1
    # two loops, one slot (WORKERS - 1): whenever both ask at once, one is told to retry
    assert statuses.count(503) >= 1 and set(refusals) == {("1", "gradcheck_busy")}, refusals
    # Judged against the gradchecks' own length, not a clock: a /predict queued behind one would wait
    # about that long; one answered beside them waits a small part of it, however fast the machine.
    assert p99 / 1000 < 0.25 * float(np.median(durations)), (p99, durations)
