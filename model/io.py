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
import math
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
MAX_METADATA_BYTES = 16 << 20  # the metadata string as NumPy stores it (4 bytes a character)
ZIP_UNREADABLE_FLAGS = 0x1 | 0x20 | 0x40  # encrypted, patched data, strong encryption: np.savez writes none


class WeightsFileError(ValueError):
    """A weights file is missing, truncated, corrupted, or does not match its architecture."""


@dataclass
class LoadedModel:
    network: Sequential
    metadata: dict[str, Any]
    sha256: str


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb", overwrite: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and rename it over ``path``
    (``overwrite=False``: link it there, which raises FileExistsError if ``path`` exists meanwhile).

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
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # never over another writer's file
            os.unlink(tmp)
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


def save_model(path: str | os.PathLike[str], network: Sequential, metadata: dict[str, Any] | None = None,
               overwrite: bool = True) -> Path:
    """Write ``network`` and ``metadata`` to ``path`` atomically; returns the path. What :func:`load_model`
    would refuse is not written: a :class:`WeightsFileError` (NaN or infinite weights, a diverged run's
    NaN in the metadata), and ``path`` is left as it was. ``overwrite=False``: a FileExistsError rather
    than replace a file that is there (another run's, written meanwhile)."""
    meta = dict(metadata or {})
    meta.update(format_version=FORMAT_VERSION, architecture=network.architecture(),
                dtype=np.dtype(network.dtype).name)
    arrays = {f"params.{k}": v for k, v in network.named_params().items()}
    arrays.update({f"buffers.{k}": v for k, v in network.named_buffers().items()})
    for key, value in arrays.items():
        if value.dtype != network.dtype:  # a layer of another dtype: the file says one for all
            raise WeightsFileError(f"{path}: {key} is {value.dtype}, the network {np.dtype(network.dtype).name}: "
                                   "not written")
        if not np.all(np.isfinite(value)):
            raise WeightsFileError(f"{path}: {key} holds NaN or infinite values (a diverged run?): not written")
        arrays[key] = np.ascontiguousarray(value)  # transposed: saved in Fortran order, which load refuses
    try:
        arrays[METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
    except ValueError as exc:  # NaN or infinity: not JSON
        raise WeightsFileError(f"{path}: metadata is not strict JSON ({exc}): not written") from None
    if arrays[METADATA_KEY].dtype.itemsize > MAX_METADATA_BYTES:
        raise WeightsFileError(f"{path}: metadata takes {arrays[METADATA_KEY].dtype.itemsize:,} bytes as stored, "
                               f"over {MAX_METADATA_BYTES:,}: not written")
    with atomic_writer(path, overwrite=overwrite) as fh:
        np.savez(fh, **arrays)
    return Path(path)


def file_sha256(file: str | os.PathLike[str] | IO[bytes]) -> str:
    """The SHA-256 of a file (a path, or an open binary file read from where it stands)."""
    if not hasattr(file, "read"):
        with open(file, "rb") as fh:
            return file_sha256(fh)
    digest = hashlib.sha256()
    for chunk in iter(lambda: file.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load and validate a weights file written by :func:`save_model`; any problem is a
    :class:`WeightsFileError` (never another exception, whatever the file holds).

    The file is opened once: the SHA-256 reported is of the file loaded, even if another replaces it
    meanwhile (as :func:`save_model` and the training CLI do, by renaming). Every member's ``.npy``
    header is checked (an array, stored as :func:`numpy.savez` stores it, no bigger than its bytes)
    and the arrays' names, shapes and dtype against the metadata's architecture before any array is
    read or the network is built: a small file cannot make the loader allocate what it does not hold.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            network, metadata = _read(path, fh)
            fh.seek(0)
            digest = file_sha256(fh)
    except OSError as exc:
        raise WeightsFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except MemoryError:
        raise WeightsFileError(f"{path}: too large to load into memory") from None
    return LoadedModel(network=network.eval(), metadata=metadata, sha256=digest)


def _read(path: Path, fh: IO[bytes]) -> tuple[Sequential, dict[str, Any]]:
    try:
        archive = zipfile.ZipFile(fh)
        members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        # NotImplementedError: a "version needed to extract" above zipfile's (6.3)
        raise WeightsFileError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        headers = {name[:-len(".npy")]: _header(path, archive, info) for name, info in members.items()}
        if METADATA_KEY not in headers:
            raise WeightsFileError(f"{path}: no {METADATA_KEY} entry (not a weights file of this project)")
        shape, dtype, _ = headers[METADATA_KEY]
        if dtype.kind != "U" or shape != () or dtype.itemsize > MAX_METADATA_BYTES:
            raise WeightsFileError(f"{path}: {METADATA_KEY} must be a JSON string of at most "
                                   f"{MAX_METADATA_BYTES:,} bytes, got dtype {dtype} shape {shape}")
        metadata = _read_metadata(path, _array(path, archive, members, METADATA_KEY))
        try:
            expected = Sequential.array_shapes(metadata["architecture"])
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise WeightsFileError(f"{path}: architecture cannot be built: {exc}") from None
        missing = sorted(set(expected) - set(headers))
        extra = sorted(set(headers) - set(expected) - {METADATA_KEY})
        if missing or extra:
            raise WeightsFileError(f"{path}: arrays do not match the architecture (missing {missing}, "
                                   f"unexpected {extra})")
        want = np.dtype(metadata["dtype"])
        for key, target_shape in expected.items():
            shape, dtype, _ = headers[key]
            if shape != target_shape or dtype != want:
                raise WeightsFileError(f"{path}: {key} has shape {shape} and dtype {dtype}, "
                                       f"expected {target_shape} and {want}")
        try:  # every array's size is now the file's own: building it allocates what the file holds
            network = Sequential.from_architecture(metadata["architecture"], dtype=want)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise WeightsFileError(f"{path}: architecture cannot be built: {exc}") from None
        state = {f"params.{k}": v for k, v in network.named_params().items()}
        state.update({f"buffers.{k}": v for k, v in network.named_buffers().items()})
        for key, target in state.items():
            _read_into(path, archive, members[f"{key}.npy"], headers[key][2], target)
            if not np.all(np.isfinite(target)):
                raise WeightsFileError(f"{path}: {key} holds NaN or infinite values")
    return network, metadata


def _read_into(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, offset: int, target: np.ndarray) -> None:
    """A member's data (its header checked: ``target``'s shape and dtype, C order) read straight into
    ``target``, the network's own array: no array of it is made and copied, nor read in pieces."""
    buffer = memoryview(target).cast("B")  # C-contiguous, or this raises: never a copy written in vain
    try:
        with archive.open(info) as fh:
            fh.read(offset)  # the header, already read
            done = 0
            while done < len(buffer):
                count = fh.readinto(buffer[done:])
                if not count:
                    raise EOFError(f"{done} of {len(buffer)} bytes")
                done += count
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise WeightsFileError(f"{path}: {info.filename[:-4]} cannot be read ({exc})") from None


def _header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of one member, from its ``.npy`` header alone."""
    name = info.filename
    if not name.endswith(".npy"):
        raise WeightsFileError(f"{path}: member {name!r} is not an array (.npy)")
    if info.compress_type != zipfile.ZIP_STORED:  # no member may inflate beyond the file's own size
        raise WeightsFileError(f"{path}: member {name!r} is compressed (weights files are written by np.savez)")
    if info.flag_bits & ZIP_UNREADABLE_FLAGS:
        raise WeightsFileError(f"{path}: member {name!r} is encrypted or patched (not a np.savez archive)")
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f".npy format version {version}")
            if fortran and len(shape) > 1:  # np.savez of the network's arrays writes C order
                raise ValueError("Fortran order")
            offset = fh.tell()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, SyntaxError, RuntimeError, NotImplementedError) as exc:
        raise WeightsFileError(f"{path}: member {name!r} has no readable array header ({exc})") from None
    if dtype.hasobject:
        raise WeightsFileError(f"{path}: member {name!r} holds Python objects")
    if offset + math.prod(shape) * dtype.itemsize != info.file_size:
        raise WeightsFileError(f"{path}: member {name!r} says shape {shape} of {dtype}, which its "
                               f"{info.file_size} bytes do not hold")
    return tuple(shape), dtype, offset


def _array(path: Path, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], key: str) -> np.ndarray:
    try:
        with archive.open(members[f"{key}.npy"]) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise WeightsFileError(f"{path}: {key} cannot be read ({exc})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _read_metadata(path: Path, raw: np.ndarray) -> dict[str, Any]:
    try:  # save_model writes strict JSON: NaN or Infinity here was not written by it
        metadata = json.loads(str(raw), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise WeightsFileError(f"{path}: metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise WeightsFileError(f"{path}: metadata is not valid JSON (nested too deeply)") from None
    if not isinstance(metadata, dict):
        raise WeightsFileError(f"{path}: metadata must be a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsFileError(f"{path}: unsupported format_version {version!r} (this code reads {FORMAT_VERSION})")
    if metadata.get("dtype") not in ("float32", "float64"):
        raise WeightsFileError(f"{path}: unsupported dtype {metadata.get('dtype')!r}")
    return metadata
