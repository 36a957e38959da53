"""Results files: each benchmark's newest run as JSON under ``bench/results/``, with how and where it ran.

Every file holds the benchmark's own figures beside an envelope: ``benchmark`` (its module),
``command`` (the exact command line, as ``python -m bench.NAME ...``), ``date`` (UTC, at the end of
the run), ``wall_seconds`` (the run's wall time), ``settings`` (its parsed arguments, less where its input
files are and where its output goes), ``machine`` (``bench/machine.py``) and the ``load_average`` at
the end. ``python -m bench.report`` renders ``docs/benchmarks.md``'s tables from these files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NOT_SETTINGS = ("data_dir", "out", "plot", "pool")  # inputs and outputs, not how the run measured


def default_path(name: str) -> Path:
    """``bench/results/NAME.json``."""
    return RESULTS / f"{name}.json"


def portable(value):
    """A path inside this checkout relative to it (so no machine's directory lands in a results file);
    anything else as it is, made JSON-able."""
    if isinstance(value, Path | str) and (str(value) + os.sep).startswith(str(ROOT) + os.sep):
        return str(Path(value).relative_to(ROOT)) or "."
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    return value


def command(module: str, argv: list[str] | None) -> str:
    """The command line that ran ``module`` with ``argv`` (``sys.argv[1:]`` when None)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", module, *(portable(str(a)) for a in args)])


def settings(args: argparse.Namespace | dict) -> dict:
    """The run's parsed arguments, less its input and output locations."""
    items = vars(args) if isinstance(args, argparse.Namespace) else args
    return {k: portable(v) for k, v in items.items() if k not in NOT_SETTINGS}


def tree_commit(root: Path) -> str:
    """The commit checked out in the source tree ``root`` (``+`` if its files differ from it), or ``""``."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=7", "HEAD")
    return head + ("+" if head and git("status", "--porcelain", "--untracked-files=no") else "")


def save(out: Path, module: str, argv: list[str] | None, args, body: dict, started: float | None = None,
         info: dict | None = None) -> dict:
    """Write one run's results file.

    Parameters
    ----------
    out : Path
        The file (its directory is made).
    module : str
        The benchmark's module, e.g. ``bench.serve_load``.
    argv : list of str or None
        The arguments ``main`` was given (None: the process's).
    args : argparse.Namespace or dict
        The parsed arguments, recorded as ``settings``.
    body : dict
        The benchmark's figures.
    started : float, optional
        ``time.monotonic()`` at the run's start, for ``wall_seconds``.
    info : dict, optional
        ``machine()`` as the run recorded it (default: read now).

    Returns
    -------
    dict
        What was written.
    """
    doc = {"benchmark": module.removeprefix("bench."), "command": command(module, argv),
           "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "wall_seconds": round(time.monotonic() - started) if started is not None else None,
           "settings": settings(args), "machine": info or machine(),
           "load_average": [round(v, 2) for v in os.getloadavg()]}
    if clash := set(doc) & set(body):
        raise ValueError(f"the figures would overwrite the results file's envelope: {sorted(clash)}")
    doc.update(body)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return doc


def load(name: str, directory: Path = RESULTS) -> dict | None:
    """The newest run of benchmark ``name`` (``directory/NAME.json``), or None if there is none."""
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
