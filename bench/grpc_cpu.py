"""CPU time per gRPC call of the gRPC server processes, for comparing code on a machine shared with other work.

Throughput on this shared 2-core machine measures how much CPU the other work left as much as the
code; the gRPC processes' own CPU time (user + system, from ``/proc``, as ``bench/cpu_per_request.py``
reads a gunicorn worker's) per call answered does not depend on that. Each contender is one
``python -m service`` (``WORKERS=2``, a gRPC process each: the default arrangement) from a source
tree of its own (``--tree``, e.g. an unpacked ``git archive`` of the code before a change, and this
checkout), optionally with extra environment (``--env TREE_INDEX:NAME=VALUE``). All are up at once and
driven in turns by ``bench/grpc_load.py``'s tritonclient.grpc driver (MNIST one sample, or
``--batch`` images a call; a connection per caller), rounds rotated; each round reads the gRPC
processes' CPU at the window's start and end.
Printed per contender and concurrency: the median µs of the server's and the clients' CPU per call,
calls/s and the server's minor page faults per call over the rounds (exit status 1 if any call failed).

    python -m bench.grpc_cpu --tree /tmp/before --tree . --concurrency 1 64 --rounds 6
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cpu_per_request import children, cpu_seconds, minor_faults
from bench.grpc_load import drive

ROOT = Path(__file__).resolve().parents[1]


class Contender:
    """``python -m service`` from one source tree, with its gRPC processes' pids."""

    def __init__(self, label: str, tree: Path, tmp: Path, env: dict[str, str]) -> None:
        from tests.integration.conftest import SERVER_ENV, free_ports

        self.label = label
        port, grpc_port = free_ports(2)
        self.url, self.target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        tmp.mkdir(parents=True, exist_ok=True)
        environ = {**os.environ, **SERVER_ENV, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "warning",
                   "GRPC_PORT": str(grpc_port), "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
                   "PYTHONPATH": str(tree), **env}
        self.log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=tree, env=environ,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def grpc_pids(self) -> list[int]:
        return [pid for pid in children(self.proc.pid) if b"service.grpc.server" in cmdline(pid)]

    def http_pids(self) -> list[int]:
        """gunicorn's workers (the children of its master, a child of the supervisor)."""
        return [worker for pid in children(self.proc.pid) if b"gunicorn" in cmdline(pid) for worker in children(pid)]

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def drive_timed(protocol: str, target: str, threads: int, start_at: float, end_at: float,
                out: multiprocessing.Queue, spent: multiprocessing.Queue, batch: int = 1) -> None:
    """``bench/grpc_load.py``'s driver in this client process, and this process's own CPU seconds over
    the window on ``spent`` (the client shares the server's cores: its cost per call matters too)."""
    readings: list[float] = []

    def read_at(when: float) -> None:
        time.sleep(max(0.0, when - time.monotonic()))
        readings.append(time.process_time())

    reader = threading.Thread(target=lambda: (read_at(start_at), read_at(end_at)))
    reader.start()
    drive(protocol, target, threads, batch, start_at, end_at, out)
    reader.join()
    spent.put(readings[1] - readings[0])


def cpu(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, minor page faults) the processes have used so far."""
    return sum(cpu_seconds(pid) for pid in pids), sum(minor_faults(pid) for pid in pids)


def measure(contender: Contender, concurrency: int, seconds: float, processes: int = 2,
            protocol: str = "grpc", batch: int = 1) -> tuple[float, float, float, int, float]:
    """One round: (µs of server CPU per call, µs of client CPU per call, calls/s, errors, the server's
    minor page faults per call) over a window of ``seconds``; the server is the gRPC processes for
    ``grpc``, gunicorn's workers for ``http`` (tritonclient.http with binary tensors)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    out, spent = context.Queue(), context.Queue()
    start_at = time.monotonic() + 3.0  # the client processes start and warm up before the window
    end_at = start_at + seconds
    pids = contender.grpc_pids() if protocol == "grpc" else contender.http_pids()
    target = contender.target if protocol == "grpc" else contender.url.removeprefix("http://")
    readings: list[tuple[float, int]] = []

    def read_at(when: float) -> None:
        time.sleep(max(0.0, when - time.monotonic()))
        readings.append(cpu(pids))

    reader = threading.Thread(target=lambda: (read_at(start_at), read_at(end_at)))
    reader.start()
    procs = [context.Process(target=drive_timed, args=(protocol, target, n, start_at, end_at, out, spent, batch))
             for n in shares]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    client = sum(spent.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    reader.join()
    calls = sum(r[0] for r in results)
    errors = sum(len(r[1]) for r in results)
    if errors:
        print(f"  {contender.label} c={concurrency}: {errors} errors, e.g. {results[0][1][:1]}", flush=True)
    per_call = 1 / max(1, calls)
    return ((readings[1][0] - readings[0][0]) * per_call * 1e6, client * per_call * 1e6, calls / seconds, errors,
            (readings[1][1] - readings[0][1]) * per_call)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", help="a source tree to serve (repeatable; "
                        "default: this checkout)")
    parser.add_argument("--env", action="append", default=[], help="INDEX:NAME=VALUE for contender INDEX "
                        "(a tree given twice with different settings compares settings)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--http", action="store_true", help="also each contender's HTTP V2 binary "
                        "(tritonclient.http), its server CPU read from gunicorn's workers")
    args = parser.parse_args(argv)
    from tests.integration.conftest import wait_ready
    from tests.integration.test_grpc import wait_grpc

    trees = [t.resolve() for t in args.tree or [ROOT]]
    envs: list[dict[str, str]] = [{} for _ in trees]
    for spec in args.env:
        index, assignment = spec.split(":", 1)
        name, value = assignment.split("=", 1)
        envs[int(index)][name] = value
    with tempfile.TemporaryDirectory(prefix="bench-grpc-cpu-") as tmp, contextlib.ExitStack() as stack:
        contenders = []
        for i, (tree, env) in enumerate(zip(trees, envs, strict=True)):
            label = f"{i}: {tree.name or tree}" + (f" {env}" if env else "")
            c = Contender(label, tree, Path(tmp) / str(i), env)
            stack.callback(c.stop)
            contenders.append(c)
        for c in contenders:
            wait_ready(c.url, proc=c.proc)
            wait_grpc(c.target)
            print(f"{c.label}: gRPC pids {c.grpc_pids()}", flush=True)
        runs = [(c.label, c, "grpc") for c in contenders]
        failed = False
        if args.http:
            runs += [(f"{c.label} HTTP V2 binary", c, "http") for c in contenders]
        for level in args.concurrency:
            results: dict[str, list[tuple[float, float, float, int, float]]] = {label: [] for label, *_ in runs}
            for k in range(args.rounds):
                for label, c, protocol in runs[k % len(runs):] + runs[:k % len(runs)]:
                    r = measure(c, level, args.seconds, protocol=protocol, batch=args.batch)
                    results[label].append(r)
                    print(f"  round {k} c={level} {label}: server {r[0]:.0f} µs/call ({r[4]:.0f} page faults), "
                          f"client {r[1]:.0f}, {r[2]:.0f} calls/s (load {os.getloadavg()[0]:.1f})", flush=True)
            for label, rs in results.items():
                print(f"c={level} {label}: server CPU per call median {statistics.median(r[0] for r in rs):.0f} µs "
                      f"{[round(r[0]) for r in rs]}; client {statistics.median(r[1] for r in rs):.0f} µs "
                      f"{[round(r[1]) for r in rs]}; calls/s {statistics.median(r[2] for r in rs):.0f} "
                      f"{[round(r[2]) for r in rs]}; server page faults per call "
                      f"{statistics.median(r[4] for r in rs):.0f}", flush=True)
                failed = failed or any(r[3] for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
