"""Weights files: bit-for-bit round trips, atomic writes, and clear rejection of bad files."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from model import io as model_io
from model.io import WeightsFileError, load_model, save_model
from model.layers import BatchNorm1d, Dense, Dropout, ReLU
from model.network import Sequential
from tests.bad_weights import FILE_KINDS


@pytest.fixture
def net():
    rng = np.random.default_rng(0)
    network = Sequential([Dense(6, 5, rng=rng), BatchNorm1d(5), ReLU(), Dropout(0.2, rng=rng), Dense(5, 3, rng=rng)])
    network.forward(rng.standard_normal((10, 6)).astype(np.float32))  # move the BN running stats
    return network


@pytest.fixture
def saved(tmp_path, net):
    path = tmp_path / "model.npz"
    save_model(path, net, {"name": "demo", "labels": ["a", "b", "c"]})
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_for_bit(tmp_path, net, dtype):
    net = net.copy(dtype)
    path = save_model(tmp_path / "m.npz", net, {"name": "demo", "metrics": {"acc": 0.5}})
    loaded = load_model(path)
    assert loaded.metadata["name"] == "demo" and loaded.metadata["metrics"] == {"acc": 0.5}
    assert loaded.metadata["architecture"] == net.architecture()
    for name, value in net.state().items():
        other = loaded.network.state()[name]
        assert other.dtype == value.dtype
        assert other.tobytes() == value.tobytes()
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(dtype)
    assert net.predict_proba(x).tobytes() == loaded.network.predict_proba(x).tobytes()
    assert len(loaded.sha256) == 64


def test_no_pickle_in_archive(saved):
    with np.load(saved, allow_pickle=False) as archive:
        for key in archive.files:
            assert archive[key].dtype != object


@pytest.mark.parametrize("case", sorted(FILE_KINDS))
def test_bad_files_are_rejected_with_a_clear_error(saved, case):
    FILE_KINDS[case](saved)
    with pytest.raises(WeightsFileError) as info:
        load_model(saved)
    message = str(info.value)
    assert str(saved) in message and "\n" not in message


def test_corrupted_byte_is_detected(saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("params.0.W.npy")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200  # inside the payload
    data[offset] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError):
        load_model(saved)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsFileError, match="no such file"):
        load_model(tmp_path / "nope.npz")


def test_crash_during_write_leaves_old_file_and_no_temp(saved, net, monkeypatch):
    before = saved.read_bytes()

    def exploding_savez(fh, **arrays):
        fh.write(b"PK half a file")
        raise OSError("disk full")

    monkeypatch.setattr(model_io.np, "savez", exploding_savez)
    with pytest.raises(OSError, match="disk full"):
        save_model(saved, net, {})
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


@pytest.mark.parametrize("case", ["a huge architecture in a tiny file", "a header that lies about its size",
                                  "a compressed member"])
def test_a_small_file_never_makes_the_loader_allocate_what_it_lacks(saved, case):
    """Shapes are checked against the architecture and the members' sizes before any array is read or
    the network built: a 942-byte file once took 767 MB (an 8000 x 8000 layer built, then refused), and
    a 40 MB zero member compressed to 40 kB was inflated before it was found unexpected."""
    import tracemalloc

    FILE_KINDS[case](saved)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsFileError):
            load_model(saved)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / 1e6:.0f} MB"
    assert saved.stat().st_size < 1 << 20


def test_what_the_loader_would_refuse_is_never_written(tmp_path, net):
    """A diverged run: NaN weights, or a NaN in the metadata (its final loss). save_model refuses both with a
    WeightsFileError and leaves the file that was there."""
    path = save_model(tmp_path / "model.npz", net)
    before = path.read_bytes()
    with pytest.raises(WeightsFileError, match="not strict JSON"):
        save_model(path, net, {"metrics": {"final_loss": float("nan")}})
    net.layers[0].params["W"][0, 0] = np.inf
    with pytest.raises(WeightsFileError, match="NaN or infinite"):
        save_model(path, net)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_save_writes_only_what_load_reads(tmp_path, net):
    """save_model wrote three files load_model refused: a transposed weight (saved in Fortran order), a
    layer of another dtype than the network's, and metadata over the loader's bound."""
    net.layers[0].params["W"] = np.asfortranarray(net.layers[0].params["W"])  # e.g. torch's weight.numpy().T
    path = save_model(tmp_path / "model.npz", net)
    assert np.array_equal(load_model(path).network.layers[0].params["W"], net.layers[0].params["W"])
    before = path.read_bytes()
    mixed = Sequential([Dense(6, 5, dtype=np.float64), BatchNorm1d(5)])
    assert mixed.layers[1].params["gamma"].dtype == np.float32
    with pytest.raises(WeightsFileError, match=r"params\.1\.gamma is float32, the network float64: not written"):
        save_model(path, mixed)
    with pytest.raises(WeightsFileError, match=r"metadata takes .* bytes as stored, over .*: not written"):
        save_model(path, net, {"notes": "x" * (model_io.MAX_METADATA_BYTES // 4)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]
