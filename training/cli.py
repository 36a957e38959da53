"""``python -m training``: train the shipped models, or reproduce the classic results.

    python -m training xor|digits|mnist|all [--epochs N] [--seed S] [--out DIR] [--data-dir DIR] ...
    python -m training digits|mnist --feedback CAPTURE_DIR [--parent VERSION] [--field-share 0.2] [--from-scratch]
    python -m training reproduce [--skip-mnist] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from model.io import WeightsFileError
from model.repository import DEFAULT_ROOT, MAX_VERSION
from training.feedback import FIELD_SHARE, FeedbackError
from training.mnist import DatasetError
from training.recipes import RECIPES

log = logging.getLogger("training")

MODELS = tuple(RECIPES)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def version_number(text: str) -> int:
    value = positive_int(text)
    if value > MAX_VERSION:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_VERSION:,} (what a server can name), got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def open_unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


MAX_WIDTH = 100_000  # units in one hidden layer: 784 x 100,000 float32 weights are 314 MB; 10**12 was a traceback


def layer_sizes(text: str) -> list[int]:
    try:
        widths = [positive_int(part) for part in text.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive widths, e.g. 800 or 512,512; "
                                         f"got {text}") from None
    if max(widths) > MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"a hidden layer of at most {MAX_WIDTH:,} units, got {max(widths):,}")
    return widths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=[*MODELS, "all", "reproduce"],
                        help="model to train, 'all', or 'reproduce' for the classic-results table")
    parser.add_argument("--epochs", type=positive_int, help="override the recipe's epoch count")
    parser.add_argument("--seed", type=non_negative_int, help="random seed (default: the recipe's, 0)")
    parser.add_argument("--lr", type=positive_float, help="override the learning rate")
    parser.add_argument("--batch-size", type=positive_int, help="override the batch size")
    parser.add_argument("--hidden", type=layer_sizes, help="override the hidden layers' widths, e.g. 800 or 512,512")
    parser.add_argument("--teacher", type=Path,
                        help="distil from this model: a version directory (model_repository/mnist/1) or its model.npz")
    parser.add_argument("--temperature", type=positive_float,
                        help="distillation temperature (default: the recipe's, 4)")
    parser.add_argument("--distill-weight", type=unit_float,
                        help="the teacher term's share of the loss, in [0, 1] (default: the recipe's, 0.5)")
    parser.add_argument("--feedback", type=Path, metavar="CAPTURE_DIR",
                        help="also train on the labelled traffic in the server's CAPTURE_DIR: the next version, "
                             "written only if it beats the parent on the held-out field share")
    parser.add_argument("--parent", type=Path,
                        help="with --feedback: the version to start from and to beat, a version directory or its "
                             "model.npz (default: the newest version in --out)")
    parser.add_argument("--field-share", type=open_unit_float, default=FIELD_SHARE,
                        help="with --feedback: the share of the examples held out as the field set, by a hash of "
                             "their inputs (default: %(default)s)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="with --feedback: train a new network by the recipe instead of fine-tuning the parent")
    # the server's MODEL_DIR when set (the train image sets it): the repository the server would serve
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("MODEL_DIR") or DEFAULT_ROOT),
                        help="model repository to write <name>/<version>/ into (default: $MODEL_DIR if set, "
                             "else %(default)s)")
    parser.add_argument("--version", type=version_number,
                        help="version number to write (default: one more than the newest present)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing version")
    parser.add_argument("--keep-missed", action="store_true",
                        help="write the model even when it misses its targets (by default it is not written: "
                             "a served repository would serve it); a run that diverged (NaN) is never written")
    parser.add_argument("--data-dir", type=Path,
                        help="MNIST IDX files (default: $MNIST_DIR, else a user cache it downloads into)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading MNIST")
    parser.add_argument("--no-plot", action="store_true", help="skip curves.png")
    parser.add_argument("--skip-mnist", action="store_true", help="reproduce: only the quick experiments")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.feedback is None and (args.parent is not None or args.from_scratch):
        parser.error("--parent and --from-scratch go with --feedback")
    if args.feedback is not None and args.target in ("all", "reproduce"):
        parser.error("--feedback trains one model: name it (digits, mnist, ...)")
    if args.feedback is not None and args.teacher is not None:
        parser.error("--feedback does not distil: leave out --teacher")
    if args.feedback is not None and args.hidden is not None and not args.from_scratch:
        parser.error("a fine-tune keeps the parent's layers: --hidden goes with --from-scratch")
    if args.feedback is not None and args.keep_missed:
        parser.error("--feedback writes a version only if it passes both gates: --keep-missed does not apply")
    training_only = [flag for flag, value in (("--epochs", args.epochs), ("--seed", args.seed), ("--lr", args.lr),
                                              ("--batch-size", args.batch_size), ("--hidden", args.hidden),
                                              ("--teacher", args.teacher), ("--temperature", args.temperature),
                                              ("--distill-weight", args.distill_weight), ("--version", args.version))
                     if value is not None]
    if args.target == "reproduce" and training_only:
        parser.error(f"reproduce runs the classic experiments as published: {', '.join(training_only)} does not apply")
    if args.target != "reproduce" and args.skip_mnist:
        parser.error("--skip-mnist goes with reproduce")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.target == "reproduce":
            return reproduce(args)
        if args.feedback is not None:
            return train_on_feedback(args)
        return train(args)
    except (DatasetError, WeightsFileError, FeedbackError, OSError) as exc:  # OSError: FileExistsError, a
        log.error("%s", exc)  # repository that cannot be written, a full disk
        return 2
    except MemoryError as exc:  # numpy's names the array it could not allocate
        log.error("out of memory: %s", exc)
        return 2


def overrides(args: argparse.Namespace) -> dict[str, object]:
    return {"epochs": args.epochs, "seed": args.seed, "lr": args.lr, "batch_size": args.batch_size,
            "hidden": args.hidden, "teacher": None if args.teacher is None else str(args.teacher),
            "temperature": args.temperature, "distill_weight": args.distill_weight}


def train(args: argparse.Namespace) -> int:
    from training.recipes import run

    names = MODELS if args.target == "all" else (args.target,)
    if args.version is not None and len(names) > 1 and not args.force:
        log.error("--version with 'all' writes the same version for every model; add --force to confirm")
        return 2
    failed = []
    for name in names:
        target, report = run(name, args.out, data_dir=args.data_dir, download=not args.no_download,
                             overrides=overrides(args), version=args.version, force=args.force,
                             progress=not args.quiet, plot=not args.no_plot, keep_missed=args.keep_missed)
        metrics = " ".join(f"{k}={v:.4f}" for k, v in report["metrics"].items())
        met = report["targets"]["met"]
        if target is None:
            log.error("%s missed its targets (%s; required %s): not written (--keep-missed writes it anyway)",
                      name, metrics, report["targets"]["required"])
        else:
            log.info("wrote %s: %s (targets %s)", target, metrics, "met" if met else "NOT met")
        if not met:
            failed.append(name)
    if failed:
        log.error("targets not met for: %s", ", ".join(failed))
        return 1
    return 0


def train_on_feedback(args: argparse.Namespace) -> int:
    """The next version on the recipe's data plus the feedback: 0 if written, 1 if a gate refused it."""
    from training.recipes import run_feedback

    outcome = run_feedback(args.target, args.out, args.feedback, parent=args.parent, field_share=args.field_share,
                           from_scratch=args.from_scratch, data_dir=args.data_dir, download=not args.no_download,
                           overrides=overrides(args), version=args.version, force=args.force,
                           progress=not args.quiet, plot=not args.no_plot)
    if not outcome.written:
        log.error("%s: nothing written", args.target)
        return 1
    metrics = " ".join(f"{k}={v:.4f}" for k, v in outcome.report["metrics"].items())
    log.info("wrote %s: %s", outcome.target, metrics)
    return 0


def reproduce(args: argparse.Namespace) -> int:
    from training.reproduce import format_table, mnist_experiments, quick_experiments

    experiments = quick_experiments()
    if not args.skip_mnist:
        experiments += mnist_experiments(args.data_dir, download=not args.no_download)
    results = []
    for experiment in experiments:
        result = experiment()
        log.info("%s: %s", result.name, result.ours)
        results.append(result)
    sys.stdout.write(format_table(results) + "\n")
    return 0 if all(r.ok for r in results) else 1
