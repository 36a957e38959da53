"""What capture costs ``/predict``: capture off, on at rate 0 and on at rate 1.0, in rotating rounds.

Issue 35's goal: capture at ``CAPTURE_SAMPLE_RATE=1.0`` costs at most 10 % of one-sample ``/predict``
throughput at 16 connections, and nothing measurable at rate 0; the drift score (on by default) is
measured the same way, against a server without it. Four servers (the service's
gunicorn configuration, ``--workers`` each, each rate-1 server writing into a fresh directory with a
budget large enough never to fill) are up at once; wrk drives each in turn for ``--seconds`` at
``--connections``, and the order rotates every round so none always goes first. Each round gives
three ratios of answered requests per second (rate 1 / off, rate 0 / off, off / no drift) measured within seconds
of each other; the answer is each ratio's median with the sign test's distribution-free 95 %
interval (``bench/medians.py``), as ``bench.lone_request`` does. It also reports what the rate-1
server wrote: records, drops and bytes per request.

    python -m bench.capture_cost --rounds 30        # about 4 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench import results
from bench.bodies import bodies
from bench.harness import SERVICE_APP, have_wrk, server, warm, wrk
from bench.medians import median_interval

VARIANTS = ("plain", "off", "rate0", "rate1")  # plain: no capture and no drift score (DRIFT_WINDOW=0)
RECORDS = re.compile(r'^nn_capture_records_total\{kind="capture",outcome="(\w+)"\} ([0-9.e+]+)$', re.M)


def environment(variant: str, tmp: Path) -> dict[str, str]:
    if variant == "plain":
        return {"DRIFT_WINDOW": "0"}
    if variant == "off":
        return {}
    directory = tmp / f"capture-{variant}"
    directory.mkdir()
    return {"CAPTURE_DIR": str(directory), "CAPTURE_SAMPLE_RATE": "0" if variant == "rate0" else "1",
            "CAPTURE_MAX_BYTES": str(64 << 30)}


def run_rounds(args) -> tuple[list[dict], dict]:
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        body = bodies(Path(tmp), args.data_dir)[args.model][0]
        servers = {v: stack.enter_context(server(SERVICE_APP, args.workers, Path(tmp), LOG_LEVEL="warning",
                                                 **environment(v, Path(tmp))))
                   for v in VARIANTS}
        for srv in servers.values():  # warm all three
            warm(f"{srv.url}/predict", body, args.connections)
        for k in range(args.rounds):
            order = VARIANTS[k % len(VARIANTS):] + VARIANTS[:k % len(VARIANTS)]
            got = {v: wrk(f"{servers[v].url}/predict", body, args.connections, args.seconds) for v in order}
            rnd = {"first": order[0], "rps": {v: got[v]["rps"] for v in order},
                   "p99_us": {v: got[v]["p99_us"] for v in order}, "errors": sum(g["errors"] for g in got.values())}
            rnd["rate1_ratio"] = rnd["rps"]["rate1"] / rnd["rps"]["off"]
            rnd["rate0_ratio"] = rnd["rps"]["rate0"] / rnd["rps"]["off"]
            rnd["drift_ratio"] = rnd["rps"]["off"] / rnd["rps"]["plain"]
            rounds.append(rnd)
            print(f"  round {k:2d} ({order[0]} first)  req/s plain {rnd['rps']['plain']:6.0f} off "
                  f"{rnd['rps']['off']:6.0f}  rate0 {rnd['rps']['rate0']:6.0f}  rate1 {rnd['rps']['rate1']:6.0f}"
                  f"   rate1/off "
                  f"{rnd['rate1_ratio']:.3f}  rate0/off {rnd['rate0_ratio']:.3f}  off/plain {rnd['drift_ratio']:.3f}"
                  f"   load {os.getloadavg()[0]:.1f}", flush=True)
        time.sleep(0.5)  # the last records flushed (every 50 ms)
        written = capture_counts(servers["rate1"].url)
        directory = Path(tmp) / "capture-rate1"
        written["bytes_on_disk"] = sum(p.stat().st_size for p in directory.glob("*.jsonl"))
    return rounds, written


def capture_counts(url: str) -> dict:
    text = requests.get(f"{url}/metrics", timeout=10).text
    counts: dict = {}
    for outcome, value in RECORDS.findall(text):
        counts[outcome] = counts.get(outcome, 0) + round(float(value))
    return counts


def summarize(rounds: list[dict], written: dict) -> dict:
    summary: dict = {name: dict(zip(("median", "low95", "high95"), median_interval([r[name] for r in rounds]),
                                    strict=True)) for name in ("rate1_ratio", "rate0_ratio", "drift_ratio")}
    summary["rounds"] = len(rounds)
    summary["errors"] = sum(r["errors"] for r in rounds)
    for v in VARIANTS:
        summary[f"rps_{v}"] = statistics.median(r["rps"][v] for r in rounds)
        summary[f"p99_us_{v}"] = statistics.median(r["p99_us"][v] for r in rounds)
    summary["written"] = written
    return summary


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    s = result["summary"]
    lines = [f"| one-sample /predict req/s at c={result.get('settings', {}).get('connections', 16)}, ratio | median "
             "| 95 % interval |", "| --- | --- | --- |"]
    for name, what in (("rate1_ratio", "capture at CAPTURE_SAMPLE_RATE=1.0 / capture off"),
                       ("rate0_ratio", "capture at CAPTURE_SAMPLE_RATE=0 / capture off"),
                       ("drift_ratio", "drift score on (DRIFT_WINDOW=1000, the default) / off")):
        lines.append(f"| {what} | {s[name]['median']:.3f} | {s[name]['low95']:.3f}-{s[name]['high95']:.3f} |")
    w = s["written"]
    per = w.get("bytes_on_disk", 0) / max(w.get("written", 0), 1)
    lines.append(f"\n({s['rounds']} rounds; median req/s no drift {s['rps_plain']:.0f}, capture off "
                 f"{s['rps_off']:.0f}, rate 0 {s['rps_rate0']:.0f}, "
                 f"rate 1 {s['rps_rate1']:.0f}; p99 capture off / rate 0 / rate 1 {s['p99_us_off']:.0f} / "
                 f"{s['p99_us_rate0']:.0f} / "
                 f"{s['p99_us_rate1']:.0f} µs; errors {s['errors']}; the rate-1 server wrote {w.get('written', 0)} "
                 f"records ({per:.0f} bytes each), dropped {w.get('dropped_queue', 0)} (queue full) and "
                 f"{w.get('dropped_budget', 0)} (budget))")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=2, help="per burst")
    parser.add_argument("--model", choices=("mnist1", "xor1"), default="mnist1", help="the one-sample body")
    parser.add_argument("--out", type=Path, default=results.default_path("capture_cost"))
    args = parser.parse_args(argv)
    if not have_wrk():
        return 2
    started = time.monotonic()
    rounds, written = run_rounds(args)
    summary = summarize(rounds, written)
    result = {"summary": summary, "rounds": rounds}
    print("\n" + report({"summary": summary, "settings": {"connections": args.connections}}))
    results.save(args.out, "bench.capture_cost", argv, args, result, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
