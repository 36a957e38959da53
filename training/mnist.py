"""MNIST from the standard IDX files: parsing, checksums, and a resumable download from mirrors.

The SHA-256 sums are of the *decompressed* IDX payloads, so a gzip file re-compressed by any tool
verifies the same as the canonical download.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from training.progress import progress_bar

log = logging.getLogger(__name__)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# an empty XDG_CACHE_HOME counts as unset, as the XDG spec says
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numpy-nets" / "mnist"


class DatasetError(RuntimeError):
    """The data is missing, corrupted, or could not be fetched."""


def parse_idx(payload: bytes, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX payload (already decompressed): magic ``00 00 <type> <ndim>``, big-endian dims."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise DatasetError("not an IDX file: bad magic number")
    type_code, ndim = payload[2], payload[3]
    if type_code not in IDX_DTYPES:
        raise DatasetError(f"IDX type code 0x{type_code:02x} is not defined")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DatasetError(f"IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DatasetError("IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize  # Python's integers: np.prod wraps around at 2**63
    if len(payload) - header != expected:
        raise DatasetError(f"IDX payload has {len(payload) - header} bytes, header {dims} says {expected}")
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_payload(path: Path) -> bytes:
    """Bytes of an IDX file, decompressed if it is gzip (judged by its magic bytes, not its name)."""
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        if gzipped:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:  # zlib.error: a damaged deflate stream
        raise DatasetError(f"{path}: cannot read ({exc})") from None


def verify(name: str, payload: bytes) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    if digest != SHA256[name]:
        raise DatasetError(f"{name}: SHA-256 {digest} does not match the published {SHA256[name]}")


def find_file(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
               mirrors: tuple[str, ...] = MIRRORS, progress: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{"train": (images, labels), "test": (images, labels)}`` with uint8 images (n, 28, 28).

    Files are looked for in ``data_dir`` (else ``$MNIST_DIR``, else the user cache); missing ones
    are downloaded there when ``download`` is true. Every payload is checked against its SHA-256.
    """
    data_dir = Path(data_dir or os.environ.get("MNIST_DIR") or DEFAULT_CACHE)
    arrays = {}
    for key, name in FILES.items():
        path = find_file(data_dir, name)
        if path is None:
            if not download:
                raise DatasetError(f"{name}[.gz] not found in {data_dir} (and downloading is off)")
            path = download_file(name, data_dir, mirrors=mirrors, progress=progress)
        payload = read_payload(path)
        verify(name, payload)
        arrays[key] = parse_idx(payload, expected_ndim=3 if key.endswith("images") else 1)
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DatasetError(f"{split}: image and label counts differ")
    return {split: (arrays[f"{split}_images"], arrays[f"{split}_labels"]) for split in ("train", "test")}


def download_file(name: str, data_dir: Path, *, mirrors: tuple[str, ...] = MIRRORS, progress: bool = False,
                  timeout: float = 30.0) -> Path:
    """Fetch ``<name>.gz`` from the first mirror that serves a copy with the right checksum.

    The download goes to ``.<name>.gz.part`` and resumes from it (HTTP Range) after an
    interruption; only a verified file is renamed into place.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / f"{name}.gz"
    part = data_dir / f".{name}.gz.part"
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        try:
            _fetch(url, part, progress=progress, timeout=timeout)
            verify(name, read_payload(part))
        except (urllib.error.URLError, http.client.HTTPException, OSError, DatasetError) as exc:
            errors.append(f"{url}: {exc}")
            log.warning("mirror failed: %s: %s", url, exc)
            part.unlink(missing_ok=True)
            continue
        os.replace(part, target)
        log.info("downloaded %s from %s", target.name, mirror)
        return target
    raise DatasetError(f"could not download {name}: " + "; ".join(errors))


def _fetch(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = offset and response.status == 206
        total = response.length
        mode = "ab" if resumed else "wb"
        bar = progress_bar(progress, total=(total or 0) + (offset if resumed else 0),
                           initial=offset if resumed else 0, unit="B", unit_scale=True, desc=part.name, leave=False)
        with open(part, mode) as fh:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                fh.write(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        bar.close()


__all__ = ["DatasetError", "download_file", "load_mnist", "parse_idx"]
