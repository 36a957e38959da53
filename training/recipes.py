"""The recipes that produce the shipped models, and writing a trained model into a model repository
(its layout: ``model/repository.py``)."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.heads import loss_for_head
from model.io import LoadedModel, WeightsFileError, atomic_writer, load_model, save_model
from model.losses import Distillation
from model.network import Sequential, mlp
from model.optimizers import OPTIMIZERS, Optimizer
from model.repository import CURVES_FILE, METRICS_FILE, WEIGHTS_FILE, next_version, version_dir
from training import datasets
from training.augment import Distortion
from training.batches import Augment
from training.trainer import History, accuracy, cosine_schedule, fit

log = logging.getLogger(__name__)


Loader = Callable[[str | Path | None, bool, bool], datasets.Dataset]  # (data_dir, download, progress)
BEHAVIOUR = {"config": False}  # a field that says how to train, not a setting stored with the weights
# MNIST: the last 10,000 training images watch each epoch and chose every setting below; the test
# set is evaluated once, on the finished model. Distortions as in Simard et al. (2003), milder.
MNIST_VALIDATION = 10_000
MNIST_DISTORTION = Distortion(rotate=8.0, scale=0.08, shift=1.5, alpha=16.0, sigma=4.0)


def no_extra_metrics(net: Sequential, dataset: datasets.Dataset) -> dict[str, float]:
    return {}


def xor_margin(net: Sequential, dataset: datasets.Dataset) -> dict[str, float]:
    """How far every output is on the right side of 0.5 (the XOR target asks for 0.4)."""
    probs = net.predict_proba(dataset.x)[np.arange(len(dataset.y)), dataset.y]
    return {"min_margin": float(np.min(probs - 0.5))}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a training run: its settings (stored in the weights' metadata,
    :meth:`config`) and its behaviour (where its data comes from, how batches are augmented, what
    the inputs mean, which extra metrics it reports)."""

    name: str
    hidden: list[int]
    activation: str = "relu"
    init: str = "he"
    dropout: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    epochs: int = 10
    batch_size: int = 100
    seed: int = 0
    augment: str = "none"  # a description of the augmentation, for the metadata
    teacher: str | None = None  # distil from this model (a version directory or its model.npz)
    temperature: float = 4.0  # distillation's softening of both networks' logits
    distill_weight: float = 0.5  # the soft (teacher) term's share of the loss
    targets: dict[str, float] = field(default_factory=dict)
    dataset: Loader = field(default=lambda data_dir, download, progress: datasets.xor(), metadata=BEHAVIOUR)
    augmenter: Augment | None = field(default=None, metadata=BEHAVIOUR)
    preprocessing: dict[str, Any] = field(default_factory=dict, metadata=BEHAVIOUR)
    extra_metrics: Callable[[Sequential, datasets.Dataset], dict[str, float]] = field(
        default=no_extra_metrics, metadata=BEHAVIOUR)

    def config(self) -> dict[str, Any]:
        """The settings, as stored in the weights' metadata under ``training``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("config", True)}

    def load_data(self, data_dir: str | Path | None = None, *, download: bool = True,
                  progress: bool = False) -> datasets.Dataset:
        return self.dataset(data_dir, download, progress)


RECIPES: dict[str, Recipe] = {
    "xor": Recipe("xor", hidden=[8], activation="tanh", init="xavier", optimizer="adam", lr=0.05,
                  epochs=500, batch_size=4, targets={"train_accuracy": 1.0, "min_margin": 0.4},
                  dataset=lambda data_dir, download, progress: datasets.xor(), extra_metrics=xor_margin,
                  preprocessing={"input_range": [0.0, 1.0], "scale": 1.0, "description": "two numbers in [0, 1]"}),
    "digits": Recipe("digits", hidden=[20, 20, 20], activation="relu", init="he", optimizer="adam", lr=3e-3,
                     epochs=60, batch_size=32, augment="flips+shifts",  # made by datasets.digits()
                     targets={"glyphs_accuracy": 1.0, "noisy_accuracy": 0.95},
                     dataset=lambda data_dir, download, progress: datasets.digits(),
                     preprocessing={"input_range": [0.0, 1.0], "scale": 1.0,
                                    "description": "25 pixels, 1 = ink, row-major 5x5"}),
    # The smallest network of the size/time frontier (docs/training.md) that reaches 99.3% within 300 s of training.
    "mnist": Recipe("mnist", hidden=[300], activation="relu", init="he", dropout=0.1, optimizer="adam",
                    lr=2e-3, lr_schedule="cosine", epochs=150, batch_size=256, augment=repr(MNIST_DISTORTION),
                    targets={"test_accuracy": 0.993}, augmenter=MNIST_DISTORTION,
                    dataset=lambda data_dir, download, progress: datasets.mnist(
                        data_dir, download=download, progress=progress, validation=MNIST_VALIDATION),
                    preprocessing={"input_range": [0.0, 1.0], "scale": 1.0 / 255.0,
                                   "description": "784 pixels in [0, 1] (raw 8-bit grey / 255), row-major 28x28, "
                                                  "white ink on black"}),
}


def build_network(recipe: Recipe, in_features: int, classes: int, rng: np.random.Generator) -> Sequential:
    return mlp([in_features, *recipe.hidden, classes], activation=recipe.activation, init=recipe.init,
               dropout=recipe.dropout, rng=rng)


def load_teacher(recipe: Recipe, dataset: datasets.Dataset) -> LoadedModel:
    """The recipe's teacher, checked to read the dataset's inputs and give its classes, in its order."""
    path = Path(recipe.teacher or "")
    loaded = load_model(path / WEIGHTS_FILE if path.is_dir() else path)
    net, meta = loaded.network, loaded.metadata
    if net.head != "softmax" or (net.input_features, net.output_features) != (dataset.x.shape[1], len(dataset.labels)):
        raise WeightsFileError(f"{path}: a teacher must be a softmax network from {dataset.x.shape[1]} inputs to "
                               f"{len(dataset.labels)} classes; this one is {net!r}")
    if meta.get("labels") != dataset.labels:
        raise WeightsFileError(f"{path}: the teacher's labels {meta.get('labels')} are not {dataset.labels}")
    return loaded


def teacher_record(loaded: LoadedModel) -> dict[str, Any]:
    """What the student's metadata says of its teacher: enough to find and verify it."""
    meta = loaded.metadata
    return {"name": meta.get("name"), "version": meta.get("version"), "sha256": loaded.sha256,
            "parameters": loaded.network.num_params, "metrics": meta.get("metrics", {})}


def train_recipe(recipe: Recipe, dataset: datasets.Dataset, *, progress: bool = False) -> tuple[Sequential, History]:
    rng = np.random.default_rng(recipe.seed)
    net = build_network(recipe, dataset.x.shape[1], len(dataset.labels), rng)
    optimizer: Optimizer = OPTIMIZERS[recipe.optimizer](lr=recipe.lr)
    schedule = cosine_schedule(recipe.lr, recipe.epochs, recipe.lr / 100) if recipe.lr_schedule == "cosine" else None
    loss, teacher = loss_for_head(net.head), None
    if recipe.teacher:
        teacher = load_teacher(recipe, dataset).network.infer
        loss = Distillation(recipe.temperature, recipe.distill_weight)
    history = fit(net, loss, optimizer, dataset.x, dataset.y, epochs=recipe.epochs,
                  batch_size=recipe.batch_size, rng=rng, eval_sets=dataset.eval_sets, augment=recipe.augmenter,
                  teacher=teacher, lr_schedule=schedule, progress=progress)
    return net, history


def final_metrics(recipe: Recipe, net: Sequential, dataset: datasets.Dataset, history: History) -> dict[str, float]:
    """Metrics of the finished network, computed afresh in evaluation mode (not the running ones)."""
    metrics = {"train_accuracy": accuracy(net, dataset.x, dataset.y),
               "final_loss": history.last().get("loss", float("nan"))}
    for name, (ex, ey) in (dataset.eval_sets | dataset.test_sets).items():
        metrics[f"{name}_accuracy"] = accuracy(net, ex, ey)
    return metrics | recipe.extra_metrics(net, dataset)


def targets_met(recipe: Recipe, metrics: dict[str, float]) -> bool:
    return all(metrics.get(k, -np.inf) >= v for k, v in recipe.targets.items())


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("numpy-nets")
    except PackageNotFoundError:
        pkg = "0+unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{pkg}+g{commit}" if commit else pkg


def write_model(out: Path, recipe: Recipe, dataset: datasets.Dataset, net: Sequential, history: History,
                version: int | None = None, force: bool = False, plot: bool = True) -> tuple[Path, dict[str, Any]]:
    """Write ``model.npz``, ``metrics.json`` and (if matplotlib is there) ``curves.png``; return the
    version's directory and its report (``metrics`` and ``targets``, as in ``metrics.json``)."""
    version = version if version is not None else next_version(out / recipe.name)
    target = version_dir(out, recipe.name, version)
    if (target / WEIGHTS_FILE).exists() and not force:
        raise FileExistsError(f"{target / WEIGHTS_FILE} exists (pass --force to overwrite)")
    metrics = final_metrics(recipe, net, dataset, history)
    metadata: dict[str, Any] = {
        "name": recipe.name,
        "version": version,
        "labels": dataset.labels,
        "input_shape": dataset.input_shape,
        "preprocessing": recipe.preprocessing,
        "training": recipe.config(),
        "metrics": metrics,
        "targets": {"required": recipe.targets, "met": targets_met(recipe, metrics)},
        "datasets": dataset.checksums,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "train_seconds": round(sum(history.series("seconds")), 2),  # the steps alone
        "fit_seconds": round(sum(history.series("seconds")) + sum(history.series("eval_seconds")), 2),  # and validation
    }
    if recipe.teacher:
        metadata["teacher"] = teacher_record(load_teacher(recipe, dataset))
    save_model(target / WEIGHTS_FILE, net, metadata)
    report = {"metrics": metrics, "targets": metadata["targets"]}
    with atomic_writer(target / METRICS_FILE, "w") as fh:
        json.dump({**report, "history": history.epochs}, fh, indent=2)
    if plot:
        plot_history(history, target / CURVES_FILE, title=f"{recipe.name} v{version}")
    return target, report


def plot_history(history: History, path: Path, title: str) -> bool:
    """Loss and accuracy per epoch as a PNG; returns False (and logs) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install '.[train]'): no curves.png")
        return False
    epochs = history.series("epoch")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history.series("loss"), label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    for key in sorted({k for e in history.epochs for k in e if k.endswith("_accuracy")}):
        ax_acc.plot(epochs, history.series(key), label=key.replace("_", " "))
    ax_acc.set_xlabel("epoch")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_writer(path) as fh:
        fig.savefig(fh, format="png", dpi=80)
    plt.close(fig)
    return True


def run(name: str, out: Path, *, data_dir: str | Path | None = None, download: bool = True,
        overrides: dict[str, Any] | None = None, version: int | None = None, force: bool = False,
        progress: bool = False, plot: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train the recipe ``name`` (with ``overrides``) and write it into the repository at ``out``."""
    recipe = replace(RECIPES[name], **{k: v for k, v in (overrides or {}).items() if v is not None})
    dataset = recipe.load_data(data_dir, download=download, progress=progress)
    start = time.perf_counter()
    net, history = train_recipe(recipe, dataset, progress=progress)
    log.info("%s trained in %.1f s", name, time.perf_counter() - start)
    return write_model(out, recipe, dataset, net, history, version=version, force=force, plot=plot)
