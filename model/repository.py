"""The model repository's layout, one home for its writer (``training``) and its reader (``service``).

    <root>/<name>/<version>/model.npz      weights and metadata (model/io.py)
                           /metrics.json   final metrics and the per-epoch history
                           /curves.png     loss and accuracy per epoch
    <root>/<name>/config.json              optional: its own version policy (service/repository/version_policy.py)

Versions are numbered directories from 1; a new version is one more than the newest.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "model_repository"
WEIGHTS_FILE = "model.npz"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.json"
MAX_VERSION = 999_999_999  # nine digits: what a URL or a gRPC call may name (service/protocols/schemas.py)


# A model's name, everywhere it is read (request bodies, URL routes, directories): a letter or digit,
# then letters, digits, '_', '.' or '-'; so never '.', '..' or hidden, and at most 64 characters.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN)


def is_model_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def model_dirs(root: Path) -> list[Path]:
    """Each model's directory under ``root``, by name (only names of :data:`NAME_PATTERN`)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and is_model_name(p.name))


def versions(model_dir: Path) -> list[int]:
    """The model's version numbers on disk, ascending (its numbered directories from 1 to
    :data:`MAX_VERSION`; none if it is absent). A larger number is no version: no URL or gRPC call
    could name it, and serving it unnamed would answer with a number clients cannot send back."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isascii() and p.name.isdigit() and 1 <= int(p.name) <= MAX_VERSION)


def version_dir(root: Path, name: str, version: int) -> Path:
    return root / name / str(version)


def next_version(model_dir: Path) -> int:
    version = max(versions(model_dir), default=0) + 1
    if version > MAX_VERSION:
        raise FileExistsError(f"{model_dir}: version {MAX_VERSION} exists; no version can follow it")
    return version


def newest_weights(root: Path, name: str) -> Path:
    """The newest version's weights file of ``name`` under ``root``: what the default policy
    (``latest:1``) serves when it loads."""
    found = versions(root / name)
    if not found:
        raise FileNotFoundError(f"{root / name}: no versions")
    return version_dir(root, name, found[-1]) / WEIGHTS_FILE
