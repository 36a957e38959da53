"""Serving throughput and latency of /predict on loopback, measured against the real gunicorn server.

Starts ``python -m service`` on a free loopback port (or uses ``--url``), then for each batch size
sends MNIST test images from ``--concurrency`` client threads for a bounded number of requests
and time, and reports requests/s, images/s and latency percentiles. The client runs on the same
2 cores as the server, so these are lower bounds for a separate client machine.

    python -m bench.serve_load [--url http://127.0.0.1:8000] [--batches 1 32 256] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from training.datasets import mnist


def run_load(url: str, payload: bytes, requests_total: int, concurrency: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [requests_total]
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        nonlocal errors
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                start = time.perf_counter()
                r = session.post(f"{url}/predict", data=payload, headers={"Content-Type": "application/json"},
                                 timeout=60)
                elapsed = time.perf_counter() - start
                with lock:
                    if r.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
    return {"requests": len(latencies), "errors": errors, "seconds": wall, "rps": len(latencies) / wall,
            "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (default: start one here)")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--requests", type=int, default=200, help="per batch size")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per batch size")
    parser.add_argument("--json", type=Path, default=Path("bench/results/serve_load.json"))
    args = parser.parse_args(argv)
    x = mnist(args.data_dir).eval_sets["test"][0]
    server = None
    url = args.url
    if url is None:
        from tests.integration.conftest import LocalServer

        server = LocalServer(Path(tempfile.mkdtemp(prefix="bench-"))).start()
        url = server.url
    try:
        rows = []
        for batch in args.batches:
            payload = json.dumps({"model": "mnist", "inputs": [[float(v) for v in row] for row in x[:batch]]}).encode()
            run_load(url, payload, 10, args.concurrency, 10)  # warm-up
            result = run_load(url, payload, args.requests, args.concurrency, args.max_seconds)
            result.update(batch=batch, images_per_s=result["rps"] * batch, body_kb=len(payload) / 1024)
            rows.append(result)
    finally:
        if server is not None:
            server.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(f"| batch | body KB | requests | errors | req/s | images/s | p50 ms | p95 ms | p99 ms |  (concurrency "
          f"{args.concurrency}, {url})")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['body_kb']:.0f} | {r['requests']} | {r['errors']} | {r['rps']:.1f} | "
              f"{r['images_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} |")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
