"""Weights files: one ``.npz`` per model, no pickle anywhere.

Layout of the archive:

* ``params.<layer>.<key>`` and ``buffers.<layer>.<key>``: every array of the network, e.g.
  ``params.0.W`` (float32, shape (in_features, out_features)).
* ``__metadata__``: a 0-d unicode array holding one JSON document: ``format_version``, the
  ``architecture`` (enough to rebuild the network), ``dtype``, and whatever else the writer adds
  (name, version, labels, input shape, preprocessing, training config, metrics, dataset checksums,
  creation time, code version).

:func:`load_model` opens with ``allow_pickle=False``, rebuilds the network from the architecture and
checks that every expected array is present with the right shape and dtype, that there are no
extra arrays, and that all values are finite. Any problem raises :class:`WeightsFileError` with a
one-line reason. :func:`save_model` writes atomically: a temporary file in the same directory,
fsync, then rename, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from model.network import Sequential

FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"


class WeightsFileError(ValueError):
    """A weights file is missing, truncated, corrupted, or does not match its architecture."""


@dataclass
class LoadedModel:
    network: Sequential
    metadata: dict[str, Any]
    sha256: str


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a weights file must be readable by the (non-root) server user too.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Persist the rename itself (the directory entry), where the platform allows it.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_model(path: str | os.PathLike[str], network: Sequential, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``network`` and ``metadata`` to ``path`` atomically; returns the path."""
    meta = dict(metadata or {})
    meta.update(format_version=FORMAT_VERSION, architecture=network.architecture(),
                dtype=np.dtype(network.dtype).name)
    arrays = {f"params.{k}": v for k, v in network.named_params().items()}
    arrays.update({f"buffers.{k}": v for k, v in network.named_buffers().items()})
    arrays[METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
    with atomic_writer(path) as fh:
        np.savez(fh, **arrays)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load and validate a weights file written by :func:`save_model`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise WeightsFileError(f"{path}: not a readable .npz archive ({exc})") from None
    metadata = _read_metadata(path, arrays.pop(METADATA_KEY, None))
    try:
        network = Sequential.from_architecture(metadata["architecture"], dtype=np.dtype(metadata["dtype"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise WeightsFileError(f"{path}: architecture cannot be built: {exc}") from None
    expected = {f"params.{k}": v for k, v in network.named_params().items()}
    expected.update({f"buffers.{k}": v for k, v in network.named_buffers().items()})
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise WeightsFileError(f"{path}: arrays do not match the architecture (missing {missing}, unexpected {extra})")
    for key, target in expected.items():
        value = arrays[key]
        if value.shape != target.shape or value.dtype != target.dtype:
            raise WeightsFileError(f"{path}: {key} has shape {value.shape} and dtype {value.dtype}, "
                                   f"expected {target.shape} and {target.dtype}")
        if not np.all(np.isfinite(value)):
            raise WeightsFileError(f"{path}: {key} holds NaN or infinite values")
        np.copyto(target, value)
    return LoadedModel(network=network.eval(), metadata=metadata, sha256=file_sha256(path))


def _read_metadata(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    if raw is None:
        raise WeightsFileError(f"{path}: no {METADATA_KEY} entry (not a weights file of this project)")
    if raw.dtype.kind != "U" or raw.shape != ():
        raise WeightsFileError(f"{path}: {METADATA_KEY} must be a JSON string, got dtype {raw.dtype} shape {raw.shape}")
    try:
        metadata = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise WeightsFileError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise WeightsFileError(f"{path}: metadata must be a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsFileError(f"{path}: unsupported format_version {version!r} (this code reads {FORMAT_VERSION})")
    if metadata.get("dtype") not in ("float32", "float64"):
        raise WeightsFileError(f"{path}: unsupported dtype {metadata.get('dtype')!r}")
    return metadata
