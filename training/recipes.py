"""The recipes that produce the shipped models, and writing a trained model into a model repository
(its layout: ``model/repository.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.heads import loss_for_head
from model.input_summary import summarize
from model.io import LoadedModel, WeightsFileError, atomic_writer, load_model, save_model
from model.losses import Distillation
from model.network import Sequential, mlp
from model.optimizers import OPTIMIZERS, Optimizer
from model.repository import CURVES_FILE, MAX_VERSION, METRICS_FILE, WEIGHTS_FILE, next_version, version_dir, versions
from training import datasets
from training.augment import Distortion
from training.batches import Augment
from training.feedback import DISAGREEMENT_WARNING, FIELD_SHARE, FeedbackError, FeedbackSet, load_feedback
from training.trainer import History, accuracy, cosine_schedule, fit, predict_labels

log = logging.getLogger(__name__)


Loader = Callable[[str | Path | None, bool, bool], datasets.Dataset]  # (data_dir, download, progress)
BEHAVIOUR = {"config": False}  # a field that says how to train, not a setting stored with the weights
# MNIST: the last 10,000 training images watch each epoch and chose every setting below; the test
# set is evaluated once, on the finished model. Distortions as in Simard et al. (2003), milder.
MNIST_VALIDATION = 10_000
MNIST_DISTORTION = Distortion(rotate=8.0, scale=0.08, shift=1.5, alpha=16.0, sigma=4.0)
# Training MNIST on feedback fine-tunes the parent (docs/training.md#retraining-on-feedback): from scratch
# (the recipe's 150 epochs) reached 100% on the field set but a lower MNIST test accuracy, in 40 times
# the time. 5 epochs from half the recipe's learning rate, then the weights written are the average
# of the parent's and the fine-tuned ones (weight-space ensembling, WiSE-FT: Wortsman et al. 2022):
# learning a new population costs this 300-unit network 0.1-0.2 point of MNIST accuracy, which
# leaves it at or under the 99.2% floor; the average gives back most of it and keeps most of the
# field gain. Chosen on the validation split and on traffic of another seed than the figures quoted.
MNIST_FINE_TUNE = {"epochs": 5, "lr": 1e-3, "lr_schedule": "cosine"}
MNIST_FINE_TUNE_MIX = 0.5


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
    # Training on feedback (run_feedback): the settings that replace these for a fine-tune from the
    # parent, the fine-tuned weights' share in the weights written (the parent's the rest), and the
    # floor a version trained on feedback must reach to be written (default: targets).
    fine_tune: dict[str, Any] = field(default_factory=dict, metadata=BEHAVIOUR)
    fine_tune_mix: float = field(default=1.0, metadata=BEHAVIOUR)
    feedback_targets: dict[str, float] | None = field(default=None, metadata=BEHAVIOUR)

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
                                    "description": "25 pixels, 1 = ink, row-major 5x5"},
                     fine_tune={"epochs": 20, "lr": 1e-3}),
    # The smallest network of the size/time frontier (docs/training.md) that reaches 99.3% within 300 s of training.
    "mnist": Recipe("mnist", hidden=[300], activation="relu", init="he", dropout=0.1, optimizer="adam",
                    lr=2e-3, lr_schedule="cosine", epochs=150, batch_size=256, augment=repr(MNIST_DISTORTION),
                    targets={"test_accuracy": 0.993}, augmenter=MNIST_DISTORTION,
                    dataset=lambda data_dir, download, progress: datasets.mnist(
                        data_dir, download=download, progress=progress, validation=MNIST_VALIDATION),
                    preprocessing={"input_range": [0.0, 1.0], "scale": 1.0 / 255.0,
                                   "description": "784 pixels in [0, 1] (raw 8-bit grey / 255), row-major 28x28, "
                                                  "white ink on black"},
                    fine_tune=MNIST_FINE_TUNE, fine_tune_mix=MNIST_FINE_TUNE_MIX,
                    feedback_targets={"test_accuracy": 0.992}),
}


def build_network(recipe: Recipe, in_features: int, classes: int, rng: np.random.Generator) -> Sequential:
    return mlp([in_features, *recipe.hidden, classes], activation=recipe.activation, init=recipe.init,
               dropout=recipe.dropout, rng=rng)


def load_teacher(recipe: Recipe, dataset: datasets.Dataset) -> LoadedModel:
    """The recipe's teacher, checked to read the dataset's inputs and give its classes, in its order."""
    path = Path(recipe.teacher or "")
    return load_matching(path / WEIGHTS_FILE if path.is_dir() else path, dataset, "teacher")


def load_matching(path: Path, dataset: datasets.Dataset, role: str) -> LoadedModel:
    """A model (a ``role``: teacher, parent) checked to read the dataset's inputs and give its classes,
    in its order."""
    loaded = load_model(path)
    net, meta = loaded.network, loaded.metadata
    if net.head != "softmax" or (net.input_features, net.output_features) != (dataset.x.shape[1], len(dataset.labels)):
        raise WeightsFileError(f"{path}: a {role} must be a softmax network from {dataset.x.shape[1]} inputs to "
                               f"{len(dataset.labels)} classes; this one is {net!r}")
    if meta.get("labels") != dataset.labels:
        raise WeightsFileError(f"{path}: the {role}'s labels {meta.get('labels')} are not {dataset.labels}")
    return loaded


def teacher_record(loaded: LoadedModel) -> dict[str, Any]:
    """What the student's metadata says of its teacher: enough to find and verify it."""
    meta = loaded.metadata
    return {"name": meta.get("name"), "version": meta.get("version"), "sha256": loaded.sha256,
            "parameters": loaded.network.num_params, "metrics": meta.get("metrics", {})}


def train_recipe(recipe: Recipe, dataset: datasets.Dataset, *, progress: bool = False,
                 network: Sequential | None = None,
                 rows: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Sequential, History]:
    """Train a network by ``recipe`` on ``dataset``.

    Parameters
    ----------
    network : Sequential, optional
        Start from this network (trained further in place: a fine-tune) instead of a new one.
    rows : (x (n, features), y (n,)), optional
        Fit on these rows instead of ``dataset.x`` and ``dataset.y`` (e.g. with oversampled feedback).
    """
    rng = np.random.default_rng(recipe.seed)
    if network is None:
        net = build_network(recipe, dataset.x.shape[1], len(dataset.labels), rng)
    else:
        net = network
        for layer in net.layers:  # dropout draws from the run's seed, not the generator it was loaded with
            if isinstance(getattr(layer, "rng", None), np.random.Generator):
                layer.rng = rng
    x, y = rows if rows is not None else (dataset.x, dataset.y)
    optimizer: Optimizer = OPTIMIZERS[recipe.optimizer](lr=recipe.lr)
    schedule = cosine_schedule(recipe.lr, recipe.epochs, recipe.lr / 100) if recipe.lr_schedule == "cosine" else None
    loss, teacher = loss_for_head(net.head), None
    if recipe.teacher:
        teacher = load_teacher(recipe, dataset).network.infer
        loss = Distillation(recipe.temperature, recipe.distill_weight)
    history = fit(net, loss, optimizer, x, y, epochs=recipe.epochs,
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
                version: int | None = None, force: bool = False, plot: bool = True,
                metrics: dict[str, float] | None = None,
                extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``model.npz``, ``metrics.json`` and (if matplotlib is there) ``curves.png``; return the
    version's directory and its report (``metrics`` and ``targets``, as in ``metrics.json``).

    ``dataset.x`` must be the training inputs before augmentation: their summary
    (``model/input_summary.py``) goes into the metadata, for the server's drift score. ``metrics``
    (default: :func:`final_metrics`) and ``extra`` (more metadata entries) come from the caller.
    """
    version, target, made = reserve_version(out, recipe.name, version, force)
    try:
        return write_version(target, version, recipe, dataset, net, history, plot, force, metrics, extra)
    except BaseException:
        if made and not (target / WEIGHTS_FILE).exists():  # nothing of it written: the number is free again
            with contextlib.suppress(OSError):
                for leftover in target.iterdir():
                    leftover.unlink()
                target.rmdir()
        raise


def check_output(out: Path, name: str, version: int | None, force: bool) -> None:
    """What writing the version would refuse, said before the training, not after it: a version named
    whose weights exist (without ``force``), or a repository that is not a directory this process can
    write (or create). Raises FileExistsError or OSError."""
    if version is not None:
        named = version_dir(out, name, version)
        if (named.exists() or named.is_symlink()) and not named.is_dir():
            raise NotADirectoryError(f"{named} is not a directory")
        if (named / WEIGHTS_FILE).exists() and not force:
            raise FileExistsError(f"{named / WEIGHTS_FILE} exists (pass --force to overwrite)")
    existing = out / name
    while not existing.exists():  # the nearest part of the path there is: the one mkdir would write in
        if existing.is_symlink():
            raise FileNotFoundError(f"{existing} is a link to nothing")
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{existing} is not writable by this user")


def reserve_version(out: Path, name: str, version: int | None, force: bool) -> tuple[int, Path, bool]:
    """(version, its directory, whether this call made it). Without ``version``, the next number, its
    directory made here: two runs finishing together used to pick the same number, and the second's
    weights replaced the first's (which a server may already serve). A version named, or one whose
    weights exist, is refused unless ``force``; the weights file itself is installed without replacing
    another run's written meanwhile (``save_model(overwrite=False)``)."""
    (out / name).mkdir(parents=True, exist_ok=True)
    floor = 1
    while True:
        chosen = version if version is not None else max(next_version(out / name), floor)
        if chosen > MAX_VERSION:
            raise FileExistsError(f"{out / name}: no version number left (the largest is {MAX_VERSION})")
        target = version_dir(out, name, chosen)
        try:
            target.mkdir()
            return chosen, target, True
        except FileExistsError:
            if version is None:  # taken by another run since, or by a file (no version): the one after it
                floor = chosen + 1
                continue
        if (target / WEIGHTS_FILE).exists() and not force:
            raise FileExistsError(f"{target / WEIGHTS_FILE} exists (pass --force to overwrite)")
        return chosen, target, False


def write_version(target: Path, version: int, recipe: Recipe, dataset: datasets.Dataset, net: Sequential,
                  history: History, plot: bool, force: bool, metrics: dict[str, float] | None,
                  extra: dict[str, Any] | None) -> tuple[Path, dict[str, Any]]:
    """:func:`write_model`'s files, into the version directory reserved for them."""
    metrics = metrics if metrics is not None else final_metrics(recipe, net, dataset, history)
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
        "input_summary": summarize(dataset.x),
        **(extra or {}),
    }
    if recipe.teacher:
        metadata["teacher"] = teacher_record(load_teacher(recipe, dataset))
    save_model(target / WEIGHTS_FILE, net, metadata, overwrite=force)
    report = {"metrics": metrics, "targets": metadata["targets"]}
    with atomic_writer(target / METRICS_FILE, "w") as fh:
        json.dump({**report, "history": history.epochs}, fh, indent=2)
    if not (plot and plot_history(history, target / CURVES_FILE, title=f"{recipe.name} v{version}")):
        with contextlib.suppress(FileNotFoundError):  # an overwritten version's curves are not this model's
            (target / CURVES_FILE).unlink()
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
        progress: bool = False, plot: bool = True, keep_missed: bool = False) -> tuple[Path | None, dict[str, Any]]:
    """Train the recipe ``name`` (with ``overrides``) and write it into the repository at ``out``; the
    version's directory and the report (``metrics``, ``targets``).

    A model that misses its targets is not written (the directory is None) unless ``keep_missed``:
    a served repository serves a new version as soon as it appears, so a failed run must not land
    there by default.
    """
    recipe = replace(RECIPES[name], **{k: v for k, v in (overrides or {}).items() if v is not None})
    check_output(out, recipe.name, version, force)
    dataset = recipe.load_data(data_dir, download=download, progress=progress)
    start = time.perf_counter()
    net, history = train_recipe(recipe, dataset, progress=progress)
    log.info("%s trained in %.1f s", name, time.perf_counter() - start)
    metrics = final_metrics(recipe, net, dataset, history)
    if not targets_met(recipe, metrics) and not keep_missed:
        return None, {"metrics": metrics, "targets": {"required": recipe.targets, "met": False}}
    return write_model(out, recipe, dataset, net, history, version=version, force=force, plot=plot,
                       metrics=metrics)


# --- training on feedback -------------------------------------------------------------------------

# Feedback rows are repeated until they are about half of an epoch's rows (so of each shuffled batch).
# Measured on MNIST with 3,196 feedback rows (the fine-tune below, averaged with the parent): at their
# natural share (6%) the field accuracy rose to 93.5%, at a quarter to 97.5%, at half to 98.7%, with
# MNIST validation at 99.26-99.30% throughout (seed noise); half costs a longer epoch (1.5 times a
# quarter's), a few seconds. The cap keeps a handful of examples (perhaps poisoned) from being repeated into a
# large share: each row at most MAX_REPEAT times an epoch.
FEEDBACK_BATCH_SHARE = 0.5
MAX_REPEAT = 16


@dataclass
class FeedbackOutcome:
    """What :func:`run_feedback` did: the version written (None when a gate refused) and its report
    (``metrics``, ``targets``, ``feedback`` as stored in the metadata, and ``gates``)."""

    target: Path | None
    report: dict[str, Any]

    @property
    def written(self) -> bool:
        return self.target is not None


def oversampling(base_rows: int, feedback_rows: int, share: float = FEEDBACK_BATCH_SHARE,
                 cap: int = MAX_REPEAT) -> int:
    """How many times each feedback row appears in an epoch so that they make about ``share`` of it
    beside ``base_rows`` other rows: at least once, at most ``cap`` times (0 without feedback)."""
    if feedback_rows == 0:
        return 0
    wanted = share * base_rows / ((1.0 - share) * feedback_rows)
    return int(min(cap, max(1, round(wanted))))


def resolve_parent(out: Path, name: str, parent: str | Path | None) -> Path:
    """The parent's weights file: ``parent`` (a version directory or its model.npz), else the newest
    version of ``name`` in the repository ``out``."""
    if parent is None:
        found = versions(out / name)
        if not found:
            raise WeightsFileError(f"{out / name}: no version to start from (pass --parent)")
        return version_dir(out, name, found[-1]) / WEIGHTS_FILE
    path = Path(parent)
    return path / WEIGHTS_FILE if path.is_dir() else path


def feedback_recipe(name: str, parent: LoadedModel | None, overrides: dict[str, Any] | None) -> Recipe:
    """The recipe of a run on feedback: the recipe's own from scratch (``parent`` None), else its
    fine-tune settings on the parent's architecture; then ``overrides``; its targets the feedback floor."""
    base = RECIPES[name]
    recipe = base
    if parent is not None:
        trained = parent.metadata.get("training")
        trained = trained if isinstance(trained, dict) else {}  # as absent: a file from elsewhere may hold anything
        architecture = {k: trained[k] for k in ("hidden", "activation", "init", "dropout") if k in trained}
        recipe = replace(base, **{**architecture, **base.fine_tune})
    recipe = replace(recipe, **{k: v for k, v in (overrides or {}).items() if v is not None})
    return replace(recipe, targets=base.feedback_targets if base.feedback_targets is not None else base.targets)


def run_feedback(name: str, out: Path, feedback_dir: str | Path, *, parent: str | Path | None = None,
                 field_share: float = FIELD_SHARE, from_scratch: bool = False,
                 data_dir: str | Path | None = None, download: bool = True,
                 overrides: dict[str, Any] | None = None, version: int | None = None, force: bool = False,
                 progress: bool = False, plot: bool = True) -> FeedbackOutcome:
    """Train the next version of ``name`` on its dataset plus the feedback in ``feedback_dir``; write it
    into ``out`` only if it passes both gates.

    The feedback's field share (:func:`training.feedback.is_field`) is held out; the rest joins the
    training rows, repeated to about :data:`FEEDBACK_BATCH_SHARE` of each epoch (:func:`oversampling`).
    The network starts from the parent (default: the newest version in ``out``) with the recipe's
    ``fine_tune`` settings, and the weights kept are ``fine_tune_mix`` of the fine-tuned ones plus the
    rest of the parent's (:func:`interpolate`); or, with ``from_scratch``, it is a new one trained by
    the recipe's own settings.

    Gates (both must pass, else nothing is written and ``target`` is None):

    * ``floor``: the recipe's ``feedback_targets`` (MNIST: test accuracy >= 99.2%; else its targets);
    * ``field``: the new version's accuracy on the field set strictly above the parent's.

    Raises
    ------
    FeedbackError
        No feedback to train on, or no field example to judge by.
    WeightsFileError
        No parent, or one that does not fit the recipe's data.
    """
    start = time.perf_counter()
    check_output(out, name, version, force)
    dataset = RECIPES[name].load_data(data_dir, download=download, progress=progress)
    parent_path = resolve_parent(out, name, parent)
    loaded = load_matching(parent_path, dataset, "parent")
    recipe = feedback_recipe(name, None if from_scratch else loaded, overrides)
    feedback = load_feedback(feedback_dir, name, dataset.labels, dataset.x.shape[1],
                             input_range=recipe.preprocessing.get("input_range", (0.0, 1.0)), field_share=field_share)
    if feedback.train_count == 0 or feedback.field_count == 0:
        raise FeedbackError(f"{feedback_dir}: {feedback.count} usable examples for {name}, {feedback.train_count} "
                            f"to train on and {feedback.field_count} in the field set; both must be some")
    joined, rows, repeat = feedback_dataset(dataset, feedback)
    network = None if from_scratch else loaded.network.copy()
    fit_start = time.perf_counter()
    net, history = train_recipe(recipe, joined, progress=progress, network=network, rows=rows)
    seconds = time.perf_counter() - fit_start
    mix = 1.0 if from_scratch else recipe.fine_tune_mix
    interpolate(net, loaded.network, mix)
    metrics = final_metrics(recipe, net, joined, history)
    field_x, field_y = feedback.field_split()
    parent_field = accuracy(loaded.network, field_x, field_y)
    record = feedback_record(feedback, loaded, parent_field, metrics["field_accuracy"],
                             mode="scratch" if from_scratch else "fine-tune", repeat=repeat, mix=mix)
    gates = {"floor": {"required": recipe.targets, "met": targets_met(recipe, metrics)},
             "field": {"parent": parent_field, "new": metrics["field_accuracy"],
                       "met": metrics["field_accuracy"] > parent_field}}
    log.info("%s on feedback (%s, %.1f s training, %.1f s in all): field accuracy %.4f (parent v%s %.4f), %s",
             name, record["mode"], seconds, time.perf_counter() - start, metrics["field_accuracy"],
             record["parent"]["version"], parent_field,
             " ".join(f"{k}={metrics.get(k, float('nan')):.4f}" for k in recipe.targets))
    report = {"metrics": metrics, "feedback": record, "gates": gates, "train_seconds": round(seconds, 2)}
    if not all(gate["met"] for gate in gates.values()):
        # both figures of both gates, whichever refused: an operator sees how far off each was
        floor = {k: round(metrics.get(k, float("nan")), 4) for k in recipe.targets}
        log.error("not written: %s %s the floor %s; field accuracy %.4f %s the parent's %.4f (%d field examples)",
                  floor, "meets" if gates["floor"]["met"] else "below", recipe.targets, metrics["field_accuracy"],
                  "above" if gates["field"]["met"] else "is not above", parent_field, feedback.field_count)
        return FeedbackOutcome(None, report)
    target, written = write_model(out, recipe, joined, net, history, version=version, force=force, plot=plot,
                                  metrics=metrics, extra={"feedback": record})
    return FeedbackOutcome(target, report | written)


def feedback_dataset(dataset: datasets.Dataset, feedback: FeedbackSet
                     ) -> tuple[datasets.Dataset, tuple[np.ndarray, np.ndarray], int]:
    """The dataset with the feedback's training share added (once per row: what the metrics and the input
    summary see) and its field share as the test set ``field``; the rows to fit on, with the feedback
    repeated (:func:`oversampling`); and the repeat."""
    train_x, train_y = feedback.train_split()
    repeat = oversampling(len(dataset.x), len(train_x))
    joined = replace(dataset, x=np.concatenate([dataset.x, train_x]), y=np.concatenate([dataset.y, train_y]),
                     test_sets={**dataset.test_sets, "field": feedback.field_split()},
                     checksums={**dataset.checksums, "feedback": feedback.sha256})
    rows = (np.concatenate([dataset.x, np.repeat(train_x, repeat, axis=0)]),
            np.concatenate([dataset.y, np.repeat(train_y, repeat)]))
    return joined, rows, repeat


def interpolate(net: Sequential, parent: Sequential, mix: float) -> None:
    """Set ``net``'s weights to ``mix`` times its own plus ``1 - mix`` times ``parent``'s, in place
    (weight-space ensembling of a fine-tune with its start: Wortsman et al. 2022, WiSE-FT)."""
    if mix == 1.0:
        return
    own, keep = net.dtype.type(mix), net.dtype.type(1.0 - mix)
    start = {**parent.named_params(), **parent.named_buffers()}
    for key, value in {**net.named_params(), **net.named_buffers()}.items():
        value *= own
        value += keep * start[key]


def feedback_record(feedback: FeedbackSet, parent: LoadedModel, parent_field: float, new_field: float, *,
                    mode: str, repeat: int, mix: float) -> dict[str, Any]:
    """The metadata's ``feedback`` entry. ``disagreement_with_parent``: the share of all the examples
    (both shares) whose label is not the parent's answer, a poisoning signal (warned above
    :data:`~training.feedback.DISAGREEMENT_WARNING`)."""
    summary = feedback.summary()
    disagreement = float(np.mean(predict_labels(parent.network, feedback.x) != feedback.y))
    if disagreement > DISAGREEMENT_WARNING:
        log.warning("%.1f%% of the feedback labels contradict the parent's answers: poisoned labels?",
                    100 * disagreement)
    return {"count": summary["count"], "train_count": summary["train_count"], "field_count": summary["field_count"],
            "field_share": summary["field_share"], "time_range": summary["time_range"], "sha256": summary["sha256"],
            "rejected": summary["rejected"], "duplicates": summary["duplicates"],
            "disagreement_with_parent": disagreement,
            "disagreement_at_capture": summary["disagreement_at_capture"],
            "parent": {"version": parent.metadata.get("version"), "sha256": parent.sha256},
            "field_accuracy": {"parent": parent_field, "new": new_field}, "mode": mode, "repeat": repeat,
            "mix": mix}
