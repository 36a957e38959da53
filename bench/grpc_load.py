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
    python -m bench.grpc_load --batch 256 --tree /tmp/before --tree .   # two source trees, in the same turns

With ``--tree`` (repeatable) each tree's ``python -m service`` is up at once and both contenders of every
tree run in the same turns; each later tree's rounds are compared with the first's (the median of the
rounds' ratios), so a change is judged against its parent on the same minutes of the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import results
from bench.harness import full_service
from bench.machine import machine
from bench.medians import median_interval
from bench.procfs import children, cpu_seconds

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
            processes: int = 2, warm: float = 1.0, shared_connection: bool = False,
            cpu: Callable[[], float] | None = None) -> dict:
    """One row: ``concurrency`` calls in flight from ``min(processes, concurrency)`` client processes;
    with ``cpu`` (the server's CPU seconds), its CPU per call over the row's window (``cpu_ms``)."""
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
    cpu_used = None
    if cpu is not None:  # read at the window's ends: the clients call from their start, warming up, till end_at
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before = cpu()
        time.sleep(max(0.0, end_at - time.monotonic()))
        cpu_used = cpu() - cpu_before
    results = [out.get(timeout=seconds + warm + 120) for _ in procs]
    for p in procs:
        p.join(30)
    latencies = np.sort(np.concatenate([np.asarray(r[2], float) for r in results])) if results else np.array([])
    answered = sum(r[0] for r in results)
    rps = answered / seconds
    return {"concurrency": concurrency, "batch": batch, "rps": rps, "images_per_s": rps * batch,
            **({"cpu_ms": cpu_used * 1e3 / answered if answered else None} if cpu_used is not None else {}),
            "errors": sum(len(r[1]) for r in results), "client_processes": processes,
            "error_kinds": sorted({e for r in results for e in r[1]})[:5],
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99) * 1e3) if len(latencies) else None}


def run(grpc_target: str | list[str], http_target: str | list[str], concurrency: list[int], seconds: float,
        batch: int = 1, rounds: int = 3, processes: int = 2, shared_connection: bool = False,
        unbatched_target: str | None = None, grpc_cpu: list[Callable[[], float]] | None = None) -> list[dict]:
    """Both contenders (and gRPC of ``unbatched_target``, if given) at each concurrency, in turns; the
    median round of each. With lists of targets (one per source tree), each tree's contenders, labelled
    ``..., tree N``, every round's figures kept (``rounds_rps``) for the trees' ratios; ``grpc_cpu``, per
    tree, reads its gRPC processes' CPU seconds, for each gRPC round's CPU per call (``rounds_cpu_ms``)."""
    grpcs = [grpc_target] if isinstance(grpc_target, str) else grpc_target
    https = [http_target] if isinstance(http_target, str) else http_target
    targets, cpu_of = {}, {}
    for i, (g, h) in enumerate(zip(grpcs, https, strict=True)):
        suffix = f", tree {i}" if len(grpcs) > 1 else ""
        targets[CONTENDERS[0] + suffix] = ("grpc", g)
        targets[CONTENDERS[1] + suffix] = ("http", h)
        if grpc_cpu:
            cpu_of[CONTENDERS[0] + suffix] = grpc_cpu[i]
    if unbatched_target:
        targets[UNBATCHED] = ("grpc", unbatched_target)
    labels = list(targets)
    rows = []
    for c in concurrency:
        results: dict[str, list[dict]] = {label: [] for label in labels}
        for k in range(rounds):
            for label in labels[k % len(labels):] + labels[:k % len(labels)]:
                protocol, target = targets[label]
                r = measure(protocol, target, c, seconds, batch, processes, shared_connection=shared_connection,
                            cpu=cpu_of.get(label))
                results[label].append(r)
        for label, measured in results.items():
            row = dict(sorted(measured, key=lambda r: r["rps"])[len(measured) // 2])
            if label in cpu_of:
                row["rounds_cpu_ms"] = [r.get("cpu_ms") for r in measured]
            row.update(scenario=label, rounds_rps=[round(r["rps"], 1) for r in measured],
                       errors=sum(r["errors"] for r in measured),
                       error_kinds=sorted({e for r in measured for e in r["error_kinds"]})[:5])
            rows.append(row)
    return rows


def tree_of(scenario: str) -> str:
    """The ``, tree N`` a label ends with (with ``--tree``), or ``""``."""
    return scenario[scenario.rfind(", tree "):] if ", tree " in scenario else ""


def table(rows: list[dict]) -> str:
    http = {(r["concurrency"], tree_of(r["scenario"])): r["rps"] for r in rows
            if r["scenario"].startswith(CONTENDERS[1])}
    lines = ["| scenario | batch | conc. | requests/s | images/s | p50 ms | p99 ms | errors | rounds | vs HTTP V2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        base = http.get((r["concurrency"], tree_of(r["scenario"])))
        ratio = f"{r['rps'] / base:.2f}" if base else ""
        p50 = f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else ""
        p99 = f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else ""
        lines.append(f"| {r['scenario']} | {r['batch']} | {r['concurrency']} | {r['rps']:,.1f} | "
                     f"{r['images_per_s']:,.0f} | {p50} | {p99} | {r['errors']} | {r['rounds_rps']} | {ratio} |")
    return "\n".join(lines)


def trees_lines(result: dict) -> str:
    """With several trees: each contender's rounds in a later tree over the first tree's, round by round."""
    by = {(r["scenario"], r["concurrency"]): r for r in result["rows"]}
    lines = []
    for i, tree in enumerate(result.get("trees", [])[1:], start=1):
        for (scenario, c), row in by.items():
            if not scenario.endswith(f", tree {i}"):
                continue
            first = by[scenario.removesuffix(f", tree {i}") + ", tree 0", c]
            median, low, high = median_interval([b / a for a, b in zip(first["rounds_rps"], row["rounds_rps"],
                                                                        strict=True) if a])
            line = (f"- {scenario.removesuffix(f', tree {i}')}, c={c}: tree {i} ({tree['commit'] or tree['path']})"
                    f" / tree 0 = **{median:.2f}** (rounds' ratios {low:.2f}-{high:.2f})")
            if row.get("rounds_cpu_ms") and first.get("rounds_cpu_ms"):
                cpu = [b / a for a, b in zip(first["rounds_cpu_ms"], row["rounds_cpu_ms"], strict=True) if a and b]
                median, low, high = median_interval(cpu)
                mine, theirs = (statistics.median(x for x in r["rounds_cpu_ms"] if x) for r in (row, first))
                line += (f"; the gRPC processes' CPU per call {theirs:.2f} and {mine:.2f} ms, tree {i} / tree 0 = "
                         f"**{median:.2f}** ({low:.2f}-{high:.2f})")
            lines.append(line)
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    text = table(result["rows"])
    trees = trees_lines(result)
    if result.get("trees"):
        names = "; ".join(f"tree {i}: {t['path']} ({t['commit']})" for i, t in enumerate(result["trees"]))
        text = f"({names}.)\n\n{text}"
    return text + ("\n\n" + trees if trees else "")


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
    parser.add_argument("--tree", type=Path, action="append",
                        help="serve from this source tree (repeatable: every tree in the same turns)")
    parser.add_argument("--out", type=Path, help="the results file (default: bench/results/grpc_load.json, "
                        "grpc_trees.json with --tree)")
    args = parser.parse_args(argv)
    out = args.out or results.default_path("grpc_trees" if args.tree else "grpc_load")
    from tests.integration.conftest import LocalServer
    from tests.integration.test_grpc import wait_grpc

    started, info = time.monotonic(), machine()
    print(f"machine: {info}", flush=True)
    body: dict = {}
    if args.tree:
        trees = [t.resolve() for t in args.tree]
        body["trees"] = [{"path": results.portable(t), "commit": results.tree_commit(t)} for t in trees]
        with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp, contextlib.ExitStack() as stack:
            servers = [stack.enter_context(full_service(tree, Path(tmp), LOG_LEVEL="warning")) for tree in trees]
            for srv in servers:
                wait_grpc(srv.grpc_target)
            rows = run([s.grpc_target for s in servers], [s.url.removeprefix("http://") for s in servers],
                       args.concurrency, args.seconds, args.batch, args.rounds, args.client_processes,
                       args.shared_connection, grpc_cpu=[grpc_cpu_reader(s.proc.pid) for s in servers])
        return finish(args, argv, out, {**body, "rows": rows}, started, info)
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
    return finish(args, argv, out, {"rows": rows}, started, info)


def grpc_cpu_reader(supervisor: int) -> Callable[[], float]:
    """A reader of the CPU seconds used so far by the gRPC processes ``python -m service`` (``supervisor``)
    started: its children running ``service.grpc.server``."""
    pids = [pid for pid in children(supervisor)
            if b"service.grpc.server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return lambda: sum(cpu_seconds(pid) for pid in pids)


def finish(args, argv: list[str] | None, out: Path, body: dict, started: float, info: dict) -> int:
    """Write the results file, print the table and the errors; 1 if any call failed."""
    result = results.save(out, "bench.grpc_load", argv, args, body, started, info)
    print(report(result))
    rows = body["rows"]
    for r in rows:
        if r["errors"]:
            print(f"{r['scenario']} c={r['concurrency']}: {r['errors']} errors, e.g. {r['error_kinds']}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
