"""One MNIST training epoch in this library against PyTorch on the CPU, side by side in one run.

The network is the issue's reference: 784-256-256-10 ReLU, softmax cross-entropy, batch 100,
Adam 1e-3, float32, the 60,000 real training images. Each framework runs ``--rounds`` epochs,
alternating (numpy, torch, numpy, torch, ...) so both see the same machine state; the ratio
of the medians is reported (below 1.0 means NumPy is faster).

    python -m bench.train_epoch [--data-dir DIR] [--rounds 3] [--json bench/results/train_epoch.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from model.losses import SoftmaxCrossEntropy
from model.network import mlp
from model.optimizers import Adam
from training.datasets import mnist
from training.trainer import accuracy, fit

log = logging.getLogger("bench")
SIZES = [784, 256, 256, 10]


def numpy_epoch(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, object]:
    rng = np.random.default_rng(seed)
    net = mlp(SIZES, activation="relu", init="he", rng=rng)
    fit(net, SoftmaxCrossEntropy(), Adam(1e-3), x[:1000], y[:1000], epochs=1, batch_size=100, rng=rng)  # warm-up
    start = time.perf_counter()
    fit(net, SoftmaxCrossEntropy(), Adam(1e-3), x, y, epochs=1, batch_size=100, rng=rng)
    return time.perf_counter() - start, net


def torch_epoch(torch, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, object]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)

    def epoch(n: int) -> None:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, 100):
            idx = order[i:i + 100]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(tx[idx]), ty[idx])
            loss.backward()
            opt.step()

    epoch(1000)  # warm-up
    start = time.perf_counter()
    epoch(len(x))
    return time.perf_counter() - start, net


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(), "numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = ", ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']}"
                                 for i in threadpool_info())
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX files (default: $MNIST_DIR or the cache)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench/results/train_epoch.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = mnist(args.data_dir, download=True)
    x, y = ds.x, ds.y
    xte, yte = ds.eval_sets["test"]
    try:
        import torch
    except ImportError:
        torch = None
        log.warning("PyTorch is not installed (pip install torch): timing NumPy only")
    info = machine()
    if torch is not None:
        info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    times: dict[str, list[float]] = {"numpy": [], "torch": []}
    accs: dict[str, float] = {}
    for r in range(args.rounds):
        seconds, net = numpy_epoch(x, y, seed=r)
        times["numpy"].append(seconds)
        accs["numpy"] = accuracy(net, xte, yte)
        log.info("round %d numpy: %.3f s", r + 1, seconds)
        if torch is not None:
            seconds, tnet = torch_epoch(torch, x, y.astype(np.int64), seed=r)
            times["torch"].append(seconds)
            with torch.no_grad():
                accs["torch"] = float((tnet(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
            log.info("round %d torch: %.3f s", r + 1, seconds)
    result = {"machine": info, "network": "784-256-256-10 ReLU, Adam 1e-3, batch 100, 60k images, float32",
              "seconds": times, "test_accuracy_after_one_epoch": accs,
              "median": {k: statistics.median(v) for k, v in times.items() if v}}
    if times["torch"]:
        result["ratio_numpy_over_torch"] = result["median"]["numpy"] / result["median"]["torch"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print("| machine | " + "; ".join(f"{k} {v}" for k, v in info.items()) + " |")
    print(f"| framework | epoch seconds (median of {args.rounds}) | test accuracy after 1 epoch |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        if values:
            print(f"| {name} | {statistics.median(values):.2f} | {accs[name]:.4f} |")
    if "ratio_numpy_over_torch" in result:
        print(f"| ratio numpy / torch | {result['ratio_numpy_over_torch']:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
