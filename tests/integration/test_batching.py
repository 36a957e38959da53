"""Server-side batching (batching/gevent_batcher.py) in the real gunicorn server: concurrent requests share forward
passes, each still gets its own answer (float32 policy of tests/floats.py) or its own error, a batch never
mixes model versions, a lone request is not held back, and the probes answer while big batches compute.

Every judgement is relative (counts of executed passes, one duration against another), never a clock."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from model.io import load_model, save_model
from tests.conftest import served_version, served_weights
from tests.floats import assert_probabilities_close
from tests.integration.conftest import ROOT, LocalServer
from tests.integration.test_operations import counter
from training.datasets import digits

CROWD = 16  # concurrent clients
SAMPLES = 192


def scrape(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=30).text


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return counter(after, name, **labels) - counter(before, name, **labels)


def executed(before: str, after: str, model: str) -> tuple[float, float]:
    """(forward passes run, of them with exactly one sample) between two scrapes."""
    return (delta(before, after, "nn_batch_size_count", kind="executed", model=model),
            delta(before, after, "nn_batch_size_bucket", kind="executed", model=model, le="1.0"))


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    """Each sample's answer alone (one row at a time), in-process from the same weights file."""
    net = load_model(path).network
    return np.concatenate([net.predict_proba(np.asarray(row, dtype=net.dtype).reshape(1, -1)) for row in x])


def crowd(jobs: list, send, clients: int = CROWD) -> list:
    """``send(session, job)`` for every job, from ``clients`` at once, each on its own kept-alive connection."""
    local = threading.local()

    def run(job):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return send(local.session, job)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(run, jobs))


@pytest.fixture(scope="module")
def samples(mnist_data) -> dict[str, np.ndarray]:
    x_test = mnist_data.eval_sets["test"][0]
    glyphs, noisy = digits().eval_sets["glyphs"][0], digits().eval_sets["noisy"][0]
    return {"mnist": np.asarray(x_test[:SAMPLES]).reshape(SAMPLES, -1),
            "digits": np.concatenate([glyphs, noisy])[:SAMPLES]}


@pytest.mark.parametrize("model", ["mnist", "digits"])
def test_a_crowd_shares_passes_and_each_gets_its_own_answer_or_error(base_url, samples, model):
    """32 clients send one sample each, a fifth of them invalid (a value out of range). Every valid one
    equals its sample's answer alone, every invalid one is a 422 naming its own position, and fewer passes
    ran than valid requests, some with several samples: batches formed, and a bad request failed no other."""
    x = samples[model]
    expected = reference(served_weights(model), x)
    jobs = [(i, i % 5 == 3) for i in range(len(x))]

    def send(session, job):
        i, bad = job
        row = [float(v) for v in x[i]]
        if bad:
            row[7] = 2.0
        return session.post(f"{base_url}/predict", json={"model": model, "inputs": [row]}, timeout=60)

    before = scrape(base_url)
    answers = crowd(jobs, send, clients=2 * CROWD)  # more at once: merging MNIST pays from ~4 rows here
    after = scrape(base_url)
    good = 0
    for (i, bad), r in zip(jobs, answers, strict=True):
        if bad:
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["loc"] == "inputs.0", r.text
            continue
        good += 1
        assert r.status_code == 200, r.text
        assert_probabilities_close(r.json()["predictions"][0]["probabilities"], expected[i], f"sample {i}")
    passes, single = executed(before, after, model)
    print(f"\n{model}: {good} valid requests ran in {passes:.0f} passes ({single:.0f} of one sample)")
    assert delta(before, after, "nn_batch_size_sum", kind="executed", model=model) == good
    assert passes < good and single < passes  # merged passes happened (exact counts: the load varies)


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
@pytest.mark.parametrize("idle_connections", [0, 16], ids=["its worker's only connection", "beside idle ones"])
def test_a_lone_request_waits_for_nothing(base_url, samples, idle_connections):
    """Sequential requests: each runs alone (one pass of one sample per request), and the time they spent
    queued is a small part of the time they took (a window such as MLServer's would be most of it). Alone
    in its worker a request skips the queue; beside idle connections (16: both workers hold some, but
    for a chance of 2**-16) it takes the queue's path, and must not wait there either."""
    row = [float(v) for v in samples["mnist"][0]]
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with contextlib.ExitStack() as stack:
        for _ in range(idle_connections):  # connected, silent: each holds its worker's count up
            stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
        time.sleep(0.2 if idle_connections else 0)  # accepted by the workers before the requests start
        before = scrape(base_url)
        with requests.Session() as s:
            for _ in range(20):
                assert s.post(f"{base_url}/predict", json={"model": "mnist", "inputs": [row]}, timeout=30).ok
        after = scrape(base_url)
    assert executed(before, after, "mnist") == (20, 20)
    assert delta(before, after, "nn_batch_queue_seconds_count", model="mnist") == 20
    queued = delta(before, after, "nn_batch_queue_seconds_sum", model="mnist")
    took = delta(before, after, "nn_request_duration_seconds_sum", endpoint="/predict", model="mnist")
    print(f"\n20 lone requests: {queued * 1e3:.2f} ms queued of {took * 1e3:.1f} ms in all")
    assert queued < 0.2 * took


def test_models_shows_the_batching_state(base_url):
    batching = requests.get(f"{base_url}/models/mnist", timeout=30).json()["batching"]
    assert batching["enabled"] is True and batching["mode"] == "opportunistic"
    assert batching["max_batch_size"] == 1024 and batching["max_queue_delay_microseconds"] == 0
    table = batching["versions"][served_version("mnist").name]
    assert table["merge_limit"] == 64
    assert set(table["forward_us_by_rows"]) == {"1", "2", "4", "8", "16", "32", "64"}
    costs = list(table["forward_us_by_rows"].values())
    assert all(c > 0 for c in costs) and costs == sorted(costs)


# -- versions: a batch never mixes them, also while a reload adds one ------------------------------------
def perturbed(src: Path, dst: Path, scale: float) -> Path:
    """A version with other answers: the shipped digits weights with the last layer scaled."""
    loaded = load_model(src)
    last = [layer for layer in loaded.network.layers if "W" in layer.params][-1]
    last.params["W"][...] *= scale
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in loaded.metadata.items() if k not in ("format_version", "architecture", "dtype")}
    return save_model(dst, loaded.network, meta)


def test_versions_never_mix_in_a_batch_also_during_a_reload(tmp_path, samples):
    """Versions 1 and 2 of digits served at once (VERSION_POLICY=all); a crowd asks for 1, 2 or the
    latest while version 3 appears. Every answer is its own version's (named versions exactly that one),
    to the float32 policy, and batches formed meanwhile."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "digits" / "1", repo / "digits" / "1")
    files = {1: repo / "digits" / "1" / "model.npz"}
    files[2] = perturbed(files[1], repo / "digits" / "2" / "model.npz", 0.3)
    staged = perturbed(files[1], tmp_path / "v3" / "model.npz", 3.0)
    server = LocalServer(tmp_path / "server", MODEL_DIR=str(repo), VERSION_POLICY="all", MODEL_POLL_SECONDS="0.5",
                         MODEL_SETTLE_SECONDS="0.2").start()
    try:
        x = samples["digits"]
        jobs = [(i % len(x), [1, 2, None][i % 3]) for i in range(3000)]
        added = threading.Event()

        def send(session, job):
            i, version = job
            if i == 40 and not added.is_set():  # traffic under way: version 3 arrives
                added.set()
                shutil.copytree(staged.parent, repo / "digits" / "3")
                files[3] = repo / "digits" / "3" / "model.npz"
            body = {"model": "digits", "inputs": [[float(v) for v in x[i]]],
                    **({"version": version} if version else {})}
            return job, session.post(f"{server.url}/predict", json=body, timeout=60)

        before = scrape(server.url)
        answers = crowd(jobs, send)
        after = scrape(server.url)
        expected = {v: reference(path, x) for v, path in files.items()}
        seen = set()
        for (i, version), r in answers:
            assert r.status_code == 200, r.text
            got = r.json()["version"]
            assert got == version or (version is None and got in (2, 3)), (version, got)
            seen.add(got)
            assert_probabilities_close(r.json()["predictions"][0]["probabilities"], expected[got][i],
                                       f"sample {i}, version {got}")
        passes, single = executed(before, after, "digits")
        print(f"\nversions seen {sorted(seen)}; {len(jobs)} requests in {passes:.0f} passes ({single:.0f} alone)")
        assert 3 in seen  # the reload happened during the traffic
        assert passes < len(jobs) and single < passes
    finally:
        assert server.stop() == 0


# -- the probes keep answering while big batches compute --------------------------------------------------
def binary_v2_body(x: np.ndarray) -> tuple[bytes, int]:
    data = np.ascontiguousarray(x, dtype="<f4")
    head = json.dumps({"inputs": [{"name": "input", "shape": list(data.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": data.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return head + data.tobytes(), len(head)


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_probes_answer_while_big_batches_compute(tmp_path, mnist_data):
    """One worker; 4 connections keep sending 1024-image MNIST batches to the large network (V2 binary,
    cheap to decode, so the forward pass is most of each). /healthz and /readyz, asked meanwhile, are
    each answered within a small part of one such request's time: they do not wait for the forward
    passes (the worker runs them on its model thread; inline, a probe waited for the pass under way and
    the ones ready before it)."""
    x = np.asarray(mnist_data.eval_sets["test"][0][:1024]).reshape(1024, -1)
    body, header_length = binary_v2_body(x)
    # mnist version 1 (784-1024-1024-10, kept unserved in the shipped repository): its passes are long
    # enough to be most of a request; the served 784-300-10's are shorter than reading the body.
    server = LocalServer(tmp_path, WORKERS="1", VERSION_POLICY="specific:1").start()
    big: list[float] = []
    probes: list[float] = []
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                start = time.perf_counter()
                r = s.post(f"{server.url}/v2/models/mnist/infer", data=body, timeout=120,
                           headers={"Inference-Header-Content-Length": str(header_length)})
                assert r.status_code == 200, r.text
                big.append(time.perf_counter() - start)

    try:
        loaders = [threading.Thread(target=load) for _ in range(4)]
        for t in loaders:
            t.start()
        deadline = time.monotonic() + 120
        while len(big) < 4 and time.monotonic() < deadline:  # every connection busy
            time.sleep(0.05)
        with requests.Session() as s:
            while (len(probes) < 40 or len(big) < 24) and time.monotonic() < deadline:
                for path in ("/healthz", "/readyz"):
                    start = time.perf_counter()
                    assert s.get(f"{server.url}{path}", timeout=60).status_code == 200
                    probes.append(time.perf_counter() - start)
                time.sleep(0.02)
        stop.set()
        for t in loaders:
            t.join(120)
        typical = statistics.median(big)
        print(f"\n{len(big)} batches of 1024, median {typical * 1e3:.0f} ms; {len(probes)} probes, "
              f"median {statistics.median(probes) * 1e3:.1f} ms, worst {max(probes) * 1e3:.1f} ms")
        assert len(big) >= 24 and len(probes) >= 40
        assert statistics.quantiles(probes, n=20)[-1] < 0.25 * typical  # the 95th percentile
    finally:
        stop.set()
        assert server.stop() == 0
