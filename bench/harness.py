"""The serving benchmarks' harness: gunicorn from a source tree, the KServe peer, and wrk with its summary.

* :func:`server` starts gunicorn with the service's own configuration serving an app from any source
  tree (this checkout, or an older one: ``bench/cpu_per_request.py`` and ``bench/serve_load.py
  --tree`` compare two), BLAS on one thread per worker, and waits until it is ready;
* :func:`kserve_peer` starts the tuned KServe peer (``bench/kserve_peer.py``) from ``.venv-kserve``;
* :func:`run_wrk` runs ``wrk`` (a C load generator, not Python sharing the server's cores) with a Lua
  script that prints a JSON summary, and :func:`wrk` one request shape through ``bench/wrk.lua``,
  adding the errors and the rate.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk.lua"
SERVICE_APP, CEILING_APP = "service.wsgi:app", "bench.ceiling_app:app"
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Server:
    """A server process started here, its base URL and its log file."""

    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_wrk() -> bool:
    """Whether ``wrk`` is on the PATH; if not, say how to get it (on stderr)."""
    if shutil.which("wrk") is None:
        print("wrk is needed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return False
    return True


def gunicorn_config(root: Path) -> Path:
    """The service's gunicorn configuration in the tree ``root``: ``service/http_server/gunicorn_conf.py``,
    or ``service/gunicorn_conf.py`` in a tree from before the packages."""
    return next(path for path in (root / "service" / "http_server" / "gunicorn_conf.py",
                                  root / "service" / "gunicorn_conf.py") if path.exists())


def wait_until(srv: Server, path: str, what: str, timeout: float, pause: float = 0.2) -> None:
    """Ask ``path`` until it answers 200; raise with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):  # a busy machine: ask again
            if requests.get(f"{srv.url}{path}", timeout=2).status_code == 200:
                return
        if srv.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{srv.log.read_text()[-2000:]}")
        time.sleep(pause)


def settle(url: str, body: Path, timeout: float = 30.0) -> None:
    """POST the JSON ``body`` to ``url`` until it answers 200. wrk ends a row by cutting its last
    request off, which the server still computes: a gradcheck or an explanation then holds its
    GRADCHECK_CONCURRENCY slot a moment longer, and a row that started meanwhile would count the
    server's 503s (busy) as its errors."""
    deadline = time.monotonic() + timeout
    data = body.read_bytes()
    headers = {"Content-Type": "application/json"}
    while requests.post(url, data=data, headers=headers, timeout=timeout).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")
        time.sleep(0.05)


def server_dirs(tmp: Path, port: int) -> tuple[Path, Path]:
    """Fresh metrics and state directories for one server, in a directory of its own under ``tmp``: a port can
    come back within one run once the server that had it has stopped, so the port alone does not name them."""
    home = Path(tempfile.mkdtemp(prefix=f"server-{port}-", dir=tmp))
    (home / "metrics").mkdir()
    (home / "state").mkdir()
    return home / "metrics", home / "state"


@contextlib.contextmanager
def server(app: str, workers: int, tmp: Path, root: Path = ROOT, **env: str) -> Iterator[Server]:
    """gunicorn with the service's own configuration serving ``app`` from the source tree ``root``.

    Parameters
    ----------
    app : str
        The WSGI app, ``SERVICE_APP`` or ``CEILING_APP``.
    workers : int
        ``WORKERS``.
    tmp : Path
        Where the metrics directory and the log go.
    root : Path
        The source tree to serve from (its working directory, so its packages are imported).
    **env : str
        More environment, e.g. ``BATCHING="off"``.
    """
    port = free_port()
    metrics_dir, state_dir = server_dirs(tmp, port)  # state: as python -m service gives its workers
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": str(workers),
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "STATE_DIR": str(state_dir), **ONE_BLAS_THREAD,
               **env}
    log = metrics_dir.parent / f"{app.split('.')[0]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(gunicorn_config(root)), app], cwd=root,
                                env=environ, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(srv, "/readyz", app, 60)
        yield srv
    finally:
        srv.stop()


@dataclass
class FullService:
    """``python -m service`` started here: its HTTP base URL and its gRPC target."""

    proc: subprocess.Popen
    url: str
    grpc_target: str
    log: Path


@contextlib.contextmanager
def full_service(root: Path, tmp: Path, **env: str) -> Iterator[FullService]:
    """``python -m service`` from the source tree ``root``: gunicorn beside the gRPC processes, as shipped
    (its own defaults, BLAS on one thread per process), ready when ``/readyz`` says both serve."""
    with contextlib.ExitStack() as ports:  # both bound until both are picked: never the same port twice
        socks = [ports.enter_context(socket.socket()) for _ in range(2)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        port, grpc_port = (sock.getsockname()[1] for sock in socks)
    metrics_dir, state_dir = server_dirs(tmp, port)
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "GRPC_PORT": str(grpc_port),
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "STATE_DIR": str(state_dir), **ONE_BLAS_THREAD, **env}
    log = metrics_dir.parent / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=root, env=environ, stdout=out,
                                stderr=subprocess.STDOUT)
    srv = FullService(proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", log)
    try:
        wait_until(Server(proc, srv.url, log), "/readyz", "python -m service", 90)
        yield srv
    finally:
        Server(proc, srv.url, log).stop()


@contextlib.contextmanager
def kserve_peer(python: Path, workers: int, tmp: Path) -> Iterator[Server]:
    """kserve's model server (``bench/kserve_peer.py``) run by ``python``, BLAS on one thread per worker."""
    port = free_port()
    environ = {**os.environ, **ONE_BLAS_THREAD}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp / f"kserve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(python), str(ROOT / "bench" / "kserve_peer.py"), "--http_port", str(port),
                                 "--workers", str(workers)], cwd=tmp, env=environ, stdout=out,
                                stderr=subprocess.STDOUT)
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(srv, "/v2/models/mnist/ready", "the KServe peer", 120, pause=0.3)
        time.sleep(2)  # every uvicorn worker up, not only the first to answer
        yield srv
    finally:
        srv.stop()


def executed_batches(url: str) -> tuple[float, float]:
    """(sum, count) of the executed-batch histogram for mnist, summed over the workers."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    out = [0.0, 0.0]
    for line in text.splitlines():
        if 'kind="executed"' in line and 'model="mnist"' in line:
            for i, name in enumerate(("nn_batch_size_sum{", "nn_batch_size_count{")):
                if line.startswith(name):
                    out[i] += float(line.rsplit(" ", 1)[1])
    return out[0], out[1]


def run_wrk(url: str, connections: int, seconds: float, script: Path = LUA, timeout: float = 10,
            **env: str) -> dict:
    """``wrk`` with ``script``, which prints one JSON line in its ``done``: that summary, parsed.

    Parameters
    ----------
    url : str
        The first request's URL (the script may send others).
    connections, seconds : int, float
        ``-c`` and ``-d``; at most 2 threads. wrk takes whole seconds: a fraction is run as the next
        whole second, ended by SIGINT (which wrk answers with its summary) after ``seconds``.
    script : Path
        The Lua script (``bench/wrk.lua``, ``bench/soak.lua``).
    timeout : float
        wrk's per-request timeout.
    **env : str
        The script's settings (``BODY``, ``PACE_MS``, ...).
    """
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{math.ceil(seconds)}s",
           f"--timeout={math.ceil(timeout)}s", "-s", str(script), url]
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        capped = Path(tmp) / "capped"  # bench/wrk.lua's threads say here when they reached MAX_REQUESTS
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **env, "CAPPED": str(capped)})
        fraction = seconds < math.ceil(seconds)  # -d is whole seconds: such a run is ended by SIGINT
        if env.get("MAX_REQUESTS", "0") not in ("", "0"):
            # wrk runs its whole duration even when every thread has stopped; SIGINT ends it at once,
            # with its summary
            deadline = time.monotonic() + (seconds if fraction else seconds + timeout)
            while proc.poll() is None and len(list(Path(tmp).iterdir())) < threads and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        elif fraction:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(seconds)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=seconds + timeout + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout}\n{stderr}")
    return json.loads(line)


def wrk(url: str, body: Path | None, connections: int, seconds: float, max_requests: int = 0,
        timeout: float = 10, header_length: int | None = None) -> dict:
    """One request shape under ``bench/wrk.lua``: POST ``body`` (GET without), at most ``max_requests``
    per wrk thread; the summary with ``seconds``, ``errors`` (every kind, non-2xx included) and ``rps``
    (answered 2xx per second) added."""
    r = run_wrk(url, connections, seconds, LUA, timeout, BODY=str(body or ""), MAX_REQUESTS=str(max_requests),
                INFERENCE_HEADER_LENGTH=str(header_length or ""), CONTENT_TYPE="application/json")
    r["seconds"] = r["duration_us"] / 1e6
    r["errors"] = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] + r["non_2xx"]
    r["rps"] = (r["requests"] - r["non_2xx"]) / r["seconds"]
    return r


def warm(url: str, body: Path | None, connections: int, seconds: float = 1.0, header_length: int | None = None
         ) -> None:
    """A warm-up run of :func:`wrk` whose figures are thrown away. ``BENCH_WARM_SECONDS`` overrides its
    length; 0 skips it (the test suite's smoke runs of the benchmarks, which check the code, not figures)."""
    seconds = float(os.environ.get("BENCH_WARM_SECONDS", seconds))
    if seconds > 0:
        wrk(url, body, connections, seconds, header_length=header_length)
