"""Server-side batching of gRPC calls (service/batching/thread_batcher.py) in the real ``python -m service``: concurrent
tritonclient.grpc calls share forward passes (seen in ``nn_batch_size{kind="executed"}``), each answer
equals /predict's to the float32 policy, a lone call runs alone, and Triton's ModelConfig over gRPC says
what the gRPC process does (``GRPC_BATCHING``) while REST's says what the HTTP workers do.

One gRPC process with one pass at a time (``GRPC_WORKERS=1``, ``GRPC_THREADS=1``), so every call of the
crowd meets the same batcher. The crowd asks MNIST version 1 (784-1024-1024-10, ~0.3 ms a sample here):
calls merge only when they arrive while a pass runs, and the newest version's pass (784-300-10, ~50 us)
is over too soon for that to happen reliably. Judgements are counts of passes, never a clock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.floats import assert_probabilities_close
from tests.integration.conftest import LocalServer
from tests.integration.test_batching import delta, executed, scrape

grpcclient = pytest.importorskip("tritonclient.grpc")
from tests.integration.test_grpc import raw_infer, wait_grpc  # noqa: E402

CROWD = 16
SAMPLES = 256


VERSION = 1  # the larger MNIST network


def start(tmp_path, **env: str) -> LocalServer:
    server = LocalServer(tmp_path, WORKERS="1", GRPC_WORKERS="1", GRPC_THREADS="1", VERSION_POLICY="all",
                         **env).start()
    wait_grpc(server.grpc_target)
    return server


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("grpc-batched"))
    yield server
    assert server.stop() == 0, server.read_log()[-3000:]


def grpc_crowd(target: str, x: np.ndarray, clients: int = CROWD) -> list[np.ndarray]:
    """One sample per call, ``clients`` calls in flight, each client on a connection of its own."""
    local = threading.local()

    def one(i: int) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(
                target, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        return raw_infer(local.client, "mnist", x[i:i + 1], model_version=str(VERSION)).as_numpy("probabilities")[0]

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(len(x))))


def test_concurrent_grpc_calls_share_passes_each_with_its_own_answer(batched, mnist_data):
    x = mnist_data.eval_sets["test"][0][:SAMPLES].reshape(SAMPLES, 28, 28).astype(np.float32)
    r = requests.post(f"{batched.url}/predict", json={"model": "mnist", "version": VERSION, "inputs": x.tolist()},
                      timeout=60)
    assert r.status_code == 200, r.text
    expected = np.array([p["probabilities"] for p in r.json()["predictions"]])
    before = scrape(batched.url)
    answers = grpc_crowd(batched.grpc_target, x)
    after = scrape(batched.url)
    for i, got in enumerate(answers):
        assert_probabilities_close(got, expected[i], f"sample {i}")
    passes, single = executed(before, after, "mnist")
    print(f"\n{SAMPLES} gRPC calls of one sample ran in {passes:.0f} passes ({single:.0f} of one sample)")
    assert delta(before, after, "nn_batch_size_sum", kind="executed", model="mnist") == SAMPLES
    assert passes < SAMPLES and single < passes  # merged passes happened (how many: the load decides)


def test_a_lone_grpc_call_runs_alone(batched, mnist_data):
    x = mnist_data.eval_sets["test"][0][:1].reshape(1, 28, 28).astype(np.float32)
    before = scrape(batched.url)
    with grpcclient.InferenceServerClient(batched.grpc_target) as client:
        for _ in range(20):
            raw_infer(client, "mnist", x, model_version=str(VERSION))
    after = scrape(batched.url)
    assert executed(before, after, "mnist") == (20, 20)


def test_model_config_reports_each_transports_batching(batched, tmp_path):
    """Batching on (the default): both transports' configurations say so, and agree. GRPC_BATCHING=off:
    the gRPC process runs each call alone and its ModelConfig has no dynamic_batching, while REST's
    (the HTTP workers, BATCHING on) keeps it; the crowd then runs one pass per call."""
    rest = requests.get(f"{batched.url}/v2/models/mnist/config", timeout=10).json()
    with grpcclient.InferenceServerClient(batched.grpc_target) as client:
        got = client.get_model_config("mnist", as_json=True)["config"]
    assert rest["dynamic_batching"] == {"preferred_batch_size": [], "max_queue_delay_microseconds": 0}
    assert "dynamic_batching" in got
    server = start(tmp_path, GRPC_BATCHING="off")
    try:
        rest = requests.get(f"{server.url}/v2/models/mnist/config", timeout=10).json()
        with grpcclient.InferenceServerClient(server.grpc_target) as client:
            got = client.get_model_config("mnist", as_json=True)["config"]
        assert "dynamic_batching" in rest and "dynamic_batching" not in got
        x = np.zeros((64, 28, 28), np.float32)
        before = scrape(server.url)
        grpc_crowd(server.grpc_target, x)
        assert executed(before, scrape(server.url), "mnist") == (64, 64)  # unbatched: a pass per call
    finally:
        assert server.stop() == 0
