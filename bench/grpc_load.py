"""gRPC beside HTTP V2 binary under load: MNIST one sample (or a batch) at concurrency 1, 16 and 64,
against one ``python -m service`` (the default arrangement: WORKERS=2, a gRPC process each).

``wrk`` speaks no gRPC and ghz is not installed here, so the load comes from tritonclient in client
processes of their own (``--client-processes``, each running its share of the concurrency on
threads, one client and one connection each): ``tritonclient.grpc`` for the gRPC rows and
``tritonclient.http`` with binary tensors for the HTTP V2 rows, the same driver for both, never the
server's Python. (With ``--shared-connection`` the gRPC clients of a process share one connection,
grpcio's default: all of its calls then go to one gRPC server process, since ``SO_REUSEPORT``
spreads connections, not calls.) The
clients share the server's cores, so the figures bound what the server does from below and compare
the two front-ends under the same client cost; they are not the server's ceiling. The two
contenders run in turns (``--rounds``, order rotated each round) and each row is the median round,
as ``bench/serve_load.py`` does, because this shared machine's speed drifts within minutes. The rows
go to ``bench/results/grpc_load.json``.

    python -m bench.grpc_load                        # about 1 minute: 3 rounds x 2 x 3 levels x 3 s
    python -m bench.grpc_load --batch 256 --concurrency 8
    python -m bench.grpc_load --compare-grpc-batching   # and gRPC with GRPC_BATCHING=off, in the same turns
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import results
from bench.machine import machine

CONTENDERS = ("gRPC (tritonclient.grpc)", "HTTP V2 binary (tritonclient.http)")
UNBATCHED = "gRPC, GRPC_BATCHING=off"  # with --compare-grpc-batching: a second server, its gRPC unbatched


def drive(protocol: str, target: str, threads: int, batch: int, start_at: float, end_at: float,
          out: multiprocessing.Queue, shared_connection: bool = False) -> None:
    """One client process: ``threads`` clients sending MNIST inferences back to back until ``end_at``;
    puts (answered, error messages, latencies in seconds) of the calls that ended within [start_at, end_at]
    (``time.monotonic()``, one clock for every process of the machine)."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module
    x = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def loop() -> None:
        # a connection per caller on both sides: grpcio would otherwise share one per process among
        # its channels (the global subchannel pool), and the kernel spreads connections, not calls
        options = {"channel_args": [("grpc.use_local_subchannel_pool", 1)]} if protocol == "grpc" and \
            not shared_connection else {}
        with client_module.InferenceServerClient(target, **options) as client:
            tensor = client_module.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            kwargs = {"binary_data": True} if protocol == "http" else {}
            outputs = [client_module.InferRequestedOutput("probabilities", **kwargs)]
            while (sent := time.monotonic()) < end_at:
                try:
                    client.infer("mnist", [tensor], outputs=outputs)
                    error = None
                except Exception as exc:  # counted, not raised: a benchmark row reports its errors
                    error = str(exc)[:200]
                done = time.monotonic()
                if start_at <= sent and done <= end_at:
                    with lock:
                        if error is None:
                            latencies.append(done - sent)
                        else:
                            errors.append(error)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put((len(latencies), errors, latencies))


def measure(protocol: str, target: str, concurrency: int, seconds: float, batch: int = 1,
            processes: int = 2, warm: float = 1.0, shared_connection: bool = False) -> dict:
    """One row: ``concurrency`` calls in flight from ``min(processes, concurrency)`` client processes."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # grpcio and fork do not mix
    out = context.Queue()
    start_at = time.monotonic() + warm + 2.0  # room for the processes to start and warm up
    end_at = start_at + seconds
    procs = [context.Process(target=drive, args=(protocol, target, n, batch, start_at, end_at, out,
                                                                shared_connection))
             for n in shares]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + warm + 120) for _ in procs]
    for p in procs:
        p.join(30)
    latencies = np.sort(np.concatenate([np.asarray(r[2], float) for r in results])) if results else np.array([])
    answered = sum(r[0] for r in results)
    rps = answered / seconds
    return {"concurrency": concurrency, "batch": batch, "rps": rps, "images_per_s": rps * batch,
            "errors": sum(len(r[1]) for r in results), "client_processes": processes,
            "error_kinds": sorted({e for r in results for e in r[1]})[:5],
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99) * 1e3) if len(latencies) else None}


def run(grpc_target: str, http_target: str, concurrency: list[int], seconds: float, batch: int = 1,
        rounds: int = 3, processes: int = 2, shared_connection: bool = False,
        unbatched_target: str | None = None) -> list[dict]:
    """Both contenders (and gRPC of ``unbatched_target``, if given) at each concurrency, in turns; the
    median round of each."""
    targets = {CONTENDERS[0]: ("grpc", grpc_target), CONTENDERS[1]: ("http", http_target)}
    if unbatched_target:
        targets[UNBATCHED] = ("grpc", unbatched_target)
    labels = list(targets)
    rows = []
    for c in concurrency:
        results: dict[str, list[dict]] = {label: [] for label in labels}
        for k in range(rounds):
            for label in labels[k % len(labels):] + labels[:k % len(labels)]:
                protocol, target = targets[label]
                results[label].append(measure(protocol, target, c, seconds, batch, processes,
                                              shared_connection=shared_connection))
        for label, measured in results.items():
            row = dict(sorted(measured, key=lambda r: r["rps"])[len(measured) // 2])
            row.update(scenario=label, rounds_rps=[round(r["rps"], 1) for r in measured],
                       errors=sum(r["errors"] for r in measured),
                       error_kinds=sorted({e for r in measured for e in r["error_kinds"]})[:5])
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    http = {r["concurrency"]: r["rps"] for r in rows if r["scenario"] == CONTENDERS[1]}
    lines = ["| scenario | batch | conc. | requests/s | images/s | p50 ms | p99 ms | errors | rounds | vs HTTP V2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['rps'] / http[r['concurrency']]:.2f}" if http.get(r["concurrency"]) else ""
        p50 = f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else ""
        p99 = f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else ""
        lines.append(f"| {r['scenario']} | {r['batch']} | {r['concurrency']} | {r['rps']:,.1f} | "
                     f"{r['images_per_s']:,.0f} | {p50} | {p99} | {r['errors']} | {r['rounds_rps']} | {ratio} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    return table(result["rows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per row and round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--shared-connection", action="store_true",
                        help="the gRPC clients of a client process share one connection (grpcio's default)")
    parser.add_argument("--compare-grpc-batching", action="store_true",
                        help=f"also a second server with GRPC_BATCHING=off, its gRPC a third contender ({UNBATCHED})")
    parser.add_argument("--out", type=Path, default=results.default_path("grpc_load"), help="the results file")
    args = parser.parse_args(argv)
    from tests.integration.conftest import LocalServer
    from tests.integration.test_grpc import wait_grpc

    started, info = time.monotonic(), machine()
    print(f"machine: {info}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        server = LocalServer(Path(tmp) / "on", LOG_LEVEL="warning").start()
        unbatched = LocalServer(Path(tmp) / "off", LOG_LEVEL="warning", GRPC_BATCHING="off").start() \
            if args.compare_grpc_batching else None
        try:
            wait_grpc(server.grpc_target)
            if unbatched:
                wait_grpc(unbatched.grpc_target)
            rows = run(server.grpc_target, server.url.removeprefix("http://"), args.concurrency, args.seconds,
                       args.batch, args.rounds, args.client_processes, args.shared_connection,
                       unbatched.grpc_target if unbatched else None)
        finally:
            server.stop()
            if unbatched:
                unbatched.stop()
    results.save(args.out, "bench.grpc_load", argv, args, {"rows": rows}, started, info)
    print(table(rows))
    for r in rows:
        if r["errors"]:
            print(f"{r['scenario']} c={r['concurrency']}: {r['errors']} errors, e.g. {r['error_kinds']}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
