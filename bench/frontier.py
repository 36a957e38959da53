"""The MNIST accuracy/latency frontier: trained versions side by side, as the README's table.

For each version directory given (``<repository>/mnist/<v>``, written by ``python -m training mnist``):
its parameters, validation and test accuracy and training seconds, with and without the per-epoch
validation passes (from its metadata, recorded when it was trained); the forward pass per sample at
batch 1 and 256 (in-process, one BLAS thread, median of ``--rounds``); and, with ``--serve``,
``/predict`` requests/s with one image at concurrency 16: the real server (gunicorn, the service's
settings, ``--workers``) serving only that version as ``mnist``, driven by wrk, as in
``bench/serve_load.py``.

    python -m bench.frontier model_repository/mnist/1 model_repository/mnist/2 --serve
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.serve_load import RESULTS, bodies, server, wrk
from bench.train_epoch import machine
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


def served_rps(version_dir: Path, body: Path, workers: int, seconds: float, tmp: Path) -> dict:
    """``/predict`` one image at concurrency 16, the server serving only this version as ``mnist``."""
    repo = tmp / f"repo-{version_dir.parent.parent.name}-{version_dir.name}"
    (repo / "mnist" / "1").mkdir(parents=True)
    shutil.copy(version_dir / WEIGHTS_FILE, repo / "mnist" / "1" / WEIGHTS_FILE)
    with server("service.wsgi:app", workers, tmp, MODEL_DIR=str(repo), MODEL_POLL_SECONDS="0") as srv:
        wrk(f"{srv.url}/predict", body, 16, 1)  # warm-up
        return wrk(f"{srv.url}/predict", body, 16, seconds)


def row(version_dir: Path, x: np.ndarray, args, tmp: Path, body: Path | None) -> dict:
    loaded = load_model(version_dir / WEIGHTS_FILE)
    meta, net = loaded.metadata, loaded.network
    sizes = [net.input_features] + [layer.out_features for layer in net.layers if hasattr(layer, "out_features")]
    out = {"path": str(version_dir), "network": "-".join(map(str, sizes)), "parameters": net.num_params,
           "epochs": meta.get("training", {}).get("epochs"),
           "teacher": (meta.get("teacher") or {}).get("parameters"),
           "validation_accuracy": meta["metrics"].get("validation_accuracy"),
           "test_accuracy": meta["metrics"].get("test_accuracy"), "train_seconds": meta.get("train_seconds"),
           "fit_seconds": meta.get("fit_seconds"),
           "forward_us_batch1": per_sample_seconds(net, x, 1, args.rounds) * 1e6,
           "forward_us_batch256": per_sample_seconds(net, x, 256, args.rounds) * 1e6}
    if body is not None:
        r = served_rps(version_dir, body, args.workers, args.seconds, tmp)
        out |= {"predict_rps_c16": r["rps"], "predict_p99_ms_c16": r["p99_us"] / 1e3, "errors": r["errors"]}
    return out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frontier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="+", type=Path, help="version directories holding model.npz")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--serve", action="store_true", help="also measure /predict under wrk (needs wrk)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=RESULTS / "frontier.json")
    args = parser.parse_args(argv)
    if args.serve and shutil.which("wrk") is None:
        parser.error("--serve needs wrk (apt install wrk)")
    missing = [str(v) for v in args.versions if not (v / WEIGHTS_FILE).is_file()]
    if missing:
        parser.error(f"no {WEIGHTS_FILE} in: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="frontier-") as name:
        tmp = Path(name)
        data = bodies(tmp, args.data_dir)
        x = np.frombuffer(data["v2bin256"][0].read_bytes()[data["v2bin256"][2]:], dtype="<f4").reshape(256, 784)
        body = data["mnist1"][0] if args.serve else None
        rows = [row(v, x, args, tmp, body) for v in args.versions]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    sys.stdout.write(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
