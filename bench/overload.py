"""Offered load well past capacity: what the queue policy (deadlines, ``MAX_QUEUE_SIZE``) buys.

Issue 37's benchmark. In one run, against the real server (the service's gunicorn configuration,
``--workers`` workers), one-sample ``POST /predict`` with wrk (``bench/overload.lua``, which times
every answer by the client's own clock and sorts it: 200 within the deadline, 200 late, 503
refused, 504 expired):

1. **capacity**: ``--capacity-connections`` (16) connections, no deadline: answered requests/s;
2. **today**: ``--connections`` (256) connections, each answer judged against a ``--deadline-ms`` (50)
   deadline the server is not told of, no queue bound: what happens without the policy;
3. **policy**: the same connections, each request carrying its deadline
   (``X-Timeout-Microseconds``), on a server with ``MAX_QUEUE_SIZE`` at each of ``--queue``, twice:
   refused clients that **retry at once** (a retry storm: each refused connection sends again as soon
   as it has its 503), and clients that **wait the 503's Retry-After** (1 s) before they send again, as
   a client with a retry policy does (urllib3's ``Retry`` honours Retry-After, for POST when its
   ``allowed_methods`` include it; gRPC's retry policy obeys the pushback trailer), plus a random jitter
   of up to as much again, this benchmark's own, so that refused clients do not come back in step.
   A waiting client sends nothing else meanwhile: the best case for cooperative clients.

Capacity is the most the server answered without deadlines: (1), or (2) counting its late answers
too, whichever is more (256 connections make bigger batches than 16).
The goals, judged for each client behaviour on its row with the most goodput: goodput (200s within
their deadline) at least 90 % of capacity; no answer later than its deadline + 10 ms; refusals
answered within 5 ms at p99; ``/healthz`` within 1 s throughout (a prober asks it every 100 ms during
(2) and (3)). The first ``--warmup`` seconds of each loaded row are not counted: wrk opens every
connection at once, a burst of 256 requests that no steady load has.

    python -m bench.overload              # about 5 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench import results
from bench.bodies import bodies
from bench.harness import ROOT, SERVICE_APP, have_wrk, run_wrk, server

SCRIPT = ROOT / "bench" / "overload.lua"


@contextlib.contextmanager
def prober(url: str, every: float = 0.1):
    """Ask ``url`` every ``every`` seconds meanwhile; yields a dict that ends up with the worst latency."""
    seen = {"worst_s": 0.0, "failures": 0, "asked": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            start = time.perf_counter()
            try:
                ok = requests.get(url, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            seen["worst_s"] = max(seen["worst_s"], time.perf_counter() - start)
            seen["asked"] += 1
            seen["failures"] += not ok

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def phase(url: str, body: Path, connections: int, seconds: float, deadline_us: int, send: bool,
          honour: bool = False, warmup: float = 0) -> dict:
    got = run_wrk(f"{url}/predict", connections, seconds + warmup, SCRIPT, timeout=10, BODY=str(body),
                  DEADLINE_US=str(deadline_us), SEND_DEADLINE="1" if send else "0",
                  HONOUR_RETRY_AFTER="1" if honour else "0", WARMUP_S=str(warmup))
    got["seconds"] = got["duration_us"] / 1e6 - warmup
    got["goodput"] = got["ok_in_time"] / got["seconds"]
    return got


CLIENTS = {"storm": "retry at once", "retry_after": "wait Retry-After"}  # how a refused client comes back


def run(args) -> dict:
    deadline_us = int(args.deadline_ms * 1000)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        body = bodies(Path(tmp), args.data_dir)["mnist1"][0]
        with server(SERVICE_APP, args.workers, Path(tmp), LOG_LEVEL="warning") as srv:
            phase(srv.url, body, args.capacity_connections, 2, 0, False)  # warm
            out["capacity"] = phase(srv.url, body, args.capacity_connections, args.seconds, 0, False)
            with prober(f"{srv.url}/healthz") as seen:
                out["today"] = phase(srv.url, body, args.connections, args.seconds, deadline_us, False,
                                     warmup=args.warmup)
            out["today"]["healthz"] = seen
        out["policy"] = {client: {} for client in CLIENTS}
        for queue in args.queue:
            # KEEPALIVE above the longest wait (2 x Retry-After): a connection the server closed while its
            # client waited would make wrk ask overload.lua's delay() twice, and its waits go astray
            with server(SERVICE_APP, args.workers, Path(tmp), LOG_LEVEL="warning", MAX_QUEUE_SIZE=str(queue),
                        KEEPALIVE="5") as srv:
                phase(srv.url, body, args.capacity_connections, 2, 0, False)  # warm
                for client in CLIENTS:
                    with prober(f"{srv.url}/healthz") as seen:
                        row = out["policy"][client][str(queue)] = phase(
                            srv.url, body, args.connections, args.seconds, deadline_us, True,
                            honour=client == "retry_after", warmup=args.warmup)
                    row["healthz"] = seen
    # the most the server answered without deadlines: 256 connections make bigger batches than 16 (late
    # answers count here: they were computed)
    out["capacity"]["answers"] = max(out["capacity"]["goodput"], answered(out["today"]))
    capacity = out["capacity"]["answers"]
    rows = [out["today"], *(r for client in out["policy"].values() for r in client.values())]
    for row in rows:
        row["goodput_share"] = row["goodput"] / capacity
    out["goals"] = {client: goals(out["policy"][client]) for client in CLIENTS}
    return out


def goals(rows: dict) -> dict:
    """Issue 37's goals, judged on the row (one ``MAX_QUEUE_SIZE``) with the most goodput. A row that
    refused nothing misses the refusal goal: past capacity, a policy that sheds nothing has not met it."""
    best = max(rows.values(), key=lambda r: r["goodput"])
    return {"goodput_at_least_0.9": best["goodput_share"] >= 0.9,
            "no_answer_after_deadline_plus_10ms": best["worst_after_deadline_us"] <= 10_000,
            "refused_p99_under_5ms": best["refused"] > 0 and best["refused_p99_us"] <= 5_000,
            "healthz_within_1s": all(r["healthz"]["worst_s"] <= 1.0 and not r["healthz"]["failures"]
                                     for r in rows.values()),
            # an answer that is none of the above, a broken connection or a request never answered
            # within wrk's timeout would otherwise pass every goal unseen
            "no_failed_or_unanswered_request": failed(best) == 0}


def answered(row: dict) -> float:
    """200s a second, in time or late (each was computed)."""
    return (row["ok_in_time"] + row["ok_late"]) / row["seconds"]


def failed(row: dict) -> int:
    """Requests that got no answer of the kinds counted (wrk's socket errors and timeouts, other statuses)."""
    return row["other"] + row["socket_errors"] + row["timeouts"]


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    s = result["summary"]
    settings = result.get("settings", {})
    conns, deadline = settings.get("connections", 256), settings.get("deadline_ms", 50.0)
    lines = [f"| one-sample /predict, {conns} connections, {deadline:g} ms deadlines | a refused client | "
             "goodput (req/s in time) | share of capacity | 200 late | 503 refused (p99) | 504 expired | "
             "failed or unanswered | latest answer after its deadline | /healthz worst |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = [("no policy (the deadline not sent)", "(none refused)", s["today"], False)]
    rows += [(f"deadlines sent, MAX_QUEUE_SIZE={q}", CLIENTS[client], r, True)
             for client in CLIENTS for q, r in s["policy"][client].items()]
    for what, client, r, sent in rows:
        refused = f"{r['refused'] / r['seconds']:.0f}/s ({r['refused_p99_us'] / 1000:.1f} ms)" if r["refused"] else "0"
        late = f"{r['worst_after_deadline_us'] / 1000:.0f} ms" if sent else "n/a"
        lines.append(f"| {what} | {client} | {r['goodput']:.0f} | {r['goodput_share']:.2f} | "
                     f"{r['ok_late'] / r['seconds']:.0f}/s | {refused} | {r['expired'] / r['seconds']:.0f}/s | "
                     f"{failed(r)} | {late} | {r['healthz']['worst_s'] * 1000:.0f} ms |")
    capacity_connections = settings.get("capacity_connections", 16)
    lines.append(f"\n(capacity: {s['capacity']['answers']:.0f} req/s, the most answered without deadlines: at "
                 f"{capacity_connections} connections {s['capacity']['goodput']:.0f}, at {conns} "
                 f"{answered(s['today']):.0f}. "
                 f"The first {settings.get('warmup', 0):g} s of each loaded row are not counted.)")
    for client, met in s["goals"].items():
        lines.append(f"\nGoals, clients that {CLIENTS[client]}: met "
                     f"{', '.join(k for k, v in met.items() if v) or 'none'}; missed "
                     f"{', '.join(k for k, v in met.items() if not v) or 'none'}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--capacity-connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument("--queue", type=int, nargs="+", default=[8, 16, 32],
                        help="MAX_QUEUE_SIZE of the policy's servers, a row each for each client behaviour")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds at the start of each loaded row not counted: every connection opens at once")
    parser.add_argument("--out", type=Path, default=results.default_path("overload"))
    args = parser.parse_args(argv)
    if not have_wrk():
        return 2
    started = time.monotonic()
    summary = run(args)
    print(json.dumps(summary, indent=1))
    print("\n" + report({"summary": summary, "settings": vars(args)}))
    results.save(args.out, "bench.overload", argv, args, {"summary": summary}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
