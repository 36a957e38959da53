"""One MNIST training epoch in this library against PyTorch at its fastest on the CPU, in one run.

The network: 784-256-256-10 ReLU, softmax cross-entropy, batch 100, Adam 1e-3, float32, the
60,000 real training images. The contestants:

* ``numpy``: this library (``model/``, ``training/trainer.py``);
* ``torch-adam``: PyTorch's Adam with its defaults (the ``foreach`` implementation);
* ``torch-fused``: PyTorch's ``fused=True`` Adam, the setting a speed-minded PyTorch user picks;
* ``torch-compiled``: fused Adam and the network through ``torch.compile`` (inductor, which
  compiles C++ with the machine's compiler; its compile time is reported, not counted).

Every contestant uses the same number of threads (``--threads``, default: every core), set for
NumPy's BLAS with threadpoolctl and for PyTorch with ``torch.set_num_threads``; the counts actually
in force are recorded. Each round runs every contestant once, in an order rotated every round, so
none always runs first. The goal: NumPy's median at most 1.0x the fastest PyTorch median. A
breakdown of one NumPy epoch (forward, loss, backward, optimizer) says where its time goes.

The medians, every round and the breakdown go to ``bench/results/train_epoch.json``.

    python -m bench.train_epoch [--data-dir DIR] [--rounds 5] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from bench import results
from bench.machine import machine
from model.losses import SoftmaxCrossEntropy
from model.network import mlp
from model.optimizers import Adam
from training.datasets import mnist
from training.trainer import fit

log = logging.getLogger("bench")
SIZES = [784, 256, 256, 10]
BATCH = 100
NETWORK = "784-256-256-10 ReLU, Adam 1e-3, batch 100, 60k images, float32"

Epoch = Callable[[np.ndarray, np.ndarray], None]  # one pass over (x, y) in batches
Predict = Callable[[np.ndarray], np.ndarray]  # class indices


def numpy_contestant(seed: int) -> tuple[Epoch, Predict]:
    rng = np.random.default_rng(seed)
    net = mlp(SIZES, activation="relu", init="he", rng=rng)
    loss, opt = SoftmaxCrossEntropy(), Adam(1e-3)

    def epoch(x: np.ndarray, y: np.ndarray) -> None:
        fit(net, loss, opt, x, y, epochs=1, batch_size=BATCH, rng=rng)

    return epoch, lambda x: np.asarray(net.predict_proba(x)).argmax(1)


def torch_contestant(torch, seed: int, *, fused: bool, compiled: bool) -> tuple[Epoch, Predict]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    model = torch.compile(net) if compiled else net
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)

    def epoch(x: np.ndarray, y: np.ndarray) -> None:
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(tx[idx]), ty[idx]).backward()
            opt.step()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x)).argmax(1).numpy()

    return epoch, predict


def numpy_breakdown(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Seconds spent in each pass over one NumPy epoch (the trainer's loop, timed piece by piece)."""
    rng = np.random.default_rng(0)
    net = mlp(SIZES, activation="relu", init="he", rng=rng)
    loss, opt = SoftmaxCrossEntropy(), Adam(1e-3)
    params, grads = net.named_params(), net.named_grads()
    parts = dict.fromkeys(("batch gather", "forward", "loss", "backward", "optimizer"), 0.0)
    net.train()
    order = rng.permutation(len(x))
    for i in range(0, len(x), BATCH):
        t0 = time.perf_counter()
        idx = order[i:i + BATCH]
        xb, yb = x[idx], y[idx]
        t1 = time.perf_counter()
        logits = net.forward(xb)
        t2 = time.perf_counter()
        loss.forward(logits, yb)
        grad = loss.backward()
        t3 = time.perf_counter()
        net.backward(grad, input_grad=False)
        t4 = time.perf_counter()
        opt.step(params, grads)
        t5 = time.perf_counter()
        for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[key] += seconds
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_epoch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX files (default: $MNIST_DIR or the cache)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (e.g. without a C++ compiler)")
    parser.add_argument("--no-torch", action="store_true", help="time NumPy only, even where PyTorch is installed")
    parser.add_argument("--out", type=Path, default=results.default_path("train_epoch"), help="the results file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = mnist(args.data_dir, download=True)
    x, y = ds.x, ds.y.astype(np.int64)
    xte, yte = ds.eval_sets["test"]
    try:
        if args.no_torch:
            raise ImportError("--no-torch")
        import torch
    except ImportError:
        torch = None
        log.warning("PyTorch is not installed (pip install torch==2.13.0, the CPU build): timing NumPy only")

    torch_threads = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=args.threads), contextlib.ExitStack() as restore:
        makers: dict[str, Callable[[int], tuple[Epoch, Predict]]] = {"numpy": numpy_contestant}
        if torch is not None:
            torch.set_num_threads(args.threads)  # and back after, as threadpool_limits does for BLAS
            restore.callback(torch.set_num_threads, torch_threads)
            makers["torch-adam"] = lambda s: torch_contestant(torch, s, fused=False, compiled=False)
            makers["torch-fused"] = lambda s: torch_contestant(torch, s, fused=True, compiled=False)
            if not args.no_compile:
                makers["torch-compiled"] = lambda s: torch_contestant(torch, s, fused=True, compiled=True)
        info = machine(torch, args.threads)
        times: dict[str, list[float]] = {name: [] for name in makers}
        setup: dict[str, list[float]] = {name: [] for name in makers}
        accs: dict[str, float] = {}
        names = list(makers)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                epoch, predict = makers[name](r)
                epoch(x[:2 * BATCH * 5], y[:2 * BATCH * 5])  # warm-up (and torch.compile's compilation)
                setup[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                epoch(x, y)
                times[name].append(time.perf_counter() - start)
                accs[name] = float(np.mean(predict(xte) == yte))
                log.info("round %d %s: %.3f s", r + 1, name, times[name][-1])
        breakdown = numpy_breakdown(x, y)

    medians = {k: statistics.median(v) for k, v in times.items()}
    fastest_torch = min((k for k in medians if k != "numpy"), key=medians.get, default=None)
    body = {"network": NETWORK, "rounds": args.rounds, "seconds": times, "median": medians,
            "setup_seconds_median": {k: statistics.median(v) for k, v in setup.items()},
            "test_accuracy_after_one_epoch": accs, "numpy_epoch_breakdown_seconds": breakdown}
    if fastest_torch:
        body["fastest_torch"] = fastest_torch
        body["ratio_numpy_over_fastest_torch"] = medians["numpy"] / medians[fastest_torch]
    result = results.save(args.out, "bench.train_epoch", argv, args, body, started, info)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print(f"\n{report(result)}")
    return 0


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file: the contestants' medians, the goal, the breakdown."""
    times, medians, accs = result["seconds"], result["median"], result["test_accuracy_after_one_epoch"]
    lines = [f"| contestant | epoch seconds (median of {result['rounds']}) | range | ratio NumPy / it | "
             "test accuracy after 1 epoch |", "| --- | --- | --- | --- | --- |"]
    for name, values in times.items():
        lines.append(f"| {name} | {medians[name]:.2f} | {min(values):.2f}-{max(values):.2f} | "
                     f"{medians['numpy'] / medians[name]:.2f} | {accs[name]:.4f} |")
    if result.get("fastest_torch"):
        ratio = result["ratio_numpy_over_fastest_torch"]
        lines.append(f"\nNumPy / fastest PyTorch ({result['fastest_torch']}): {ratio:.2f} "
                     f"(goal <= 1.00: {'met' if ratio <= 1.0 else 'missed'}).")
    breakdown = result["numpy_epoch_breakdown_seconds"]
    total = sum(breakdown.values())
    lines.append("\nOne NumPy epoch, by pass: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f} %)"
                                                           for k, v in breakdown.items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
