"""Shared fixtures: paths to the repository, the shipped model repository and the real MNIST files."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def pytest_report_header(config) -> list[str]:
    """Where the run happened, so a failure report says which CPU and BLAS kernel it came from."""
    import os
    import platform

    import numpy as np
    from threadpoolctl import threadpool_info

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor() or "unknown")
    np.ones(1) @ np.ones(1)  # loads the BLAS, so threadpoolctl sees it
    blas = [f"{p['internal_api']} {p.get('version')} {p.get('architecture')} kernels, {p['num_threads']} threads"
            for p in threadpool_info() if p.get("user_api") == "blas"]
    forced = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
    return [f"cpu: {cpu} ({os.cpu_count()} cores); numpy {np.__version__}; blas: {'; '.join(blas) or 'none found'}"
            + (f"; set: {forced}" if forced else "")]


# The files that take longest under CI's two processes (minutes each, from `--durations=0` runs), longest
# first after the container's (it builds the image, which other files' container tests then find built).
# pytest-xdist's `loadfile` hands files out in this order (the Makefile turns off its own reordering by
# test count), so the long files start early and the short ones fill the end of the phase: a long
# file handed out late can leave the other process idle while it finishes.
LONG_FILES = ("tests/container/test_container.py", "tests/test_bench.py", "tests/integration/test_fuzz.py",
              "tests/integration/test_browser.py", "tests/test_training.py", "tests/integration/test_readme.py",
              "tests/integration/test_supervisor.py", "tests/integration/test_grpc.py",
              "tests/integration/test_lifecycle.py", "tests/test_bench_batches.py",
              "tests/integration/test_walkthrough.py")


def pytest_collection_modifyitems(config, items) -> None:
    """The long files first (:data:`LONG_FILES`); every other file, and the tests within each, in their order."""
    missing = [path for path in LONG_FILES if not (ROOT / path).exists()]
    if missing:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py LONG_FILES names no such file: {missing}")
    rank = {path: i for i, path in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(LONG_FILES)))


def served_version(name: str) -> Path:
    """The shipped version directory of ``name`` that the default policy (``latest:1``) serves: the
    newest. (Older shipped versions stay on disk for a rollback, unserved.)"""
    from model.repository import newest_weights

    return newest_weights(ROOT / "model_repository", name).parent


def served_weights(name: str) -> Path:
    return served_version(name) / "model.npz"


MAX_SAMPLES = 5000  # GRADCHECK_MAX_SAMPLES for the long gradchecks below (the default, 100, is too few)


def long_gradcheck_samples(seconds_for_ten: float, target: float = 4.0) -> int:
    """Directions for a gradcheck of about ``target`` seconds, from one of 10 that took
    ``seconds_for_ten``: its time is about proportional to the directions (each reads all the weights)."""
    return int(min(MAX_SAMPLES, max(10, 10 * target / seconds_for_ten)))


def mnist_gradcheck(mnist_data, samples: int) -> dict:
    """A directional gradcheck of 8 MNIST test images checking ``samples`` directions."""
    x, y = mnist_data.eval_sets["test"]
    return {"model": "mnist", "inputs": x[:8].tolist(), "labels": [str(v) for v in y[:8]], "mode": "directional",
            "samples": samples}


def long_gradcheck(url: str, mnist_data, target: float = 4.0) -> tuple[dict, float]:
    """The body of a gradcheck that takes about ``target`` seconds on the server at ``url`` now (sized
    by a probe of 10 directions, since a shared machine's speed drifts), and the probe's seconds.
    The server needs GRADCHECK_MAX_COST=1e13 and GRADCHECK_MAX_SAMPLES=MAX_SAMPLES."""
    import requests

    probe = requests.post(f"{url}/gradcheck", json=mnist_gradcheck(mnist_data, 10), timeout=120)
    assert probe.status_code == 200, probe.text
    seconds = probe.json()["seconds"]
    return mnist_gradcheck(mnist_data, long_gradcheck_samples(seconds, target)), seconds


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def model_repository() -> Path:
    return ROOT / "model_repository"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files (../shared/data/mnist, or $MNIST_DIR). Tests need them: no fake data."""
    import os

    path = Path(os.environ.get("MNIST_DIR", SHARED_MNIST))
    if not (path / "t10k-images-idx3-ubyte.gz").exists() and not (path / "t10k-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST files not found in {path}; set MNIST_DIR")
    return path


@pytest.fixture(scope="session")
def mnist_data(mnist_dir):
    from training.datasets import mnist

    return mnist(mnist_dir, download=False)


@pytest.fixture(scope="session")
def container(request):
    """The running container (tests/container/engine.py); skipped when no engine is available."""
    from tests.container.engine import running_container

    yield from running_container(request)


def require_torch():
    """PyTorch, the independent oracle for forward and backward passes. Missing, its tests skip,
    unless ``REQUIRE_TORCH=1`` (CI sets it where the CPU wheel lies on disk): then they fail."""
    import os

    try:
        import torch
    except ImportError as exc:
        if os.environ.get("REQUIRE_TORCH") == "1":
            pytest.fail(f"PyTorch was required (REQUIRE_TORCH=1) but cannot be imported: {exc}")
        pytest.skip("PyTorch is not installed (pip install torch==2.13.0, the CPU build)")
    return torch
