"""What server-side batching costs a lone request: batching on against off, in alternating pairs.

Issue 17's goal: at concurrency 1, p50 no more than 5 % above the same server with batching off.
On a shared machine whose speed swings 2x within seconds, two rows measured a minute apart cannot
show 5 %. Here both servers (the service's gunicorn configuration, ``--workers`` each) are up at
once and wrk drives one connection at them in bursts of ``--seconds``, in
pairs: on then off, and off then on in the next pair, so neither always goes first. Each pair
gives one ratio (on / off) of p50s, and of the workers' CPU time per request (from ``/proc``),
measured within a few seconds of each other. The answer is the median ratio with a
distribution-free 95 % interval (the sign test's order statistics). Drift slower than a pair
cancels out of each ratio, and a burst that met another tenant's spike moves one ratio, not the
median. ``--out`` keeps the pairs, and ``--pool`` summarizes several runs' pairs together.

    python -m bench.lone_request --pairs 150           # about 7 minutes
    python -m bench.lone_request --pool run1.json run2.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import results
from bench.bodies import bodies
from bench.harness import SERVICE_APP, Server, have_wrk, server, warm, wrk
from bench.medians import median_interval
from bench.procfs import children_cpu_seconds


def burst(srv: Server, body: Path, seconds: float) -> tuple[int, float, int]:
    """One wrk burst on one connection: (p50 µs, workers' CPU µs per request, errors)."""
    before = children_cpu_seconds(srv.proc.pid)
    r = wrk(f"{srv.url}/predict", body, 1, seconds)
    served = r["requests"] - r["non_2xx"]  # per request served: a failed one is no cheaper answer
    return r["p50_us"], (children_cpu_seconds(srv.proc.pid) - before) * 1e6 / max(served, 1), r["errors"]


def run_pairs(args) -> list[dict]:
    """Both servers up at once, ``args.pairs`` pairs of bursts, the first of each pair alternating."""
    pairs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        body = bodies(Path(tmp), args.data_dir)[args.model][0]
        servers = {b: stack.enter_context(server(SERVICE_APP, args.workers, Path(tmp), LOG_LEVEL="info", BATCHING=b))
                   for b in ("on", "off")}
        for srv in servers.values():  # warm both
            warm(f"{srv.url}/predict", body, 4)
        for k in range(args.pairs):
            order = ("on", "off") if k % 2 == 0 else ("off", "on")
            got = {b: burst(servers[b], body, args.seconds) for b in order}
            pair = {"first": order[0], "p50_us": {b: got[b][0] for b in got}, "cpu_us": {b: got[b][1] for b in got},
                    "errors": sum(g[2] for g in got.values())}
            pair["p50_ratio"] = pair["p50_us"]["on"] / pair["p50_us"]["off"]
            pair["cpu_ratio"] = pair["cpu_us"]["on"] / pair["cpu_us"]["off"]
            pairs.append(pair)
            print(f"  pair {k:2d} ({order[0]} first)  p50 on {got['on'][0]:5d} / off {got['off'][0]:5d} µs "
                  f"= {pair['p50_ratio']:.3f}   CPU {got['on'][1]:5.0f} / {got['off'][1]:5.0f} µs "
                  f"= {pair['cpu_ratio']:.3f}   load {os.getloadavg()[0]:.1f}", flush=True)
    return pairs


def summarize(pairs: list[dict]) -> dict:
    """The median ratios with their intervals, the median p50s and CPU times, and the errors."""
    summary: dict = {name: dict(zip(("median", "low95", "high95"), median_interval([p[name] for p in pairs]),
                                    strict=True)) for name in ("p50_ratio", "cpu_ratio")}
    summary["pairs"] = len(pairs)
    summary["errors"] = sum(p["errors"] for p in pairs)
    for b in ("on", "off"):
        summary[f"p50_us_{b}"] = statistics.median(p["p50_us"][b] for p in pairs)
        summary[f"cpu_us_{b}"] = statistics.median(p["cpu_us"][b] for p in pairs)
    return summary


def summary_table(summary: dict) -> str:
    """The median ratios with their intervals, and the medians they come from."""
    lines = ["| batching on / off | median | 95 % interval |", "| --- | --- | --- |"]
    for name, what in (("p50_ratio", "p50 latency"), ("cpu_ratio", "workers' CPU per request")):
        s = summary[name]
        lines.append(f"| {what} | {s['median']:.3f} | {s['low95']:.3f}-{s['high95']:.3f} |")
    lines.append(f"\n({summary['pairs']} pairs; medians: p50 {summary['p50_us_on']:.0f} / {summary['p50_us_off']:.0f} "
                 f"µs, CPU {summary['cpu_us_on']:.0f} / {summary['cpu_us_off']:.0f} µs a request; "
                 f"errors {summary['errors']})")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    return summary_table(result["summary"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_request", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=1, help="per burst")
    parser.add_argument("--model", choices=("mnist1", "xor1"), default="mnist1", help="the one-sample body")
    parser.add_argument("--out", type=Path, default=results.default_path("lone_request"),
                        help="the results file: the summary and every pair")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: the summary of the pairs of these earlier runs' results files together")
    args = parser.parse_args(argv)
    if args.pool:
        pairs = [p for path in args.pool for p in json.loads(path.read_text())["pairs"]]
        print(f"{len(args.pool)} runs pooled\n{summary_table(summarize(pairs))}")
        return 0
    if not have_wrk():
        return 2
    started = time.monotonic()
    pairs = run_pairs(args)
    summary = summarize(pairs)
    print(f"\n{args.pairs} pairs of {args.seconds} s bursts, {args.model}, c=1, {args.workers} workers each")
    print(summary_table(summary))
    results.save(args.out, "bench.lone_request", argv, args, {"summary": summary, "pairs": pairs}, started)
    errors = sum(p["errors"] for p in pairs)
    if errors:
        print(f"{errors} requests failed: their fast error answers are in the p50s; the run does not count")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
