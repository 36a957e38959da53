"""Many large uploads that stall: what they cost the server's memory and its other clients.

Each of ``connections`` clients sends a request head with ``Content-Length: body_bytes``, then all of
the body but its last byte as fast as the server takes it, and then nothing, holding the
connection. Meanwhile a well-behaved client sends small ``/predict`` requests. Measured: the
workers' RSS before, at the peak of the burst, and after the stalled connections are cut; the
well-behaved client's answers and latencies.

The row goes to ``bench/results/uploads.json``.

    python -m bench.uploads [--connections 100] [--mb 15]      (also a row of make stress)
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from bench import results
from bench.procfs import children, rss_mb
from tests.integration.conftest import LocalServer

SMALL = json.dumps({"model": "xor", "inputs": [[0, 1]]})


def timed_small_request(post, url: str) -> float | None:
    """Seconds one small ``/predict`` took through ``post`` (a session's, or ``requests.post`` for a new
    connection each time), or None if it failed."""
    start = time.perf_counter()
    try:
        ok = post(f"{url}/predict", data=SMALL, headers={"Content-Type": "application/json"},
                  timeout=10).status_code == 200
    except requests.RequestException:
        ok = False
    return time.perf_counter() - start if ok else None


def workers_rss_mb(server: LocalServer) -> float:
    """The sum of the workers' resident memory, in MB (a worker that just exited counts 0)."""
    sizes = [rss_mb(pid) for pid in children(server.master_pid())]
    return sum(size for size in sizes if not math.isnan(size))


class StalledUploads:
    """``connections`` sockets that each send all but the last byte of a large body, then hold."""

    def __init__(self, url: str, connections: int, body_bytes: int, path: str = "/predict") -> None:
        self.host, port = url.split("//")[1].split(":")
        self.port, self.connections, self.body_bytes, self.path = int(port), connections, body_bytes, path
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.sent = 0

    def _upload(self, sock: socket.socket) -> None:
        head = (f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {self.body_bytes}\r\n\r\n").encode()
        chunk = memoryview(b" " * (1 << 20))  # sent from a view: no copies, so the GIL is mostly free
        left = self.body_bytes - 1
        try:
            sock.sendall(head)
            while left > 0:
                n = sock.send(chunk[:min(left, len(chunk))])
                left -= n
                self.sent += n
        except OSError:  # the server closed it, or the timeout ran out while it read nothing
            pass

    def __enter__(self) -> StalledUploads:
        for _ in range(self.connections):
            sock = socket.create_connection((self.host, self.port), timeout=30)
            self.sockets.append(sock)
            thread = threading.Thread(target=self._upload, args=(sock,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        for sock in self.sockets:
            sock.close()
        for thread in self.threads:
            thread.join(5)


def stalled_uploads(server: LocalServer, connections: int = 100, body_mb: float = 15,
                    burst_seconds: float = 8.0, requests_meanwhile: int = 200) -> dict:
    """One row: RSS growth during and after the burst, and the well-behaved client's answers."""
    url = server.url
    with requests.Session() as s:  # warm up both workers, so the baseline is a warm server
        for _ in range(20):
            s.post(f"{url}/predict", data=SMALL, headers={"Content-Type": "application/json"}, timeout=10)
    before = workers_rss_mb(server)
    peak = before
    latencies, failures = [], 0
    with StalledUploads(url, connections, int(body_mb * 1e6)) as uploads:
        deadline = time.monotonic() + burst_seconds
        with requests.Session() as s:
            while time.monotonic() < deadline or len(latencies) + failures < requests_meanwhile:
                seconds = timed_small_request(s.post, url)
                if seconds is not None:
                    latencies.append(seconds)
                else:
                    failures += 1
                peak = max(peak, workers_rss_mb(server))
                if len(latencies) + failures >= 10 * requests_meanwhile:
                    break
                time.sleep(0.01)
        sent_mb = uploads.sent / 1e6
    time.sleep(2.0)
    after = workers_rss_mb(server)
    return {"connections": connections, "body_mb": body_mb, "uploaded_mb": round(sent_mb),
            "rss_before_mb": round(before), "rss_growth_peak_mb": round(peak - before),
            "rss_growth_after_mb": round(after - before), "answered": len(latencies), "failed": failures,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None}


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    r = result["row"]
    p99 = f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else ""
    return ("| stalled uploads | sent | workers' RSS before | growth at the peak | growth after | "
            "small requests answered / failed | their p99 ms |\n| --- | --- | --- | --- | --- | --- | --- |\n"
            f"| {r['connections']} x {r['body_mb']:g} MB | {r['uploaded_mb']:,} MB | {r['rss_before_mb']} MB | "
            f"+{r['rss_growth_peak_mb']} MB | +{r['rss_growth_after_mb']} MB | {r['answered']} / {r['failed']} | "
            f"{p99} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.uploads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--mb", type=float, default=15.0, help="each upload's size (the limit is 16 MiB)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=results.default_path("uploads"), help="the results file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalServer(Path(tmp), MAX_BATCH="1024", MAX_BODY_BYTES=str(16 * 1024 * 1024)).start()
        try:
            row = stalled_uploads(server, args.connections, args.mb, args.seconds)
        finally:
            server.stop()
    result = results.save(args.out, "bench.uploads", argv, args, {"row": row}, started)
    print(json.dumps(row))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
