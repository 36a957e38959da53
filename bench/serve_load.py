"""Serving benchmark: the real server under wrk, beside its HTTP and compute ceilings, in one run.

Every row is driven by ``wrk`` (a C load generator, not Python sharing the server's cores) through
``bench/wrk.lua``. In one run, for one worker configuration, it measures:

* the HTTP ceiling: a bare Flask route that reads the same body and returns a constant
  (``bench/ceiling_app.py``), under the same gunicorn settings as the service;
* the compute ceiling: the MNIST network's matrix products, ReLU and softmax in plain NumPy on a
  256-image batch, in-process with one BLAS thread, times the number of workers;
* ``/predict`` XOR and MNIST with one sample, MNIST with 32 and 256 (images/s), ``/gradcheck``
  MNIST with defaults, each at concurrency 1, 16 and 64; ``/explain`` MNIST, one image, integrated
  gradients with the defaults (64 steps), at concurrency 1;
* MNIST one sample with server-side batching on (the default) and off (``BATCHING=off``), over
  ``/predict``, V1 and V2 JSON, with the mean executed batch size of each row (from ``/metrics``);
* the tuned KServe peer (``bench/kserve_peer.py``: kserve's model server, 2 workers, one BLAS thread,
  the same weights and NumPy forward pass) over its V1 and V2 JSON, one MNIST sample, c=1, 16, 64.
  It runs from ``.venv-kserve`` (``make bench-peers``); without it those rows are skipped;
* slow clients: 64 connections trickling a body a byte a second and 16 open and silent, while a
  well-behaved client sends 200 sequential ``/predict`` requests.

It prints a Markdown table, writes JSON and a PNG (throughput and p99 against concurrency).
``--compare`` runs the worker comparison instead (README, "Choosing the worker").

    python -m bench.serve_load                  # what `make bench` runs, about 3 minutes
    python -m bench.serve_load --compare sync gthread gevent service.http_server.worker.BufferingGeventWorker
"""

from __future__ import annotations

import argparse
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from bench.train_epoch import machine
from training.datasets import mnist

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk.lua"
RESULTS = ROOT / "bench" / "results"
SERVICE_APP, CEILING_APP = "service.wsgi:app", "bench.ceiling_app:app"


# -- servers ----------------------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(app: str, workers: int, tmp: Path, root: Path = ROOT, **env: str) -> Iterator[Server]:
    """gunicorn with the service's own configuration (``service/http_server/gunicorn_conf.py``) serving ``app``
    from the source tree ``root`` (another tree: ``bench/cpu_per_request.py`` compares two)."""
    port = free_port()
    metrics_dir = tmp / f"metrics-{port}"
    metrics_dir.mkdir()
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": str(workers),
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", **env}
    log = tmp / f"{app.split('.')[0]}-{port}.log"
    # the configuration's home in this tree, or in a tree from before the packages (service/gunicorn_conf.py)
    config = next(path for path in (root / "service" / "http_server" / "gunicorn_conf.py",
                                    root / "service" / "gunicorn_conf.py") if path.exists())
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(config), app], cwd=root, env=environ,
                                stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):  # a busy machine: ask again
                if requests.get(f"{srv.url}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{app} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def kserve_peer(python: Path, workers: int, tmp: Path) -> Iterator[Server]:
    """kserve's model server (``bench/kserve_peer.py``) with BLAS pinned to one thread per worker."""
    port = free_port()
    environ = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp / f"kserve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(python), str(ROOT / "bench" / "kserve_peer.py"), "--http_port", str(port),
                                 "--workers", str(workers)], cwd=tmp, env=environ, stdout=out,
                                stderr=subprocess.STDOUT)
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):  # a busy machine: ask again
                if requests.get(f"{srv.url}/v2/models/mnist/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the KServe peer did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
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


# -- load ---------------------------------------------------------------------------------------------
def wrk(url: str, body: Path | None, connections: int, seconds: float, max_requests: int = 0,
        timeout: float = 10, header_length: int | None = None) -> dict:
    env = {**os.environ, "BODY": str(body or ""), "MAX_REQUESTS": str(max_requests),
           "INFERENCE_HEADER_LENGTH": str(header_length or ""), "CONTENT_TYPE": "application/json"}
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{math.ceil(seconds)}s", f"--timeout={math.ceil(timeout)}s",
           "-s", str(LUA), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + timeout + 30)
    line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line)
    r["seconds"] = r["duration_us"] / 1e6
    r["errors"] = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] + r["non_2xx"]
    r["rps"] = (r["requests"] - r["non_2xx"]) / r["seconds"]
    return r


class SlowClients:
    """``trickle`` connections sending a request body a byte a second and ``silent`` ones sending
    nothing; each reconnects when the server closes it (as an attacker would), counted in ``closed``."""

    def __init__(self, host: str, port: int, path: str, body: bytes, trickle: int = 64, silent: int = 16) -> None:
        self.addr, self.trickle, self.silent = (host, port), trickle, silent
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.body, self.closed, self.stop = body, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self, trickling: bool) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=5)
        s.setblocking(False)
        if trickling:
            s.send(self.head)
        return s

    @staticmethod
    def is_closed(s: socket.socket) -> bool:
        """The server closed it (or answered it, e.g. with a 408): either way this attacker is done."""
        try:
            return s.recv(65536, socket.MSG_PEEK) is not None
        except BlockingIOError:
            return False
        except OSError:
            return True

    def run(self) -> None:
        # [socket, bytes of the body sent, trickling?]
        conns = [[self.connect(True), 0, True] for _ in range(self.trickle)]
        conns += [[self.connect(False), 0, False] for _ in range(self.silent)]
        while not self.stop.wait(1.0):
            for conn in conns:
                sock, sent, trickling = conn
                if self.is_closed(sock):
                    self.closed += 1
                    sock.close()
                    conn[:] = [self.connect(trickling), 0, trickling]
                elif trickling and sent < len(self.body) - 1:  # never the last byte: the request never completes
                    with contextlib.suppress(OSError):
                        sock.send(self.body[sent:sent + 1])
                        conn[1] = sent + 1
        for conn in conns:
            conn[0].close()

    def __enter__(self) -> SlowClients:
        self.thread.start()
        time.sleep(2.5)  # every attacker connected and trickling
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def slow_client_row(srv: Server, body: Path) -> dict:
    host, port = srv.url.split("//")[1].split(":")
    with SlowClients(host, int(port), "/predict", body.read_bytes()) as attack:
        r = wrk(f"{srv.url}/predict", body, 1, 8, max_requests=200, timeout=5)
    r["rps"] = None  # wrk runs its whole duration after the 200th request: no rate here, only latencies
    r["attackers_closed_by_server"] = attack.closed
    return r


# -- the compute ceiling ------------------------------------------------------------------------------
def compute_ceiling(x: np.ndarray, rounds: int = 50) -> float:
    """Images/s of the MNIST network's forward pass in plain NumPy (one BLAS thread), one process."""
    from model.io import load_model
    from model.repository import newest_weights

    net = load_model(newest_weights(ROOT / "model_repository", "mnist")).network  # the served version
    dense = [layer.params for layer in net.layers if "W" in layer.params]
    batch = np.ascontiguousarray(x, dtype=np.float32)

    def forward() -> np.ndarray:
        h = batch
        for i, p in enumerate(dense):
            h = h @ p["W"] + p["b"]
            if i < len(dense) - 1:
                h = np.maximum(h, 0)
        e = np.exp(h - h.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        forward()
        best = min(timed(forward) for _ in range(rounds))
    return len(batch) / best


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the run ------------------------------------------------------------------------------------------
def bodies(tmp: Path, data_dir: Path | None) -> dict[str, tuple[Path, int, int | None]]:
    ds = mnist(data_dir, download=data_dir is None)
    x, y = ds.eval_sets["test"]
    out = {}

    def write(name: str, doc: dict, images: int, tail: bytes = b"") -> None:
        path = tmp / f"{name}.body"
        head = json.dumps(doc).encode()
        path.write_bytes(head + tail)
        out[name] = (path, images, len(head) if tail else None)

    for n in (1, 32, 256):
        write(f"mnist{n}", {"model": "mnist", "inputs": [[float(v) for v in row] for row in x[:n]]}, n)
    write("xor1", {"model": "xor", "inputs": [[0, 1]]}, 1)
    write("gradcheck", {"model": "mnist", "inputs": [[float(v) for v in row] for row in x[:16]],
                        "labels": [str(v) for v in y[:16]]}, 16)
    write("explain", {"model": "mnist", "inputs": [[float(v) for v in x[0]]], "method": "integrated_gradients"}, 1)
    one = [float(v) for v in np.asarray(x[0]).ravel()]
    write("v1mnist1", {"instances": [one]}, 1)
    write("v2jsonmnist1", {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": one}]}, 1)
    batch = np.ascontiguousarray(x[:256], dtype="<f4")
    tensor = {"name": "input", "shape": [256, 784], "datatype": "FP32"}
    binary_out = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    write("v2json256", {"inputs": [{**tensor, "data": [float(v) for v in batch.ravel()]}]}, 256)
    write("v2bin256", {"inputs": [{**tensor, "parameters": {"binary_data_size": batch.nbytes}}],
                       "outputs": binary_out}, 256, batch.tobytes())
    return out


def full_run(args, tmp: Path) -> list[dict]:
    data = bodies(tmp, args.data_dir)
    rows: list[dict] = []

    def add(scenario: str, images: int, c: int | None, r: dict) -> None:
        r.update(scenario=scenario, concurrency=c, images_per_s=(r["rps"] or 0) * images)
        rows.append(r)
        print(f"  {scenario:28s} c={c!s:>3}  {r['rps'] or 0:9.1f} req/s  p99 {r['p99_us'] / 1000:8.2f} ms  "
              f"errors {r['errors']}", flush=True)

    ceiling = compute_ceiling(np.asarray(json.loads(data["mnist256"][0].read_text())["inputs"]))
    rows.append({"scenario": "compute ceiling (NumPy, 256 images)", "concurrency": None, "rps": None,
                 "images_per_s": ceiling * args.workers, "per_worker": ceiling, "errors": 0})
    print(f"  compute ceiling: {ceiling:.0f} images/s per worker x {args.workers}", flush=True)
    with server(CEILING_APP, args.workers, tmp) as srv:
        wrk(f"{srv.url}/predict", data["mnist1"][0], 4, 1)
        for c in args.concurrency:
            add("HTTP ceiling (bare Flask)", 1, c, wrk(f"{srv.url}/predict", data["mnist1"][0], c, args.seconds))
    with server(SERVICE_APP, args.workers, tmp, LOG_LEVEL="info") as srv:
        wrk(f"{srv.url}/predict", data["mnist1"][0], 4, 1)
        for name, label, path in (
                ("xor1", "/predict xor, 1", "/predict"), ("mnist1", "/predict mnist, 1", "/predict"),
                ("mnist32", "/predict mnist, 32", "/predict"), ("mnist256", "/predict mnist, 256", "/predict"),
                ("v2json256", "V2 infer mnist, 256, JSON", "/v2/models/mnist/infer"),
                ("v2bin256", "V2 infer mnist, 256, binary", "/v2/models/mnist/infer")):
            body, images, header_length = data[name]
            for c in args.concurrency:
                add(label, images, c, wrk(f"{srv.url}{path}", body, c, args.seconds, header_length=header_length))
        add("slow clients: 200 sequential", 1, 1, slow_client_row(srv, data["mnist1"][0]))
        # one at a time: beyond GRADCHECK_CONCURRENCY (workers - 1) gradchecks are refused with a 503
        add("/gradcheck mnist, 16 images", 0, 1, wrk(f"{srv.url}/gradcheck", data["gradcheck"][0], 1,
                                                      args.seconds, timeout=30))
        # the same slots as gradchecks: one at a time here too
        add("/explain mnist, 1 image, integrated gradients (64 steps)", 0, 1,
            wrk(f"{srv.url}/explain", data["explain"][0], 1, args.seconds, timeout=30))
    rows += one_sample_run(args, tmp, data)
    return rows


ONE_SAMPLE_CEILING = "HTTP ceiling (bare Flask), in turns"
ONE_SAMPLE = (("mnist1", "/predict", "/predict"), ("v1mnist1", "V1", "/v1/models/mnist:predict"),
              ("v2jsonmnist1", "V2 JSON", "/v2/models/mnist/infer"))


def one_sample_run(args, tmp: Path, data: dict) -> list[dict]:
    """MNIST one sample: the bare-Flask ceiling, ours with batching on and off, and the tuned KServe peer.

    All servers are up at once (idle ones cost nothing) and every concurrency level runs ``--rounds``
    rounds of every contender, in an order rotated each round; each row is the median round. On a
    shared machine whose speed drifts by 2x within minutes, contenders measured minutes apart are not
    comparable; measured seconds apart, in turns, they are.
    """
    contenders = []  # (label, server, path, body name)
    with contextlib.ExitStack() as stack:
        ceiling = stack.enter_context(server(CEILING_APP, args.workers, tmp))
        contenders.append((ONE_SAMPLE_CEILING, ceiling, "/predict", "mnist1"))
        for batching in ("on", "off"):
            srv = stack.enter_context(server(SERVICE_APP, args.workers, tmp, LOG_LEVEL="info", BATCHING=batching))
            for name, label, path in ONE_SAMPLE if batching == "on" else ONE_SAMPLE[:1]:
                contenders.append((f"{label} mnist, 1, batching {batching}", srv, path, name))
        python = Path(args.kserve_python)
        if python.exists():
            peer = stack.enter_context(kserve_peer(python, args.workers, tmp))
            contenders += [("KServe V1 mnist, 1", peer, "/v1/models/mnist:predict", "v1mnist1"),
                           ("KServe V2 JSON mnist, 1", peer, "/v2/models/mnist/infer", "v2jsonmnist1")]
        else:
            print(f"  no KServe peer ({python} missing: make bench-peers)", flush=True)
        for _, srv, path, name in contenders:  # warm every server and path
            wrk(f"{srv.url}{path}", data[name][0], 4, 1)
        rows = []
        for c in args.concurrency:
            results: dict[str, list[dict]] = {label: [] for label, *_ in contenders}
            for k in range(args.rounds):
                for label, srv, path, name in contenders[k % len(contenders):] + contenders[:k % len(contenders)]:
                    batches = label.endswith("batching on")
                    before = executed_batches(srv.url) if batches else None
                    r = wrk(f"{srv.url}{path}", data[name][0], c, args.seconds)
                    if batches:
                        after = executed_batches(srv.url)
                        passes = after[1] - before[1]
                        r["mean_executed_batch"] = (after[0] - before[0]) / passes if passes else None
                    results[label].append(r)
            for label, rounds in results.items():
                r = dict(sorted(rounds, key=lambda x: x["rps"])[len(rounds) // 2])  # the median round
                r.update(scenario=label, concurrency=c, images_per_s=r["rps"], rounds_rps=[x["rps"] for x in rounds],
                         errors=sum(x["errors"] for x in rounds))
                rows.append(r)
                print(f"  {label:40s} c={c:>3} {r['rps']:9.1f} req/s  p99 {r['p99_us'] / 1000:8.2f} ms  "
                      f"errors {r['errors']}  rounds {[round(x) for x in r['rounds_rps']]}", flush=True)
    return rows


def compare_run(args, tmp: Path) -> list[dict]:
    data = bodies(tmp, args.data_dir)
    rows = []
    for worker in args.compare:
        env = {"WORKER_CLASS": worker, "THREADS": str(args.threads if worker == "gthread" else 1)}
        for app, label in ((CEILING_APP, "HTTP ceiling"), (SERVICE_APP, "/predict mnist, 1")):
            with server(app, args.workers, tmp, **env) as srv:
                wrk(f"{srv.url}/predict", data["mnist1"][0], 4, 1)
                for c in args.concurrency:
                    r = wrk(f"{srv.url}/predict", data["mnist1"][0], c, args.seconds)
                    r.update(worker=worker, scenario=label, concurrency=c)
                    rows.append(r)
                    print(f"  {worker:38s} {label:18s} c={c:>3} {r['rps']:8.1f} req/s p99 {r['p99_us'] / 1e3:8.2f} ms",
                          flush=True)
                if app == SERVICE_APP:
                    r = slow_client_row(srv, data["mnist1"][0])
                    r.update(worker=worker, scenario="slow clients", concurrency=1)
                    rows.append(r)
                    print(f"  {worker:38s} slow clients: {r['requests'] - r['non_2xx']}/200 answered, "
                          f"p99 {r['p99_us'] / 1e3:.1f} ms", flush=True)
    return rows


# -- reporting ----------------------------------------------------------------------------------------
def ms(us: float | None) -> str:
    return "" if us is None else f"{us / 1000:.2f}"


def table(rows: list[dict]) -> str:
    http = {r["concurrency"]: r["rps"] for r in rows if r["scenario"] == "HTTP ceiling (bare Flask)"}
    # the one-sample comparison's rows answer to the ceiling measured in turns with them
    http_turns = {r["concurrency"]: r["rps"] for r in rows if r["scenario"] == ONE_SAMPLE_CEILING}
    compute = next((r["images_per_s"] for r in rows if r["scenario"].startswith("compute")), None)
    lines = ["| scenario | conc. | requests/s | images/s | p50 ms | p99 ms | errors | vs ceiling |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "attackers_closed_by_server" in r:
            lines.append(f"| {r['scenario']} ({r['requests'] - r['non_2xx']}/200 answered; the server cut "
                         f"{r['attackers_closed_by_server']} attacker connections) | 1 | | | {ms(r.get('p50_us'))} | "
                         f"{ms(r.get('p99_us'))} | {r['errors']} | |")
            continue
        if r["rps"] is None:
            lines.append(f"| {r['scenario']} | | | {r['images_per_s']:,.0f} | | | | 1.00 |")
            continue
        ratio = ""
        if "rounds_rps" in r and r["scenario"] != ONE_SAMPLE_CEILING:
            ratio = f"{r['rps'] / http_turns[r['concurrency']]:.2f} of HTTP"
            if r.get("mean_executed_batch") is not None:
                ratio += f"; batch {r['mean_executed_batch']:.1f}"
        elif "rounds_rps" in r:
            pass
        elif r["scenario"].startswith(("/predict", "V2", "V1", "KServe")) and r["concurrency"] in http:
            images = r["images_per_s"]
            ratio = (f"{r['rps'] / http[r['concurrency']]:.2f} of HTTP" if images == r["rps"] else
                     f"{images / compute:.2f} of compute")
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['rps']:,.1f} | "
                     f"{r['images_per_s']:,.0f} | {ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | {r['errors']} | "
                     f"{ratio} |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    """The issue's goals for one MNIST sample, from this run's rows."""
    by = {(r["scenario"], r["concurrency"]): r for r in rows}
    lines = []
    for c in (1, 16, 64):
        ours = {p: by.get((f"{p} mnist, 1, batching on", c)) for p in ("/predict", "V1", "V2 JSON")}
        off = by.get(("/predict mnist, 1, batching off", c))
        peer = [by.get((f"KServe {p} mnist, 1", c)) for p in ("V1", "V2 JSON")]
        http = by.get((ONE_SAMPLE_CEILING, c))
        if ours["/predict"] is None:
            continue
        mine = ours["/predict"]
        line = f"c={c}: /predict {mine['rps']:.0f} req/s"
        if all(peer):
            best = max(p["rps"] for p in peer)
            line += (f"; vs the tuned KServe's best ({best:.0f}): /predict {ours['/predict']['rps'] / best:.2f}x, "
                     f"V1 {ours['V1']['rps'] / peer[0]['rps']:.2f}x, V2 {ours['V2 JSON']['rps'] / peer[1]['rps']:.2f}x")
        if off:
            line += f"; p50 {ours['/predict']['p50_us'] / off['p50_us']:.2f}x batching off's"
            if c == 1:
                line += " (median rounds; bench.lone_request pairs them)"
        if http:
            line += f"; {mine['rps'] / http['rps']:.2f} of HTTP, p99 {mine['p99_us'] / 1e3:.1f} ms"
        lines.append(line)
    return "\n".join(lines)


def compare_table(rows: list[dict]) -> str:
    lines = ["| worker | HTTP ceiling req/s (c=1/16/64) | /predict MNIST req/s (c=1/16/64) | p99 ms (c=1/16/64) | "
             "slow clients: answered, p99 |", "| --- | --- | --- | --- | --- |"]
    for worker in dict.fromkeys(r["worker"] for r in rows):
        mine = [r for r in rows if r["worker"] == worker]
        ceil = [r for r in mine if r["scenario"] == "HTTP ceiling"]
        pred = [r for r in mine if r["scenario"] == "/predict mnist, 1"]
        slow = next(r for r in mine if r["scenario"] == "slow clients")
        ceil_rps = " / ".join(f"{r['rps']:.0f}" for r in ceil)
        pred_rps = " / ".join(f"{r['rps']:.0f}" for r in pred)
        pred_p99 = " / ".join(ms(r["p99_us"]) for r in pred)
        answered = slow["requests"] - slow["non_2xx"]
        lines.append(f"| {worker} | {ceil_rps} | {pred_rps} | {pred_p99} | {answered}/200, {ms(slow['p99_us'])} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        pts = [r for r in rows if r["scenario"] == scenario and r["rps"] is not None and r["concurrency"]]
        if len(pts) < 2:
            continue
        cs = [r["concurrency"] for r in pts]
        ax1.plot(cs, [r["rps"] for r in pts], marker="o", label=scenario)
        ax2.plot(cs, [r["p99_us"] / 1000 for r in pts], marker="o", label=scenario)
    for ax, label in ((ax1, "requests/s"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle("numpy-nets serving on loopback (wrk)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seconds", type=float, default=5.0, help="per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--compare", nargs="+", metavar="WORKER_CLASS",
                        help="compare gunicorn worker classes instead (sync, gthread, gevent, ...)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker in --compare")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the one-sample comparison")
    parser.add_argument("--one-sample", action="store_true",
                        help="only the MNIST one-sample comparison (ceiling, batching on/off, KServe)")
    parser.add_argument("--kserve-python", default=str(ROOT / ".venv-kserve" / "bin" / "python"),
                        help="the interpreter with kserve installed (make bench-peers)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is needed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if args.compare:
            rows = compare_run(args, Path(tmp))
            text = compare_table(rows)
            name = "serve_compare"
        else:
            if args.one_sample:
                rows = one_sample_run(args, Path(tmp), bodies(Path(tmp), args.data_dir))
                name = "serve_one_sample"
            else:
                rows = full_run(args, Path(tmp))
                name = "serve_load"
            text = table(rows)
            plot(rows, args.out / f"{name}.png")
    (args.out / f"{name}.json").write_text(json.dumps({"machine": info, "workers": args.workers, "rows": rows},
                                                      indent=2, default=float))
    print(f"\n{text}\n\n(workers {args.workers}; {info.get('cpu')}; results in {args.out}/{name}.json)")
    if not args.compare:
        print(goals(rows))
    failed = [r for r in rows if r.get("errors") and not math.isnan(r.get("errors", 0))]
    return 1 if failed and not args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
