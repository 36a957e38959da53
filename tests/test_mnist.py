"""The IDX loader on the real files and on damaged ones, and the download path against local servers."""

from __future__ import annotations

import gzip
import http.server
import shutil
import socket
import struct
import threading
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from training.mnist import FILES, DatasetError, download_file, load_mnist, parse_idx, read_payload


def test_real_files_load_and_verify(mnist_dir):
    data = load_mnist(mnist_dir, download=False)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == np.uint8
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)
    assert set(np.unique(ytr)) == set(range(10))
    assert ytr[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first labels


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_synthetic():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a), expected_ndim=3), a)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "type code"),
    (lambda b: b[:-1], "payload has"),
    (lambda b: b + b"\x00", "payload has"),
    (lambda b: b[:6], "truncated"),
])
def test_parse_idx_rejects_damage(damage, match):
    good = idx_bytes(np.zeros((2, 3, 4)))
    with pytest.raises(DatasetError, match=match):
        parse_idx(damage(good))


def test_parse_idx_rejects_wrong_rank():
    with pytest.raises(DatasetError, match="dimensions"):
        parse_idx(idx_bytes(np.zeros(5)), expected_ndim=3)


def copy_mnist(src: Path, dst: Path) -> None:
    for name in FILES.values():
        shutil.copy(src / f"{name}.gz", dst / f"{name}.gz")


def test_corrupted_gzip_is_rejected(tmp_path, mnist_dir):
    copy_mnist(mnist_dir, tmp_path)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(DatasetError):
        load_mnist(tmp_path, download=False)


def test_a_damaged_deflate_stream_is_a_dataset_error(tmp_path, mnist_dir):
    """A flipped byte inside the compressed data raises zlib.error, which is no OSError: it once escaped as
    a traceback from the loader (exit 1), and from a download, where it kept the next mirror from being tried."""
    copy_mnist(mnist_dir, tmp_path)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    for i in range(40, 60):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="cannot read"):
        load_mnist(tmp_path, download=False)


def test_a_header_whose_size_overflows_is_refused():
    """Dimensions whose product passes 2**63 must not wrap around to a size the payload matches."""
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    with pytest.raises(DatasetError, match="payload has"):
        parse_idx(header)


def test_checksum_mismatch_is_rejected(tmp_path, mnist_dir):
    copy_mnist(mnist_dir, tmp_path)
    payload = bytearray(read_payload(tmp_path / "t10k-labels-idx1-ubyte.gz"))
    payload[100] = (payload[100] + 1) % 10  # still a valid IDX file, but not MNIST's
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(payload))
    with pytest.raises(DatasetError, match="SHA-256"):
        load_mnist(tmp_path, download=False)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_mnist(tmp_path, download=False)


# -- the download path ------------------------------------------------------------------------
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (what real mirrors do), recording the Range headers."""

    ranges: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        if header:
            type(self).ranges.append(header)
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def serve():
    servers = []

    def start(directory: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_skips_dead_and_corrupt_mirrors(tmp_path, mnist_dir, serve):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    copy_mnist(mnist_dir, good)
    for name in FILES.values():  # a mirror serving well-formed gzip of the wrong bytes
        (bad / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    mirrors = (closed_port_url(), serve(bad), serve(good))
    cache = tmp_path / "cache"
    data = load_mnist(cache, mirrors=mirrors)
    assert data["test"][0].shape == (10000, 28, 28)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in FILES.values())


def test_download_resumes_a_partial_file(tmp_path, mnist_dir, serve):
    good = tmp_path / "good"
    good.mkdir()
    copy_mnist(mnist_dir, good)
    name = "t10k-labels-idx1-ubyte"
    full = (good / f"{name}.gz").read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f".{name}.gz.part").write_bytes(full[:1000])  # an interrupted earlier download
    RangeHandler.ranges = []
    path = download_file(name, cache, mirrors=(serve(good),))
    assert path.read_bytes() == full
    assert RangeHandler.ranges == ["bytes=1000-"]
    assert not (cache / f".{name}.gz.part").exists()


def test_all_mirrors_failing_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="could not download"):
        download_file("t10k-labels-idx1-ubyte", tmp_path, mirrors=(closed_port_url(),))
    assert list(tmp_path.iterdir()) == []
