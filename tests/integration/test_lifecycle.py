"""What only a server we start ourselves can show: a bad model file, and a graceful SIGTERM."""

from __future__ import annotations

import datetime
import json
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import MAX_SAMPLES, long_gradcheck, served_version
from tests.integration.conftest import LocalServer


@pytest.fixture
def broken_repository(tmp_path, model_repository):
    repo = tmp_path / "repo"
    for name in ("xor", "digits", "mnist"):  # each as its version 1: the one the shipped repository serves
        shutil.copytree(served_version(name), repo / name / "1")
    (repo / "mnist" / "2").mkdir()
    data = (repo / "mnist" / "1" / "model.npz").read_bytes()
    (repo / "mnist" / "2" / "model.npz").write_bytes(data[: len(data) // 3])  # truncated upload
    return repo


def test_a_bad_model_file_does_not_take_the_server_down(tmp_path, broken_repository):
    server = LocalServer(tmp_path, MODEL_DIR=str(broken_repository))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"{server.url}/readyz", timeout=2)
                if ready.status_code == 200:  # until then, the gRPC processes may still be starting
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        # ready: every model has a version that serves (mnist/1); the failed one is reported
        assert ready.status_code == 200, ready.text
        states = ready.json()["models"]
        assert states["mnist/1"] == "ready" and states["xor/1"] == "ready"
        assert states["mnist/2"].startswith("failed:") and "not a readable .npz" in states["mnist/2"]
        assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200
        # the newest *loaded* version serves; the broken one answers 503 with its reason
        ok = requests.post(f"{server.url}/predict", json={"model": "mnist", "inputs": [[0.0] * 784]}, timeout=10)
        assert ok.status_code == 200 and ok.json()["version"] == 1
        broken = requests.post(f"{server.url}/predict", json={"model": "mnist", "version": 2, "inputs": [[0.0] * 784]},
                               timeout=10)
        assert broken.status_code == 503 and broken.json()["error"]["code"] == "model_unavailable"
        details = broken.json()["error"]["details"]  # the one error shape: a list of {loc, message, type}
        assert [d["loc"] for d in details] == ["version"] and "not a readable .npz" in details[0]["message"]
        info = requests.get(f"{server.url}/models/mnist", timeout=10).json()
        assert [v["status"] for v in info["versions"]] == ["ready", "failed"] and info["latest_version"] == 1
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert 'nn_model_load_failures_total{model="mnist"} 1.0' in text
        # the standard protocols say the same: V2 readiness by status code, V1 version states
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/v2/models/mnist/ready", timeout=5).status_code == 200
        failed = requests.get(f"{server.url}/v2/models/mnist/versions/2/ready", timeout=5)
        assert failed.status_code == 400 and failed.json() == {"name": "mnist", "ready": False}
        assert requests.get(f"{server.url}/v1/models/mnist/versions/2", timeout=5).json()["ready"] is False
        status = requests.get(f"{server.url}/v1/models/mnist", timeout=5).json()
        assert status["ready"] is True  # version 1 serves
        states = status["model_version_status"]
        assert [(v["version"], v["state"]) for v in states] == [("1", "AVAILABLE"), ("2", "END")]
        assert "not a readable .npz" in states[1]["status"]["error_message"]
        # what an unauthenticated client reads names the file within the repository, not the server's disk
        for path in ("/readyz", "/models/mnist", "/v1/models/mnist"):
            text = requests.get(f"{server.url}{path}", timeout=10).text
            assert "mnist/2/model.npz" in text and str(broken_repository) not in text, (path, text[:300])
        assert str(broken_repository) not in broken.text and "mnist/2/model.npz" in broken.text
        assert str(broken_repository) in server.read_log()  # the operator's log keeps the full path
    finally:
        assert server.stop() == 0


def test_sigterm_answers_in_flight_requests_then_exits(tmp_path, mnist_data):
    """Two gradchecks in flight when SIGTERM arrives are answered in full, then the server exits 0.

    Their size comes from a rate measured here (about 4 s of work each, the signal 0.5 s after they
    start: the ratio of 8 that 8 s and 1 s had; at 4 s and 1 s, a load spike during the probe once made
    the container's twin of this test end its gradcheck before the stop), and the stop may take up to
    GRACEFUL_TIMEOUT=120 s, so a slow or busy machine still fits (a fixed 64-image check took 20 s on
    a busy one and ran past the default 30 s)."""
    # two long gradchecks at once: lift the per-request cost bound and the concurrency bound
    server = LocalServer(tmp_path, GRACEFUL_TIMEOUT="120", GRADCHECK_MAX_COST="1e13",
                         GRADCHECK_CONCURRENCY="2", GRADCHECK_MAX_SAMPLES=str(MAX_SAMPLES)).start()
    slow, probe_seconds = long_gradcheck(server.url, mnist_data, target=4.0)
    results: list[tuple[requests.Response | Exception, float]] = []

    def call() -> None:
        try:
            r = requests.post(f"{server.url}/gradcheck", json=slow, timeout=240)
            results.append((r, time.monotonic()))
        except requests.RequestException as exc:
            results.append((exc, time.monotonic()))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both requests are being worked on
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(240)
    code = server.stop(timeout=150)
    elapsed = time.monotonic() - start
    log = server.read_log()
    assert code == 0, log[-2000:]
    assert [getattr(r, "status_code", r) for r, _ in results] == [200, 200], log[-2000:]
    assert all(r.json()["passed"] for r, _ in results)
    assert all(done > start for _, done in results), "a request ended before the signal: nothing was in flight"
    assert "Handling signal: term" in log
    print(f"\nSIGTERM with 2 in-flight gradchecks ({slow['samples']} directions, {probe_seconds:.2f} s for 10): "
          f"stopped in {elapsed:.2f} s")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=2)


def test_the_event_loop_answers_while_a_gradcheck_runs(tmp_path, mnist_data):
    """A gradcheck runs on the worker's background thread (service/http_server/background.py, handed to
    the diagnostics after fork), not on its event loop: with one worker, /healthz is answered again
    and again while a long gradcheck is still running. On the loop, the first /healthz would wait
    for the gradcheck's end. An order of events, not a clock: the gradcheck's size comes from a rate
    measured here."""
    server = LocalServer(tmp_path, WORKERS="1", GRPC_PORT="0", GRADCHECK_MAX_COST="1e13",
                         GRADCHECK_MAX_SAMPLES=str(MAX_SAMPLES)).start()
    try:
        slow, _ = long_gradcheck(server.url, mnist_data, target=4.0)
        done: list[tuple[int, float]] = []
        thread = threading.Thread(target=lambda: done.append(
            (requests.post(f"{server.url}/gradcheck", json=slow, timeout=240).status_code, time.monotonic())))
        thread.start()
        time.sleep(0.2)
        answered: list[tuple[int, float]] = []
        while thread.is_alive() and len(answered) < 10:
            answered.append((requests.get(f"{server.url}/healthz", timeout=240).status_code, time.monotonic()))
            time.sleep(0.05)
        thread.join(240)
        assert done and done[0][0] == 200
        assert answered and {code for code, _ in answered} == {200}
        meanwhile = [at for _, at in answered if at < done[0][1]]
        assert len(meanwhile) >= 3, f"/healthz answered {len(meanwhile)} time(s) while the gradcheck ran"
    finally:
        assert server.stop() == 0


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_sigterm_while_a_worker_boots_still_stops_the_server(tmp_path):
    """gunicorn lost a SIGTERM that reached a worker before its handlers were installed (the worker
    then served on for good); service.http_server.worker.catch_early_stop honours it."""
    for attempt in range(3):
        server = LocalServer(tmp_path / str(attempt))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the first answer: the other worker may still be booting
            try:
                requests.get(f"{server.url}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            code = server.proc.wait(15)
        except subprocess.TimeoutExpired:
            code = None
        log = server.read_log()
        assert server.stop() == 0 and code == 0, log[-2000:]
        assert time.monotonic() - start < 15


def worker_pids(server: LocalServer) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(server.master_pid())], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.serial  # bounds a time: run alone (Makefile)
def test_idle_workers_stop_at_once_on_sigterm(tmp_path):
    """Every worker of an idle server ends its serving loop within 0.5 s of the SIGTERM, by the log's
    own clock (service/http_server/serve_loop.py). gunicorn's loop looked once a second: each worker
    stopped up to 1 s late, so four all within 0.5 s was a 1-in-16 chance."""
    server = LocalServer(tmp_path, WORKERS="4", GRPC_PORT="0").start("/healthz")
    time.sleep(1.0)  # every worker in its loop's wait
    code = server.stop()
    assert code == 0, server.read_log()[-3000:]
    lines = [json.loads(line) for line in server.read_log().splitlines() if line.startswith("{")]
    term = next(stamp(line) for line in lines if line["message"] == "Handling signal: term")
    exits = [stamp(line) - term for line in lines if line["message"].startswith("Worker exiting")]
    assert len(exits) == 4 and max(exits) < 0.5, exits


def stamp(line: dict) -> float:
    return datetime.datetime.fromisoformat(line["ts"]).timestamp()


def test_kill_9_of_a_worker_under_load_loses_at_most_its_requests_in_flight(tmp_path):
    import os

    from tests.integration.test_hot_reload import LoadLoop

    server = LocalServer(tmp_path).start()
    try:
        before = worker_pids(server)
        assert len(before) == 2
        with LoadLoop(server.url) as load:  # two clients: at most 2 requests in flight at any time
            time.sleep(2.0)
            victim = min(before)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (len(worker_pids(server)) < 2 or victim in worker_pids(server)):
                time.sleep(0.1)
            replaced = time.monotonic() - killed_at
            time.sleep(2.0)
        after = worker_pids(server)
        failed = load.failures()
        late = [r for r in load.results if r[0] > killed_at + replaced + 0.5]
        print(f"\nkill -9: replaced in {replaced:.2f} s; {len(load.results)} requests, {len(failed)} failed "
              f"({[r[1] for r in failed]}); {len(late)} answered after the replacement")
        assert len(after) == 2 and victim not in after
        assert len(failed) <= 2  # only what was in flight on the killed worker
        assert late and all(r[1] == 200 for r in late)  # throughput is back
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        ok = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith('nn_requests_total{endpoint="/predict",model="xor",status="200"}'))
        successes = sum(1 for r in load.results if r[1] == 200)
        assert successes - 2 <= ok <= successes + 2  # the dead worker's counts stay in the sum
    finally:
        assert server.stop() == 0
