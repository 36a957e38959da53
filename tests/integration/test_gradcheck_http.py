"""/gradcheck over HTTP: passes on every shipped model with real inputs, in every mode allowed."""

from __future__ import annotations

import numpy as np
import pytest

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
    """The figure the README quotes; measured and printed, not asserted against a clock."""
    inputs, labels = payload("mnist", mnist_data, n=16)
    seconds = []
    for seed in range(3):
        r = http.post(f"{base_url}/gradcheck", json={"model": "mnist", "inputs": inputs, "labels": labels,
                                                    "seed": seed}, timeout=60)
        assert r.status_code == 200
        seconds.append(r.json()["seconds"])
    print(f"\nmnist /gradcheck with defaults (16 inputs): median {np.median(seconds):.3f} s")
