"""The MNIST accuracy/latency frontier: trained versions side by side, in one table.

For each version directory given (``<repository>/mnist/<v>``, written by ``python -m training mnist``):
its parameters, validation and test accuracy and training seconds, with and without the per-epoch
validation passes (from its metadata, recorded when it was trained); the forward pass per sample at
batch 1 and 256 (in-process, one BLAS thread, median of ``--rounds``); and, with ``--serve``,
``/predict`` requests/s with one image at concurrency 16: the real server (gunicorn, the service's
settings, ``--workers``) serving only that version as ``mnist``, driven by wrk, as in
``bench/serve_load.py``, every row's server up at once and measured in turns (the median of
``--serve-rounds``). The rows go to ``bench/results/frontier.json``.

    python -m bench.frontier model_repository/mnist/1 model_repository/mnist/2 --serve
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import results
from bench.bodies import bodies, images
from bench.harness import SERVICE_APP, server, warm, wrk
from bench.medians import median_round
from model.io import load_model
from model.repository import WEIGHTS_FILE


def per_sample_seconds(net, x: np.ndarray, batch: int, rounds: int) -> float:
    """Median seconds per sample of ``net.infer`` on ``batch`` rows (one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    rows = np.ascontiguousarray(np.resize(x, (batch, x.shape[1])), dtype=np.float32)
    repeats = max(1, 256 // batch)  # a batch-1 call is too short to time alone
    times = []
    with threadpool_limits(1, user_api="blas"):
        net.infer(rows)
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                net.infer(rows)
            times.append((time.perf_counter() - start) / (repeats * batch))
    return float(np.median(times))


def serve_rows(rows: list[dict], body: Path, args, tmp: Path) -> None:
    """``/predict`` one image at concurrency 16, each version served alone as ``mnist`` by a server of its
    own; all servers up at once, ``--serve-rounds`` rounds in turns, each row the median round (a
    neighbour's burst then lands in one round of each, not in one row)."""
    with contextlib.ExitStack() as stack:
        servers = []
        for i, r in enumerate(rows):
            repo = tmp / f"repo-{i}"
            (repo / "mnist" / "1").mkdir(parents=True)
            shutil.copy(Path(r["path"]) / WEIGHTS_FILE, repo / "mnist" / "1" / WEIGHTS_FILE)
            srv = stack.enter_context(server(SERVICE_APP, args.workers, tmp, MODEL_DIR=str(repo),
                                             MODEL_POLL_SECONDS="0"))
            warm(f"{srv.url}/predict", body, 16)
            servers.append(srv)
        measured: list[list[dict]] = [[] for _ in rows]
        for round_ in range(args.serve_rounds):
            order = list(range(len(rows)))
            order = order[round_ % len(order):] + order[:round_ % len(order)]  # rotated each round
            for i in order:
                measured[i].append(wrk(f"{servers[i].url}/predict", body, 16, args.seconds))
    for r, rounds in zip(rows, measured, strict=True):
        median = median_round(rounds)
        r |= {"predict_rps_c16": median["rps"], "predict_p99_ms_c16": median["p99_us"] / 1e3,
              "predict_rps_rounds": [x["rps"] for x in rounds], "errors": sum(x["errors"] for x in rounds)}


def row(version_dir: Path, x: np.ndarray, args) -> dict:
    loaded = load_model(version_dir / WEIGHTS_FILE)
    meta, net = loaded.metadata, loaded.network
    sizes = [net.input_features] + [layer.out_features for layer in net.layers if hasattr(layer, "out_features")]
    return {"path": str(version_dir), "network": "-".join(map(str, sizes)), "parameters": net.num_params,
            "epochs": meta.get("training", {}).get("epochs"),
            "teacher": (meta.get("teacher") or {}).get("parameters"),
            "validation_accuracy": meta["metrics"].get("validation_accuracy"),
            "test_accuracy": meta["metrics"].get("test_accuracy"), "train_seconds": meta.get("train_seconds"),
            "fit_seconds": meta.get("fit_seconds"),
            "forward_us_batch1": per_sample_seconds(net, x, 1, args.rounds) * 1e6,
            "forward_us_batch256": per_sample_seconds(net, x, 256, args.rounds) * 1e6}


def pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f} %"


def table(rows: list[dict]) -> str:
    lines = ["| network | parameters | epochs | teacher | validation | test | training s (with validation) "
             "| forward µs/sample, batch 1 | batch 256 | `/predict` req/s, c=16 |", "|" + "---|" * 10]
    for r in rows:
        teacher = f"{r['teacher']:,}" if r["teacher"] else "none"
        rps = f"{r['predict_rps_c16']:.0f}" if "predict_rps_c16" in r else ""
        fit = f" ({r['fit_seconds']:.0f})" if r.get("fit_seconds") else ""
        lines.append(f"| {r['network']} | {r['parameters']:,} | {r['epochs']} | {teacher} "
                     f"| {pct(r['validation_accuracy'])} | {pct(r['test_accuracy'])} | {r['train_seconds']:.0f}{fit} "
                     f"| {r['forward_us_batch1']:.0f} "
                     f"| {r['forward_us_batch256']:.1f} | {rps} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    return table(result["rows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frontier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="+", type=Path, help="version directories holding model.npz")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--serve", action="store_true", help="also measure /predict under wrk (needs wrk)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seconds", type=float, default=5.0, help="per round of a served row")
    parser.add_argument("--serve-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=results.default_path("frontier"), help="the results file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.serve and shutil.which("wrk") is None:
        parser.error("--serve needs wrk (apt install wrk)")
    missing = [str(v) for v in args.versions if not (v / WEIGHTS_FILE).is_file()]
    if missing:
        parser.error(f"no {WEIGHTS_FILE} in: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="frontier-") as name:
        tmp = Path(name)
        data = bodies(tmp, args.data_dir)
        x = images(data)
        rows = [row(v, x, args) for v in args.versions]
        if args.serve:
            serve_rows(rows, data["mnist1"][0], args, tmp)
    for r in rows:
        r["path"] = results.portable(r["path"])
    results.save(args.out, "bench.frontier", argv, args, {"rows": rows}, started)
    sys.stdout.write(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
