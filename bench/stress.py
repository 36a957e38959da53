"""The stress suite: fuzzing at scale, a soak, kill -9 and SIGTERM under load, hostile input; one table.

Every part runs the real ``python -m service`` on loopback, is bounded in time, and stops by itself:

* fuzz: schemathesis from the OpenAPI document, every route (the repository API on), at least 5,000
  generated cases, positive and negative: no 5xx, every status and body as documented;
* soak: ``--soak-seconds`` of every kind of request in turn at a steady pace (wrk, ``bench/soak.lua``):
  no failed request, worker RSS growing less than 5 % after warm-up (3 s of the biggest request
  first, then the plan), open file descriptors flat;
* kill -9: one worker killed under load: at most its requests in flight fail, the master replaces
  it, the load is answered again;
* SIGTERM under load: in-flight requests finish and the server exits 0;
* hostile: ``tests/integration/test_hostile.py`` against the running server;
* idle crowd: 2,100 silent connections, more than the workers' 2 x 1,000: new clients answered within 1 s;
* uploads: 100 clients send 15 MB each and stall (``bench/uploads.py``): the workers' memory grows
  by less than 300 MB in all, and a well-behaved client is answered meanwhile, p99 under 100 ms.

The table goes to ``bench/results/stress.json``.

    python -m bench.stress [--soak-seconds 300] [--fuzz-examples 250] [--part soak ...]     (make stress)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import results
from bench.harness import run_wrk
from bench.procfs import children, open_files, rss_mb
from bench.uploads import stalled_uploads, timed_small_request
from tests.integration.conftest import LocalServer
from training.datasets import mnist

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SOAK_LUA = ROOT / "bench" / "soak.lua"


def write_bodies(directory: Path, data_dir: Path | None) -> None:
    x = mnist(data_dir, download=data_dir is None).eval_sets["test"][0]
    docs = {
        "predict-xor.json": {"model": "xor", "inputs": [[0, 1], [1, 1]]},
        "predict-digits.json": {"model": "digits", "inputs": [[0.0] * 25]},
        "predict-mnist1.json": {"model": "mnist", "inputs": x[:1].tolist()},
        "predict-mnist32.json": {"model": "mnist", "inputs": x[:32].tolist()},
        "predict-mnist256.json": {"model": "mnist", "inputs": x[:256].tolist()},
        "infer-mnist8.json": {"inputs": [{"name": "input", "shape": [8, 784], "datatype": "FP32",
                                          "data": x[:8].ravel().tolist()}]},
        "gradcheck.json": {"model": "xor", "inputs": [[0, 1]], "labels": ["1"], "mode": "full"},
    }
    for name, doc in docs.items():
        (directory / name).write_text(json.dumps(doc))


def workers(server: LocalServer) -> list[int]:
    return sorted(children(server.master_pid()))


def steady_fds(pids: list[int], samples: int = 10) -> list[int]:
    """Each worker's fewest non-socket descriptors over a second: a lock file held by a gradcheck or a
    metrics file being read is open only for a moment, and a leak never goes away."""
    counts = []
    for _ in range(samples):
        counts.append([open_files(p) for p in pids])
        time.sleep(0.1)
    return [min(c[i] for c in counts) for i in range(len(pids))]


# -- the parts ------------------------------------------------------------------------------------------
def fuzz(tmp: Path, examples: int) -> dict:
    server = LocalServer(tmp / "fuzz", ADMIN_TOKEN="stress-token").start()
    try:
        out = subprocess.run([str(BIN / "schemathesis"), "run", f"{server.url}/openapi.json", "--url", server.url,
                              "-H", "Authorization: Bearer stress-token",  # else the admin routes stop at 401
                              # use_after_free: a model's rollout, once deleted, is still a state ("none"), not a 404
                              "--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free",
                              "--max-examples", str(examples), "--generation-deterministic"],
                             capture_output=True, text=True, timeout=1800)
    finally:
        server.stop()
    generated = re.search(r"(\d+) generated", out.stdout)
    failures = re.search(r"(\d+) found (\d+) unique failures", out.stdout)
    return {"part": "fuzz (schemathesis, every route)", "cases": int(generated.group(1)) if generated else 0,
            "failures": int(failures.group(2)) if failures else (0 if out.returncode == 0 else 1),
            "note": "no 5xx, statuses and bodies as documented" if out.returncode == 0 else out.stdout[-1500:]}


def soak(tmp: Path, bodies: Path, seconds: float, max_growth: float = 0.05) -> dict:
    # every request should succeed: the gradcheck budget's 503s (by design, tested on their own) are lifted
    server = LocalServer(tmp / "soak", GRADCHECK_CONCURRENCY="16").start()
    try:
        pids = workers(server)
        # The heap's high-water mark follows how many of the biggest requests a worker happened to hold
        # at once, which the mixed plan below reaches only by chance (seen: +10 % in a 15 s soak, flat
        # after). A burst of nothing but the biggest, over the soak's own 8 connections, reaches it first,
        # so growth after the warm-up is what requests leave behind, not a rare coincidence.
        run_wrk(f"{server.url}/predict", 8, 3, BODY=str(bodies / "predict-mnist256.json"))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(run_wrk(
            f"{server.url}/predict", 8, seconds, SOAK_LUA, BODIES=str(bodies), PACE_MS="20")))
        thread.start()
        time.sleep(min(30.0, seconds / 5))  # warm-up
        rss0, fd0 = [rss_mb(p) for p in pids], steady_fds(pids)
        thread.join()
        rss1, fd1 = [rss_mb(p) for p in pids], steady_fds(pids)
    finally:
        server.stop()
    growth = max((b - a) / a for a, b in zip(rss0, rss1, strict=True))
    failed = result["errors"] + result["non_2xx"]
    return {"part": f"soak ({seconds:.0f} s, every endpoint in turn)", "cases": result["requests"], "failures": failed,
            "errors": result["errors"], "non_2xx": result["non_2xx"],
            "p99_ms": result["p99_us"] / 1000, "rss": f"{'/'.join(f'{v:.0f}' for v in rss0)} -> "
            f"{'/'.join(f'{v:.0f}' for v in rss1)} MB",
            "fds": f"{'/'.join(map(str, fd0))} -> {'/'.join(map(str, fd1))} (not sockets)",
            # none added: one fewer is a descriptor closed late, by a garbage collection (seen once: 15 -> 14)
            "ok": failed == 0 and growth < max_growth and all(b <= a for a, b in zip(fd0, fd1, strict=True)),
            "note": f"worker RSS growth {growth:+.1%}"}


def kill_9(tmp: Path, bodies: Path) -> dict:
    server = LocalServer(tmp / "kill").start()
    try:
        victim = workers(server)[0]
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(run_wrk(
            f"{server.url}/predict", 4, 10, BODY=str(bodies / "predict-mnist1.json"))))
        thread.start()
        time.sleep(3)
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        while victim in workers(server) or len(workers(server)) < 2:
            time.sleep(0.05)
        replaced = time.monotonic() - start
        thread.join()
        after = run_wrk(f"{server.url}/predict", 4, 3, BODY=str(bodies / "predict-mnist1.json"))
    finally:
        server.stop()
    failed = result["connect_errors"] + result["read_errors"] + result["write_errors"] + result["timeouts"] + \
        result["non_2xx"]
    return {"part": "kill -9 of one worker under load (4 connections)", "cases": result["requests"],
            "failures": failed, "p99_ms": result["p99_us"] / 1000,
            "ok": failed <= 4 and after["requests"] > 0 and after["non_2xx"] + after["read_errors"] == 0,
            "note": f"replaced in {replaced:.2f} s; at most the 4 in flight may fail; "
                    f"{after['requests']} requests after, all answered"}


def sigterm(tmp: Path, bodies: Path) -> dict:
    server = LocalServer(tmp / "term").start()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_wrk(
        f"{server.url}/predict", 4, 6, BODY=str(bodies / "predict-mnist256.json"))))
    thread.start()
    time.sleep(2)
    server.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = server.proc.wait(60)
    stopped = time.monotonic() - start
    thread.join()
    server.stop()
    return {"part": "SIGTERM under load (256-image batches)", "cases": result["requests"],
            "failures": result["non_2xx"] + result["timeouts"], "p99_ms": result["p99_us"] / 1000,
            "ok": code == 0 and result["non_2xx"] == 0,
            "note": f"exit {code} after {stopped:.2f} s; after it, new connections are refused "
                    f"({result['connect_errors']} refused, {result['read_errors']} closed mid-keep-alive)"}


def hostile(tmp: Path) -> dict:
    server = LocalServer(tmp / "hostile").start()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/integration/test_hostile.py", "tests/integration/test_hostile_fuzz.py"],
                             cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "SERVICE_URL": server.url}, timeout=600)
    finally:
        server.stop()
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", out.stdout)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", out.stdout)) else 0
    return {"part": "hostile bodies and headers", "cases": passed + failed, "failures": failed,
            "note": "each a 4xx or a closed connection; /healthz answers after each"}


def uploads(tmp: Path, connections: int = 100) -> dict:
    """100 clients send 15 MB each and stall (bench/uploads.py): growth under 300 MB, others answered."""
    server = LocalServer(tmp / "uploads", MAX_BODY_BYTES=str(16 * 1024 * 1024)).start()
    try:
        row = stalled_uploads(server, connections=connections, body_mb=15)
    finally:
        server.stop()
    ok = row["rss_growth_peak_mb"] < 300 and row["failed"] == 0 and (row["p99_ms"] or 1e9) < 100
    return {"part": f"{connections} stalled 15 MB uploads", "cases": row["answered"] + row["failed"],
            "failures": row["failed"], "p99_ms": row["p99_ms"], "ok": ok,
            "rss": f"+{row['rss_growth_peak_mb']} MB at the peak, +{row['rss_growth_after_mb']} MB after",
            "note": "goal: growth under 300 MB in all, the other client's p99 under 100 ms"}


def idle_crowd(tmp: Path, connections: int = 2100) -> dict:
    """More silent connections than the workers' WORKER_CONNECTIONS (2 x 1000): new clients are still
    answered at once (the longest-waiting idle ones are closed), not after KEEPALIVE."""
    import socket

    import numpy as np
    import requests

    server = LocalServer(tmp / "idle", KEEPALIVE="30").start()
    host, port = server.url.split("//")[1].split(":")
    crowd, latencies, failures = [], [], 0
    try:
        for _ in range(connections):
            crowd.append(socket.create_connection((host, int(port)), timeout=10))
        time.sleep(1.0)
        for _ in range(50):  # a new connection each time, as a new client would
            seconds = timed_small_request(requests.post, server.url)
            if seconds is not None:
                latencies.append(seconds)
            else:
                failures += 1
    finally:
        for sock in crowd:
            sock.close()
        server.stop()
    p99 = float(np.percentile(latencies, 99)) * 1000 if latencies else None
    return {"part": f"{connections} silent connections (2 x 1000 allowed)", "cases": 50, "failures": failures,
            "p99_ms": p99, "ok": failures == 0 and p99 is not None and p99 < 1000,
            "note": "new clients answered within 1 s (the longest-waiting idle connections are closed)"}


PARTS = ("fuzz", "soak", "kill-9", "sigterm", "hostile", "uploads", "idle-crowd")


def table(rows: list[dict]) -> str:
    """One line per part, with its verdict."""
    lines = ["| part | cases / requests | failures | p99 ms | worker RSS | open fds | verdict | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p99 = f"{r['p99_ms']:.1f}" if r.get("p99_ms") is not None else ""
        lines.append(f"| {r['part']} | {r['cases']:,} | {r['failures']} | {p99} | {r.get('rss', '')} | "
                     f"{r.get('fds', '')} | {'ok' if r['ok'] else 'FAILED'} | {r['note']} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    return table(result["rows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak-seconds", type=float, default=300)
    parser.add_argument("--fuzz-examples", type=int, default=250, help="per operation (x 24 operations)")
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="run only this part (repeatable; default: all, in the order listed)")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--out", type=Path, default=results.default_path("stress"), help="the results file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stress-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = tmp / "bodies"
        bodies.mkdir()
        write_bodies(bodies, args.data_dir)
        parts = {"fuzz": lambda: fuzz(tmp, args.fuzz_examples),
                 "soak": lambda: soak(tmp, bodies, args.soak_seconds),
                 "kill-9": lambda: kill_9(tmp, bodies), "sigterm": lambda: sigterm(tmp, bodies),
                 "hostile": lambda: hostile(tmp), "uploads": lambda: uploads(tmp),
                 "idle-crowd": lambda: idle_crowd(tmp)}
        for name in PARTS:
            if args.part and name not in args.part:
                continue
            row = parts[name]()
            row.setdefault("ok", row["failures"] == 0)
            rows.append(row)
            print(f"  {row['part']}: {row['cases']} cases, {row['failures']} failures, {row['note']}", flush=True)
    result = results.save(args.out, "bench.stress", argv, args, {"rows": rows}, started)
    print(f"\n{report(result)}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
