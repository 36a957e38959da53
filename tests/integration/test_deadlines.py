"""Deadlines and the queue policy (service/batching/queue_policy.py) in the real server, in every protocol.

The servers here hold every batch for ``MAX_QUEUE_DELAY_MICROSECONDS`` (1 s, its largest) while an idle
connection keeps the worker from thinking a request is alone, so a request reliably waits in the
queue: one whose own timeout is shorter is answered at its deadline, uncomputed, in its protocol's
shape (504 / gRPC DEADLINE_EXCEEDED); with ``MAX_QUEUE_SIZE`` requests waiting, one more is refused at
once (503 + Retry-After / UNAVAILABLE) and the probes still answer. Every bound here is loose (a
shared 2-core machine): the 1 s hold against a 40 ms deadline, and nothing judged by a clock finer than
half the hold."""

from __future__ import annotations

import gzip
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import LocalServer
from tests.integration.test_operations import counter

pytestmark = pytest.mark.serial  # deadlines of tens of ms, a queue held full for one second: run alone (Makefile)

HOLD = {"WORKERS": "1", "MAX_QUEUE_DELAY_MICROSECONDS": "1000000", "PREFERRED_BATCH_SIZE": "64"}
HALF_THE_HOLD = 0.5  # seconds: a request answered sooner was not kept until its batch ran
XOR = [[0.0, 1.0]]
DEADLINE_US = 40_000


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A server holding each batch 1 s, and an idle connection to its one worker."""
    server = LocalServer(tmp_path_factory.mktemp("held"), **HOLD).start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    yield server
    idle.close()
    server.stop()


def http_calls(url: str, timeout_us: int | None) -> dict[str, tuple[str, dict, dict]]:
    """(url, json body, headers) of one xor request per HTTP protocol, with the timeout each protocol's way."""
    header = {"X-Timeout-Microseconds": str(timeout_us)} if timeout_us is not None else {}
    v2 = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 1.0]}]}
    if timeout_us is not None:
        v2["parameters"] = {"timeout": timeout_us}
    return {"predict": (f"{url}/predict", {"model": "xor", "inputs": XOR}, header),
            "v1": (f"{url}/v1/models/xor:predict", {"instances": XOR}, header),
            "v2": (f"{url}/v2/models/xor/infer", v2, {})}


def waiting_requests(server: LocalServer) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return counter(text, "nn_requests_in_progress", model="xor", state="waiting")


def error_code(protocol: str, body: dict) -> str:
    """The error's code or message: own JSON nests it, V1 and V2 give a string."""
    return body["error"]["code"] if protocol == "predict" else body["error"]


@pytest.mark.parametrize("protocol", ["predict", "v1", "v2"])
@pytest.mark.parametrize("front", ["middleware", "flask"])
def test_a_request_past_its_deadline_in_the_queue_is_answered_then_uncomputed(held, protocol, front):
    url, body, headers = http_calls(held.url, DEADLINE_US)[protocol]
    data = json.dumps(body).encode()
    if front == "flask":  # a compressed body is decoded by Flask's hook: the views' path, not the middleware's
        data, headers = gzip.compress(data), {**headers, "Content-Encoding": "gzip"}
    before = requests.get(f"{held.url}/metrics", timeout=10).text
    start = time.perf_counter()
    r = requests.post(url, data=data, headers={**headers, "Content-Type": "application/json"}, timeout=10)
    took = time.perf_counter() - start
    assert r.status_code == 504, r.text
    text = error_code(protocol, r.json())
    assert "deadline" in text, text
    assert 0.03 < took < HALF_THE_HOLD, took  # at its deadline (40 ms), not when the hold ends
    after = requests.get(f"{held.url}/metrics", timeout=10).text
    assert counter(after, "nn_requests_shed_total", reason="deadline") - \
        counter(before, "nn_requests_shed_total", reason="deadline") == 1
    # not computed: no pass ran for it
    assert counter(after, "nn_batch_size_count", model="xor", kind="executed") == \
        counter(before, "nn_batch_size_count", model="xor", kind="executed")


@pytest.mark.parametrize("protocol", ["predict", "v1", "v2"])
def test_without_a_deadline_or_with_a_long_one_the_request_is_answered(held, protocol):
    for timeout in (None, 2_000_000):
        url, body, headers = http_calls(held.url, timeout)[protocol]
        r = requests.post(url, json=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("header", ["-5", "1.5", "soon", "9999999999999"])
def test_a_bad_timeout_is_a_400(held, header):
    r = requests.post(f"{held.url}/predict", json={"model": "xor", "inputs": XOR},
                      headers={"X-Timeout-Microseconds": header}, timeout=10)
    assert r.status_code == 400 and "microseconds" in r.json()["error"]["message"], r.text
    r = requests.post(f"{held.url}/v2/models/xor/infer", json={
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 1.0]}],
        "parameters": {"timeout": "soon"}}, timeout=10)
    assert r.status_code == 400 and "microseconds" in r.json()["error"], r.text


def test_grpc_deadlines_are_deadline_exceeded(held):
    client = triton_grpc.InferenceServerClient(held.grpc_target)
    tensor = triton_grpc.InferInput("input", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array(XOR, dtype=np.float32))
    # Triton's timeout parameter (µs), already past when the call reaches the data plane
    with pytest.raises(InferenceServerException) as err:
        client.infer("xor", [tensor], parameters={"timeout": 1})
    assert "DEADLINE_EXCEEDED" in str(err.value.status()) and "deadline" in err.value.message()
    assert client.infer("xor", [tensor], client_timeout=5).as_numpy("probabilities").shape == (1, 2)
    channel = grpc.insecure_channel(held.grpc_target)  # a raw stub: a bad timeout is INVALID_ARGUMENT
    from service.grpc.stubs import grpc_service_pb2 as pb
    from service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
    request = pb.ModelInferRequest(model_name="xor", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 2], contents=pb.InferTensorContents(fp32_contents=[0, 1]))])
    request.parameters["timeout"].string_param = "soon"
    with pytest.raises(grpc.RpcError) as rpc:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_the_server_default_deadline_applies_and_a_request_may_shorten_it(tmp_path):
    server = LocalServer(tmp_path, **HOLD, DEFAULT_TIMEOUT_MICROSECONDS="60000").start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        start = time.perf_counter()
        r = requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": XOR}, timeout=10)
        assert r.status_code == 504 and 0.05 < time.perf_counter() - start < HALF_THE_HOLD, r.text
        start = time.perf_counter()  # asking for longer than the server allows: the server's stands
        r = requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": XOR},
                          headers={"X-Timeout-Microseconds": "5000000"}, timeout=10)
        assert r.status_code == 504 and time.perf_counter() - start < HALF_THE_HOLD, r.text
    finally:
        idle.close()
        server.stop()


def test_a_full_queue_refuses_at_once_and_the_probes_still_answer(tmp_path):
    server = LocalServer(tmp_path, **HOLD, MAX_QUEUE_SIZE="2").start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        with ThreadPoolExecutor(2) as pool:  # two requests wait out the 1 s hold: the queue is full
            waiting = [pool.submit(requests.post, f"{server.url}/predict", json={"model": "xor", "inputs": XOR},
                                   timeout=10) for _ in range(2)]
            deadline = time.monotonic() + 0.8
            while waiting_requests(server) < 2:  # both in the queue (read from the worker itself)
                assert time.monotonic() < deadline, "the two requests did not reach the queue"
            for protocol, (url, body, headers) in http_calls(server.url, None).items():
                start = time.perf_counter()
                r = requests.post(url, json=body, headers=headers, timeout=10)
                took = time.perf_counter() - start
                assert r.status_code == 503 and r.headers["Retry-After"] == "1", (protocol, r.text)
                assert "queue_full" in json.dumps(r.json()) or "MAX_QUEUE_SIZE" in json.dumps(r.json())
                assert took < HALF_THE_HOLD, (protocol, took)  # at once, not after the hold
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200  # never shed
            assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 200
            assert [f.result().status_code for f in waiting] == [200, 200]
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        assert counter(metrics, "nn_requests_shed_total", reason="queue_full") == 3
        assert requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": XOR},
                             timeout=10).status_code == 200  # the queue emptied: served again
    finally:
        idle.close()
        server.stop()


@pytest.mark.parametrize("batching", ["on", "off"])
def test_grpc_refuses_unavailable_when_its_queue_is_full(tmp_path, mnist_data, batching):
    """gRPC's one slot computes, whether the batcher (GRPC_BATCHING) or the plain runner holds it: 12 calls
    of 1,024 digits at once, one waiting allowed; the others are refused UNAVAILABLE, and none fails
    otherwise. (Without batching, calls waiting for the slot once went uncounted: all 40 accepted.) A refusal
    says when to come back as gRPC's retry policies read it, in the ``grpc-retry-pushback-ms`` trailer (what
    REST's Retry-After says), which only a raw stub shows."""
    server = LocalServer(tmp_path, WORKERS="1", GRPC_WORKERS="1", GRPC_THREADS="1", MAX_QUEUE_SIZE="1",
                         GRPC_BATCHING=batching).start()
    x = np.ascontiguousarray(np.asarray(mnist_data.eval_sets["test"][0][:1024]).reshape(1024, 784), dtype=np.float32)
    try:
        def call(_):
            client = triton_grpc.InferenceServerClient(server.grpc_target)
            tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                client.infer("mnist", [tensor])
                return "ok"
            except InferenceServerException as exc:
                return f"{exc.status()} {exc.message()}"
        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(call, range(12)))
        refused = [o for o in outcomes if o != "ok"]
        assert refused and all("UNAVAILABLE" in o and "MAX_QUEUE_SIZE" in o for o in refused), outcomes
        assert "ok" in outcomes

        from service.grpc.stubs import grpc_service_pb2 as pb
        from service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
        request = pb.ModelInferRequest(model_name="mnist", raw_input_contents=[x.tobytes()], inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape))])

        def raw_call(_):
            with grpc.insecure_channel(server.grpc_target) as channel:
                try:
                    pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
                    return "OK", {}
                except grpc.RpcError as exc:
                    return exc.code().name, dict(exc.trailing_metadata() or ())
        with ThreadPoolExecutor(12) as pool:
            raw = list(pool.map(raw_call, range(12)))
        assert {code for code, _ in raw} == {"OK", "UNAVAILABLE"}, raw
        assert all(trailer.get("grpc-retry-pushback-ms") == "1000" for code, trailer in raw if code != "OK"), raw
    finally:
        server.stop()


def test_grpc_without_batching_counts_a_deadline_from_the_calls_arrival(tmp_path, mnist_data):
    """GRPC_BATCHING=off, one slot: calls waiting for it keep their deadline as it stood when they arrived.
    It was read again after the wait and counted from the arrival, so the wait was subtracted twice and
    calls were refused DEADLINE_EXCEEDED well before their deadline (0.20 s of 0.30)."""
    server = LocalServer(tmp_path, WORKERS="1", GRPC_WORKERS="1", GRPC_THREADS="1", GRPC_BATCHING="off").start()
    x = np.ascontiguousarray(np.asarray(mnist_data.eval_sets["test"][0][:1024]).reshape(1024, 784), dtype=np.float32)
    deadline = 0.2
    try:
        def call(_):
            client = triton_grpc.InferenceServerClient(server.grpc_target)
            tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            start = time.perf_counter()
            try:
                client.infer("mnist", [tensor], client_timeout=deadline)
                return "ok", time.perf_counter() - start
            except InferenceServerException as exc:
                return str(exc.status()), time.perf_counter() - start
        with ThreadPoolExecutor(48) as pool:
            outcomes = list(pool.map(call, range(48)))
        expired = [seconds for status, seconds in outcomes if "DEADLINE_EXCEEDED" in status]
        assert {status for status, _ in outcomes} <= {"ok", "StatusCode.DEADLINE_EXCEEDED"}, outcomes
        assert expired, outcomes  # 48 passes of 1,024 digits (MAX_BATCH) on one slot outlast 0.2 s
        assert min(expired) >= deadline * 0.95, sorted(expired)[:5]  # none refused before its deadline
    finally:
        server.stop()


@pytest.mark.parametrize("env", [{}, {"BATCHING": "off", "GRPC_PORT": "0"}], ids=["as shipped", "no batching, no gRPC"])
def test_the_autoscaling_gauge_is_there_at_zero_before_any_request(tmp_path, env):
    """The HPA's metric appeared only with the first inference, and an HPA that cannot read a metric
    of its rule does not scale down: every served model's two series now exist from the start (with
    batching off and no gRPC process too: there the workers made none)."""
    server = LocalServer(tmp_path, **env).start()
    try:
        lines = [line for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines()
                 if line.startswith("nn_requests_in_progress{")]
        series = {(m, s) for m in ("digits", "mnist", "xor") for s in ("waiting", "running")}
        assert {(line.split('model="')[1].split('"')[0], line.split('state="')[1].split('"')[0])
                for line in lines} == series
        assert all(float(line.rsplit(" ", 1)[1]) == 0.0 for line in lines)
    finally:
        assert server.stop() == 0
