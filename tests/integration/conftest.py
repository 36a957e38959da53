"""The running service under test: a real gunicorn server started here, or any instance at a URL.

``base_url`` is parametrised over targets, so every integration test runs against each:

* ``gunicorn``: ``python -m service`` on a free loopback port with 2 workers (started here);
* ``container``: the Docker image, built and run by ``tests/container/engine.py`` (skipped when
  no container engine exists, unless ``REQUIRE_CONTAINER=1``, as CI sets).

``SERVICE_URL=http://host:port`` instead points every test at an instance you started yourself;
give it the environment in ``SERVER_ENV`` so the limits the tests probe are the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SERVER_ENV = {"WORKERS": "2", "MAX_BATCH": "1024", "MAX_BODY_BYTES": str(8 * 1024 * 1024), "LOG_LEVEL": "info"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: every socket stays bound until all are picked, so the kernel
    cannot hand the same port out twice (two one-at-a-time picks can collide: PORT == GRPC_PORT)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def wait_ready(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            r = requests.get(f"{url}{path}", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except (requests.ConnectionError, requests.Timeout) as exc:  # a worker still measuring its cost tables
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


class LocalServer:
    """``python -m service`` as a subprocess, with its log captured to a file."""

    def __init__(self, tmp: Path, **env: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        # GRPC_PORT: never the default 8001, which servers side by side would share
        self.port, self.grpc_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        # a directory of its own: a port can come back in one test once the server that had it has stopped
        home = Path(tempfile.mkdtemp(prefix=f"server-{self.port}-", dir=tmp))
        self.log_path = home / "server.log"
        environ = {**os.environ, **SERVER_ENV, "HOST": "127.0.0.1", "PORT": str(self.port),
                   "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics"),
                   "GRPC_PORT": str(self.grpc_port), **env}
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=environ,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def start(self, path: str = "/readyz") -> LocalServer:
        """Wait until ``path`` answers 200: ``/readyz`` (models loaded, gRPC serving), or ``/healthz``
        for a server whose gRPC side is not meant to come up."""
        try:
            wait_ready(self.url, proc=self.proc, path=path)
        except RuntimeError:
            self.stop()
            print(self.read_log())
            raise
        return self

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.dump_grpc_stacks()  # a stuck stop: where each gRPC process is, in the log, then the kill
                children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
                for pid in map(int, children.split()):  # their parent-death signal is the SIGTERM they missed
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def dump_grpc_stacks(self) -> None:
        """Every thread's stack of each gRPC process, written to the server's log (its SIGUSR1 handler)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "service.grpc.server"], capture_output=True,
                             text=True).stdout
        for pid in map(int, out.split()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)
        if out.split():
            time.sleep(1.0)

    def master_pid(self) -> int:
        """gunicorn's master: the process started here, or (gRPC on) its child running gunicorn."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        for pid in map(int, out.split()):
            with contextlib.suppress(OSError):
                if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        return self.proc.pid

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def gunicorn_server(tmp_path_factory) -> Iterator[LocalServer]:
    tmp = tmp_path_factory.mktemp("server")
    # capture on, as a production server with a feedback loop runs: every integration test passes through it
    server = LocalServer(tmp, CAPTURE_DIR=str(tmp / "capture")).start()
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.read_log()[-3000:]}"


@pytest.fixture(scope="session", params=["gunicorn", "container"])
def base_url(request) -> str:
    if os.environ.get("SERVICE_URL"):
        if request.param != "gunicorn":
            pytest.skip("SERVICE_URL given: one target only")
        url = os.environ["SERVICE_URL"].rstrip("/")
        wait_ready(url)
        return url
    if request.param == "gunicorn":
        return request.getfixturevalue("gunicorn_server").url
    return request.getfixturevalue("container").url


@pytest.fixture(scope="session")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


GLYPHS = json.loads((ROOT / "training" / "data" / "digits5x5.json").read_text())


@pytest.fixture(scope="module")
def samples(mnist_data) -> dict[str, np.ndarray]:
    """A batch of real inputs per shipped model, in each model's input shape (float32)."""
    return {"xor": np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
            "digits": np.array(GLYPHS["images"], np.float32).reshape(-1, 5, 5),
            "mnist": mnist_data.eval_sets["test"][0][:16].reshape(16, 28, 28).astype(np.float32)}


def predict(url: str, name: str, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``/predict``'s probabilities (as parsed from JSON) and labels for ``x``: what every other
    protocol's answer is judged against."""
    r = requests.post(f"{url}/predict", json={"model": name, "inputs": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.array([p["probabilities"] for p in body["predictions"]]), [p["label"] for p in body["predictions"]]
