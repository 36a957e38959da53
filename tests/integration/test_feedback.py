"""Capture and feedback against the real server (gunicorn, 2 workers, gRPC on), judged by what is on disk.

Every protocol's sampled inference must land in ``CAPTURE_DIR`` as CloudEvents carrying its request id,
the exact float32 inputs the model ran on and the probabilities it answered; ``POST /feedback`` labels
them (404, 409, 422, duplicates, token), counts live accuracy per version, and stores the labels.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from service.dataplane.feedback import FRESH_WAIT
from tests.integration.conftest import LocalServer, wait_ready
from tests.integration.test_connection_share import workers
from tests.integration.test_supervisor import grpc_pids

grpcclient = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

TOKEN = "feedback-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("capture")


@pytest.fixture(scope="module")
def server(capture_dir, tmp_path_factory):
    srv = LocalServer(tmp_path_factory.mktemp("feedback-server"), CAPTURE_DIR=str(capture_dir),
                      FEEDBACK_TOKEN=TOKEN).start()
    yield srv
    assert srv.stop() == 0, srv.read_log()[-3000:]


def events_of(directory: Path) -> list[dict]:
    out = []
    for path in sorted(directory.rglob("*.jsonl")):  # captures, and feedback/ beneath
        data = path.read_bytes()
        for line in data[:data.rfind(b"\n") + 1].splitlines():
            out.append(json.loads(line))
    return out


def captured(directory: Path, rid: str, timeout: float = 5.0) -> tuple[dict, dict]:
    """The request and response events of ``rid``, once written (the writer flushes every 50 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {e["type"].rsplit(".", 1)[1]: e for e in events_of(directory) if e.get("id") == rid}
        if {"request", "response"} <= set(found) or time.monotonic() > deadline:
            assert {"request", "response"} <= set(found), f"{rid} not captured: {sorted(found)}"
            return found["request"], found["response"]
        time.sleep(0.05)


def tensor(data: dict, name: str) -> np.ndarray:
    t = next(t for t in data.get("inputs", data.get("outputs", [])) if t["name"] == name)
    dtype = np.float32 if t["datatype"] == "FP32" else object
    return np.asarray(t["data"], dtype=np.float64 if dtype is np.float32 else dtype).astype(dtype).reshape(t["shape"])


def check_capture(directory: Path, rid: str, x: np.ndarray, probabilities: np.ndarray, model: str) -> None:
    request, response = captured(directory, rid)
    for event in (request, response):
        assert event["specversion"] == "1.0" and event["inferenceservicename"] == model
        assert event["datacontenttype"] == "application/json" and event["time"].endswith("Z")
    np.testing.assert_array_equal(tensor(request["data"], "input"), x.reshape(len(x), -1).astype(np.float32))
    np.testing.assert_array_equal(tensor(response["data"], "probabilities"), probabilities.astype(np.float32))
    labels = next(t for t in response["data"]["outputs"] if t["name"] == "label")
    assert labels["shape"] == [len(x)] and labels["data"] == [str(k) for k in probabilities.argmax(axis=1)]


def mnist_rows(samples, n=2) -> np.ndarray:
    return samples["mnist"][:n].reshape(n, -1)


def test_own_json_is_captured_exactly(server, capture_dir, samples):
    x = mnist_rows(samples)
    r = requests.post(f"{server.url}/predict", json={"model": "mnist", "inputs": x.tolist()}, timeout=10)
    assert r.status_code == 200
    probs = np.array([p["probabilities"] for p in r.json()["predictions"]], np.float32)
    check_capture(capture_dir, r.headers["X-Request-ID"], x, probs, "mnist")


def test_a_clients_request_id_names_its_capture(server, capture_dir, samples):
    x = samples["xor"]
    r = requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": x.tolist()},
                      headers={"X-Request-ID": "client-id-1"}, timeout=10)
    assert r.headers["X-Request-ID"] == "client-id-1"
    probs = np.array([p["probabilities"] for p in r.json()["predictions"]], np.float32)
    check_capture(capture_dir, "client-id-1", x, probs, "xor")


def test_v1_is_captured(server, capture_dir, samples):
    x = mnist_rows(samples)
    r = requests.post(f"{server.url}/v1/models/mnist:predict", json={"instances": x.tolist()}, timeout=10)
    assert r.status_code == 200
    check_capture(capture_dir, r.headers["X-Request-ID"], x, np.array(r.json()["predictions"], np.float32), "mnist")


def test_v2_json_and_binary_are_captured(server, capture_dir, samples):
    x = mnist_rows(samples)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = requests.post(f"{server.url}/v2/models/mnist/infer", json=body, timeout=10)
    assert r.status_code == 200
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    check_capture(capture_dir, r.headers["X-Request-ID"], x, np.array(out["data"], np.float32).reshape(out["shape"]),
                  "mnist")
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    r = requests.post(f"{server.url}/v2/models/mnist/infer", data=head + x.astype("<f4").tobytes(),
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=10)
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    probs = np.frombuffer(r.content[length:], "<f4").reshape(len(x), -1)
    check_capture(capture_dir, r.headers["X-Request-ID"], x, probs, "mnist")


def test_grpc_is_captured_and_answers_the_id(server, capture_dir, samples):
    x = mnist_rows(samples)
    client = grpcclient.InferenceServerClient(server.grpc_target)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mnist", [inp], request_id="grpc-call-1")
    assert result.get_response().id == "grpc-call-1"
    check_capture(capture_dir, "grpc-call-1", x, result.as_numpy("probabilities"), "mnist")
    anonymous = client.infer("mnist", [inp])
    rid = anonymous.get_response().id  # none sent: the server made one, and says which
    assert len(rid) == 32
    check_capture(capture_dir, rid, x, anonymous.as_numpy("probabilities"), "mnist")


def predicted(server, x, model="mnist") -> tuple[str, list[str]]:
    r = requests.post(f"{server.url}/predict", json={"model": model, "inputs": x.tolist()}, timeout=10)
    assert r.status_code == 200
    return r.headers["X-Request-ID"], [p["label"] for p in r.json()["predictions"]]


def feedback(server, body, headers=AUTH):
    return requests.post(f"{server.url}/feedback", json=body, headers=headers, timeout=10)


def live_accuracy(server, model="mnist") -> dict[int, dict]:
    info = requests.get(f"{server.url}/models/{model}", timeout=10).json()
    return {v["version"]: v.get("feedback") for v in info["versions"]}


def test_feedback_labels_a_capture_once_and_counts_it(server, capture_dir, samples):
    x = mnist_rows(samples, 1)
    rid, [label] = predicted(server, x)
    captured(capture_dir, rid)
    before = live_accuracy(server)
    r = feedback(server, {"id": rid, "label": label})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == 1
    [result] = body["results"]
    assert result == {"id": rid, "model": "mnist", "version": result["version"], "labels": [label],
                      "predicted": [label], "correct": [True], "duplicate": False}
    again = feedback(server, {"id": rid, "label": label})  # a retry: same answer, nothing new stored
    assert again.status_code == 200 and again.json()["stored"] == 0 and again.json()["results"][0]["duplicate"]
    other = next(str(d) for d in range(10) if str(d) != label)
    conflict = feedback(server, {"id": rid, "label": other})
    assert conflict.status_code == 409 and label in conflict.json()["error"]["message"]
    stored = [e for e in events_of(capture_dir) if e["type"] == "numpy-nets.inference.feedback"
              and e.get("subject") == rid]
    assert len(stored) == 1 and stored[0]["data"]["labels"] == [label]
    after = live_accuracy(server)[result["version"]]
    was = before.get(result["version"]) or {"labelled": 0, "right": 0}
    assert (after["labelled"], after["right"]) == (was["labelled"] + 1, was["right"] + 1)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert f'nn_feedback_total{{model="mnist",outcome="right",version="{result["version"]}"}}' in metrics


def test_a_wrong_answer_counts_as_wrong_and_a_batch_takes_labels(server, capture_dir, samples):
    x = mnist_rows(samples, 3)
    rid, labels = predicted(server, x)
    captured(capture_dir, rid)
    wrong = [labels[0], labels[1], next(str(d) for d in range(10) if str(d) != labels[2])]
    r = feedback(server, [{"id": rid, "labels": wrong}])
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["correct"] == [True, True, False]
    short = feedback(server, {"id": rid, "labels": wrong[:2]})
    assert short.status_code == 422


def test_feedback_errors_say_what_is_wrong(server, capture_dir, samples):
    missing = feedback(server, {"id": "never-captured", "label": "7"})
    assert missing.status_code == 404 and "never-captured" in missing.json()["error"]["message"]
    rid, _ = predicted(server, mnist_rows(samples, 1))
    captured(capture_dir, rid)
    unknown = feedback(server, {"id": rid, "label": "cat"})
    assert unknown.status_code == 422 and "cat" in unknown.json()["error"]["message"]
    for body in ({"id": rid}, {"id": rid, "label": "7", "labels": ["7"]}, {"id": "bad id\n", "label": "7"},
                 {"id": rid, "label": "7", "extra": 1}, [], "7", {"model": "mnist", "inputs": [[0.5] * 784]}):
        r = feedback(server, body)
        assert r.status_code == 422, (body, r.text)
    # a list is stored all or none: one unknown id refuses the whole body
    rid2, [label2] = predicted(server, mnist_rows(samples, 1))
    captured(capture_dir, rid2)
    r = feedback(server, [{"id": rid2, "label": label2}, {"id": "nope", "label": "1"}])
    assert r.status_code == 404
    assert feedback(server, {"id": rid2, "label": label2}).json()["stored"] == 1


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_unknown_ids_do_not_hold_the_background_thread(server):
    """Feedback for an id not captured (yet) is looked for again for FRESH_WAIT before its 404. That wait
    is the request's own: it must not hold its worker's one background thread, which explanations and
    gradchecks share, so a client sending made-up ids delays nobody else."""
    refused = []

    def made_up(i: int) -> None:
        refused.append(feedback(server, {"id": f"made-up-{i}", "label": "1"}).status_code)

    senders = [threading.Thread(target=made_up, args=(i,)) for i in range(16)]  # ~8 a worker
    for t in senders:
        t.start()
    time.sleep(0.1)
    start = time.perf_counter()
    explained = [requests.post(f"{server.url}/explain", json={"model": "xor", "inputs": [[0, 1]], "method": "saliency"},
                               timeout=30).status_code for _ in range(4)]  # a new connection each: both workers
    took = time.perf_counter() - start
    for t in senders:
        t.join(30)
    assert refused == [404] * 16 and explained == [200] * 4
    # held there, an explanation would queue behind ~8 waits of FRESH_WAIT (~4 s); here, behind none
    assert took < FRESH_WAIT, took


def test_a_reused_request_id_with_another_answer_cannot_be_labelled(server, capture_dir):
    """A client that reuses a request id for other inputs: a label for that id could be either request's.
    Refused (409) rather than stored against one of them; a retry of the same request is no ambiguity."""
    headers = {"X-Request-ID": "reused-id-for-two-requests"}
    for inputs in ([[0, 0]], [[0, 0]]):  # a retry: the same request twice
        assert requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": inputs}, headers=headers,
                             timeout=10).status_code == 200
    wait_for_responses(capture_dir, headers["X-Request-ID"], 2)
    assert feedback(server, {"id": headers["X-Request-ID"], "label": "0"}).status_code == 200
    headers = {"X-Request-ID": "reused-id-for-other-inputs"}
    answers = []
    for inputs in ([[0, 0]], [[1, 0]]):  # XOR answers 0, then 1
        r = requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": inputs}, headers=headers, timeout=10)
        answers.append(r.json()["predictions"][0]["label"])
    assert answers == ["0", "1"]
    wait_for_responses(capture_dir, headers["X-Request-ID"], 2)
    r = feedback(server, {"id": headers["X-Request-ID"], "label": "1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "ambiguous_request_id", r.text
    assert not [e for e in events_of(capture_dir) if e["type"] == "numpy-nets.inference.feedback"
                and e.get("subject") == headers["X-Request-ID"]]  # nothing stored


def wait_for_responses(directory: Path, rid: str, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len([e for e in events_of(directory) if e.get("id") == rid and e["type"].endswith(".response")]) < count:
        assert time.monotonic() < deadline, f"{rid}: fewer than {count} responses captured"
        time.sleep(0.05)


def test_a_labelled_example_is_checked_run_and_stored(server, capture_dir, samples):
    x = mnist_rows(samples, 2)
    _, labels = predicted(server, x)
    r = feedback(server, {"model": "mnist", "inputs": x.tolist(), "labels": labels})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["predicted"] == labels and result["correct"] == [True, True]
    stored = [e for e in events_of(capture_dir) if e.get("id") == result["id"]]
    assert len(stored) == 1
    np.testing.assert_array_equal(tensor(stored[0]["data"], "input"), x.astype(np.float32))
    out_of_range = feedback(server, {"model": "mnist", "inputs": [[2.0] * 784], "labels": ["1"]})
    assert out_of_range.status_code == 422
    assert feedback(server, {"model": "mnist", "inputs": x.tolist(), "labels": ["1"]}).status_code == 422


def test_feedback_needs_the_token(server, capture_dir, samples):
    rid, [label] = predicted(server, mnist_rows(samples, 1))
    assert feedback(server, {"id": rid, "label": label}, headers={}).status_code == 401
    assert feedback(server, {"id": rid, "label": label}, headers={"Authorization": "Bearer wrong"}).status_code == 403


def test_no_client_text_reaches_the_log_or_the_metrics(server, capture_dir, samples):
    rid, _ = predicted(server, mnist_rows(samples, 1))
    captured(capture_dir, rid)
    forged = 'x"}\n{"forged": true} \u2028\x1b[31m'
    feedback(server, {"id": rid, "label": forged})
    feedback(server, {"model": "mnist\n", "inputs": [[0.0] * 784], "labels": [forged]})
    feedback(server, {"id": forged, "label": "1"})
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert "forged" not in metrics
    time.sleep(0.2)
    for line in server.read_log().splitlines():
        if "forged" in line:  # only ever inside a JSON log line, escaped: never a line of its own
            assert not line.startswith('{"forged"')
            json.loads(line)


def test_openapi_lists_feedback(server):
    spec = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert "/feedback" in spec["paths"] and "post" in spec["paths"]["/feedback"]



def test_a_worker_that_cannot_use_the_capture_dir_serves_without_it(tmp_path):
    """The directory was usable at start, then not (here: a file in its place): workers started since
    say so in the log and answer predictions, with capture and feedback off, rather than fail to boot."""
    directory = tmp_path / "capture"
    srv = LocalServer(tmp_path / "server", CAPTURE_DIR=str(directory), GRPC_PORT="0").start()
    try:
        directory.rename(tmp_path / "moved-away")
        directory.write_text("not a directory")
        old = workers(srv)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (len(workers(srv)) < 2 or set(workers(srv)) & set(old)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers(srv)) == 2 and not set(workers(srv)) & set(old), srv.read_log()[-4000:]
        wait_ready(srv.url)
        with requests.Session() as s:
            for _ in range(8):
                r = s.post(f"{srv.url}/predict", json={"model": "xor", "inputs": [[0, 1]]}, timeout=10)
                assert r.status_code == 200, r.text
            r = s.post(f"{srv.url}/feedback", json={"id": r.headers["X-Request-ID"], "label": "1"}, timeout=10)
            assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_off", r.text
        new = workers(srv)

        def said_off(pid: int) -> bool:  # an old worker may have said it too, if it booted after the swap
            return any(f'"pid":{pid},' in line and "capture and feedback off in this worker" in line
                       for line in srv.read_log().splitlines())

        deadline = time.monotonic() + 10
        while not all(map(said_off, new)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(map(said_off, new)), srv.read_log()[-3000:]
    finally:
        srv.stop()


def test_a_grpc_process_that_cannot_use_the_capture_dir_serves_without_it(tmp_path):
    """The same for a gRPC process the supervisor restarts after CAPTURE_DIR became unusable: it says
    so in the log and answers calls, with capture off, rather than fail to start again and again."""
    directory = tmp_path / "capture"
    srv = LocalServer(tmp_path / "server", CAPTURE_DIR=str(directory), WORKERS="1").start()
    try:
        directory.rename(tmp_path / "moved-away")
        directory.write_text("not a directory")
        [old] = grpc_pids(srv)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while grpc_pids(srv) in ([], [old]) and time.monotonic() < deadline:
            time.sleep(0.1)
        [new] = grpc_pids(srv)
        client = grpcclient.InferenceServerClient(srv.grpc_target)
        inp = grpcclient.InferInput("input", [1, 2], "FP32")
        inp.set_data_from_numpy(np.array([[0, 1]], dtype=np.float32))
        while True:  # the restarted process serves once its models are loaded
            try:
                result = client.infer("xor", [inp], request_id="after-the-swap")
                break
            except InferenceServerException:
                assert time.monotonic() < deadline, srv.read_log()[-3000:]
                time.sleep(0.2)
        r = requests.post(f"{srv.url}/predict", json={"model": "xor", "inputs": [[0, 1]]}, timeout=10)
        expected = np.array([r.json()["predictions"][0]["probabilities"]], dtype=np.float32)
        assert np.array_equal(result.as_numpy("probabilities"), expected)
        assert grpc_pids(srv) == [new]  # the same process answered: it did not die after the call

        def said_off() -> bool:
            return any(f'"pid":{new},' in line and "capture off in this gRPC process" in line
                       for line in srv.read_log().splitlines())

        assert said_off(), srv.read_log()[-3000:]
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]
