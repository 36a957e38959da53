"""CPU time per request of one gunicorn worker, for comparing code on a machine shared with other work.

On a shared, noisy machine throughput measures how much CPU the other work left us as much as the
code. A worker's own CPU time (user + system, from ``/proc``) per request served does not depend on
that, so two versions of the server can be compared in one session: each contender is one worker
(``WORKERS=1``) with the service's gunicorn configuration, all are up at once and driven in turns by
wrk (the same body, ``--connections``), rounds rotated, and each gives its CPU µs per request.

Contenders: the bare-Flask ceiling, ``/predict`` MNIST one sample and ``/predict`` XOR (the
service's per-request cost with a negligible model), with ``--protocols`` V1 and V2 JSON MNIST one
sample too, with ``--batching-off`` ``/predict`` MNIST from a server with ``BATCHING=off``, for each
source tree given (``--tree``, e.g. a ``git worktree`` of the code before a change, and this
checkout). ``--profile DIR`` also records every round of the MNIST and ceiling contenders with
``py-spy record --format raw`` (``pip install py-spy``; a tool, not a dependency), for a breakdown
of where the time goes. The medians go to ``bench/results/cpu_per_request.json``.

    python -m bench.cpu_per_request --tree /tmp/before --tree . --rounds 6 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import results
from bench.bodies import bodies
from bench.harness import CEILING_APP, ROOT, SERVICE_APP, Server, have_wrk, server, warm, wrk
from bench.procfs import children, cpu_seconds


def worker_pid(srv: Server) -> int:
    """The one worker of a ``WORKERS=1`` gunicorn."""
    return children(srv.proc.pid)[0]


def contenders(stack: contextlib.ExitStack, trees: list[Path], tmp: Path, args) -> list[tuple]:
    """(label, server, path, body name) of every contender, its servers started on ``stack``."""
    out = []
    for i, tree in enumerate(trees):
        tag = f"tree {i} " if len(trees) > 1 else ""
        ceiling = stack.enter_context(server(CEILING_APP, 1, tmp, root=tree))
        ours = stack.enter_context(server(SERVICE_APP, 1, tmp, root=tree, LOG_LEVEL="info"))
        out += [(f"{tag}ceiling", ceiling, "/predict", "mnist1"), (f"{tag}/predict mnist", ours, "/predict", "mnist1"),
                (f"{tag}/predict xor", ours, "/predict", "xor1")]
        if args.batching_off:
            unbatched = stack.enter_context(server(SERVICE_APP, 1, tmp, root=tree, LOG_LEVEL="info", BATCHING="off"))
            out.append((f"{tag}/predict mnist, batching off", unbatched, "/predict", "mnist1"))
        if args.protocols:
            out += [(f"{tag}V1 mnist", ours, "/v1/models/mnist:predict", "v1mnist1"),
                    (f"{tag}V2 JSON mnist", ours, "/v2/models/mnist/infer", "v2jsonmnist1")]
    return out


def tree_and_kind(label: str) -> tuple[int, str]:
    """``tree 1 /predict mnist`` -> (1, ``/predict mnist``); a label without a tree is tree 0's."""
    m = re.fullmatch(r"tree (\d+) (.*)", label)
    return (int(m[1]), m[2]) if m else (0, label)


def table(rows: list[dict]) -> str:
    """One line per contender: median req/s and CPU µs per request, every round's CPU, and with several
    trees the ratio of its median CPU to the first tree's same contender's."""
    first = {kind: r["cpu_us"] for r in rows for tree, kind in [tree_and_kind(r["contender"])] if tree == 0}
    lines = ["| contender | req/s (median) | CPU µs/request (median) | rounds' CPU µs | CPU vs tree 0 |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        tree, kind = tree_and_kind(r["contender"])
        ratio = f"{r['cpu_us'] / first[kind]:.2f}" if tree and kind in first else ""
        lines.append(f"| {r['contender']} | {r['rps']:,.0f} | {r['cpu_us']:,.0f} | "
                     f"{', '.join(f'{c:.0f}' for c in r['rounds_cpu_us'])} | {ratio} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file: the trees, then the table."""
    trees = "; ".join(f"tree {i}: {t['path']} ({t['commit'] or 'not a git tree'})"
                      for i, t in enumerate(result["trees"]))
    return f"{table(result['rows'])}\n\n({trees}; {result['settings']['connections']} connections.)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_request", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--out", type=Path, default=results.default_path("cpu_per_request"), help="the results file")
    args = parser.parse_args(argv)
    if not have_wrk():
        return 2
    started = time.monotonic()
    trees = [t.resolve() for t in args.tree or [ROOT]]
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        data = bodies(Path(tmp), args.data_dir)
        runs = contenders(stack, trees, Path(tmp), args)
        for _, srv, path, body in runs:
            warm(f"{srv.url}{path}", data[body][0], 4)
        measured: dict[str, list[tuple[float, float, int]]] = {label: [] for label, *_ in runs}
        for k in range(args.rounds):
            for label, srv, path, body in runs[k % len(runs):] + runs[:k % len(runs)]:
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
                measured[label].append((r["rps"], used * 1e6 / max(r["requests"] - r["non_2xx"], 1), r["errors"]))
                print(f"  round {k} {label:28s} {r['rps']:8.0f} req/s  {measured[label][-1][1]:6.0f} µs CPU/request "
                      f"errors {r['errors']}  load {os.getloadavg()[0]:.1f}", flush=True)
    rows = [{"contender": label, "rps": statistics.median(r for r, _, _ in m),
             "cpu_us": statistics.median(c for _, c, _ in m), "rounds_cpu_us": [c for _, c, _ in m],
             "rounds_rps": [r for r, _, _ in m], "errors": sum(e for _, _, e in m)} for label, m in measured.items()]
    result = results.save(args.out, "bench.cpu_per_request", argv, args,
                          {"trees": [{"path": results.portable(t), "commit": results.tree_commit(t)} for t in trees],
                           "rows": rows}, started)
    print(f"\n{report(result)}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
