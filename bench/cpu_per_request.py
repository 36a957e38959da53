"""CPU time per request of one gunicorn worker, for comparing code on a machine shared with other work.

On a shared, noisy machine throughput measures how much CPU the other work left us as much as the
code. A worker's own CPU time (user + system, from ``/proc``) per request served does not depend on
that, so two versions of the server can be compared in one session: each contender is one worker
(``WORKERS=1``) with the service's gunicorn configuration, all are up at once and driven in turns by
wrk (the same body, ``--connections``), rounds rotated, and each prints its CPU µs per request.

Contenders: the bare-Flask ceiling, ``/predict`` MNIST one sample and ``/predict`` XOR (the
service's per-request cost with a negligible model), with ``--protocols`` V1 and V2 JSON MNIST one
sample too, with ``--batching-off`` ``/predict`` MNIST from a server with ``BATCHING=off``, for each
source tree given (``--tree``, e.g. an unpacked ``git archive`` of the code before a change, and this
checkout). ``--profile DIR`` also
records every round of the MNIST and ceiling contenders with ``py-spy record --format raw``
(``pip install py-spy``; a tool, not a dependency), for a breakdown of where the time goes.

    python -m bench.cpu_per_request --tree /tmp/before --tree . --rounds 6 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.serve_load import CEILING_APP, ROOT, SERVICE_APP, Server, bodies, server, wrk


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (``state`` first, as proc(5) counts from 3)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Page faults served without I/O: on a large message, mostly freshly mapped memory touched."""
    return int(proc_stat(pid)[7])


def children(pid: int) -> list[int]:
    """The process's children (a gunicorn master's workers), from ``pgrep -P``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def worker_pid(srv: Server) -> int:
    return children(srv.proc.pid)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="a source tree to serve (repeatable; "
                        "default: this checkout)")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round and contender")
    parser.add_argument("--profile", type=Path, help="write py-spy raw profiles of each round here")
    parser.add_argument("--batching-off", action="store_true", help="also /predict MNIST from a server with "
                        "BATCHING=off (with --connections 1: what batching costs a lone request)")
    parser.add_argument("--protocols", action="store_true", help="also V1 :predict and V2 JSON infer, MNIST one "
                        "sample (each protocol's codec beside /predict's)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is needed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    trees = [t.resolve() for t in args.tree or [ROOT]]
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        data = bodies(Path(tmp), args.data_dir)
        contenders = []  # (label, server, path, body)
        for i, tree in enumerate(trees):
            tag = f"tree {i} " if len(trees) > 1 else ""
            ceiling = stack.enter_context(server(CEILING_APP, 1, Path(tmp), root=tree))
            ours = stack.enter_context(server(SERVICE_APP, 1, Path(tmp), root=tree, LOG_LEVEL="info"))
            contenders += [(f"{tag}ceiling", ceiling, "/predict", "mnist1"),
                           (f"{tag}/predict mnist", ours, "/predict", "mnist1"),
                           (f"{tag}/predict xor", ours, "/predict", "xor1")]
            if args.batching_off:
                unbatched = stack.enter_context(server(SERVICE_APP, 1, Path(tmp), root=tree, LOG_LEVEL="info",
                                                       BATCHING="off"))
                contenders.append((f"{tag}/predict mnist, batching off", unbatched, "/predict", "mnist1"))
            if args.protocols:
                contenders += [(f"{tag}V1 mnist", ours, "/v1/models/mnist:predict", "v1mnist1"),
                               (f"{tag}V2 JSON mnist", ours, "/v2/models/mnist/infer", "v2jsonmnist1")]
        for _, srv, path, body in contenders:
            wrk(f"{srv.url}{path}", data[body][0], 4, 1)
        results: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in contenders}
        for k in range(args.rounds):
            for label, srv, path, body in contenders[k % len(contenders):] + contenders[:k % len(contenders)]:
                pid, recorder = worker_pid(srv), None
                if args.profile and "xor" not in label and "V" not in label and "off" not in label:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    out = args.profile / f"{label.replace(' ', '_').replace('/', '')}-{k}.raw"
                    recorder = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "500", "--nonblocking",
                                                 "--duration", str(round(args.seconds + 1)), "--format", "raw",
                                                 "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                before = cpu_seconds(pid)
                r = wrk(f"{srv.url}{path}", data[body][0], args.connections, args.seconds)
                used = cpu_seconds(pid) - before
                if recorder is not None:
                    recorder.wait()
                results[label].append((r["rps"], used * 1e6 / max(r["requests"], 1)))
                print(f"  round {k} {label:28s} {r['rps']:8.0f} req/s  {results[label][-1][1]:6.0f} µs CPU/request "
                      f"errors {r['errors']}  load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| contender | req/s (median) | CPU µs/request (median) | rounds' CPU µs |\n| --- | --- | --- | --- |")
    for label, rows in results.items():
        rps, cpu = statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows)
        print(f"| {label} | {rps:,.0f} | {cpu:,.0f} | {', '.join(f'{c:.0f}' for _, c in rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
