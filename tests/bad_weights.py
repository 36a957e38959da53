"""Every kind of bad weights file the tests feed the loader, the registry and a running server: one home.

``FILE_KINDS`` break the file format, so :func:`model.io.load_model` must refuse them; ``SERVING_KINDS``
are valid files whose metadata disagrees with the network, which the registry must refuse before it
serves them. :func:`make_bad` writes a kind from a good file.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rewrite(path: Path, mutate: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Re-save ``path`` after ``mutate(arrays)`` changed its dict of arrays."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    mutate(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def set_meta(**changes) -> Callable[[dict[str, np.ndarray]], None]:
    def mutate(arrays):
        meta = json.loads(str(arrays["__metadata__"]))
        meta.update({k: (v(meta) if callable(v) else v) for k, v in changes.items()})
        arrays["__metadata__"] = np.array(json.dumps(meta))
    return mutate


def last_bias(arrays: dict[str, np.ndarray]) -> str:
    return sorted(k for k in arrays if k.startswith("params.") and k.endswith(".b"))[-1]


def in_place(mutate: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    return lambda path: rewrite(path, mutate)


def add_member(name: str, data: bytes, compress: int = zipfile.ZIP_STORED) -> Callable[[Path], None]:
    """Add a raw member to the archive (np.savez cannot write these)."""
    def mutate(path: Path) -> None:
        with zipfile.ZipFile(path, "a", compression=compress) as archive:
            archive.writestr(name, data)
    return mutate


def replace_member(name: str, data: bytes) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            kept = {i.filename: archive.read(i) for i in archive.infolist() if i.filename != name}
        with zipfile.ZipFile(path, "w") as archive:
            for other, content in kept.items():
                archive.writestr(other, content)
            archive.writestr(name, data)
    return mutate


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy header that declares ``shape`` (no data follows)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": shape})
    return b"\x93NUMPY\x01\x00"[:0] + out.getvalue()


def encrypted(data: bytes) -> bytes:
    """The archive with the encryption flag set on every member (zipfile then wants a password)."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local headers, central directory
        at = out.find(signature)
        while at >= 0:
            out[at + offset] |= 0x1
            at = out.find(signature, at + 4)
    return bytes(out)


def zip_version(data: bytes, version: int) -> bytes:
    """The archive with every central directory record's "version needed to extract" set to ``version``
    (10 = 1.0; zipfile raises NotImplementedError above its 63)."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 6:at + 8] = version.to_bytes(2, "little")
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def huge_architecture(arrays: dict[str, np.ndarray]) -> None:
    """A tiny file whose architecture is one 8000 x 8000 layer (512 MB of float64 once built)."""
    meta = json.loads(str(arrays["__metadata__"]))
    meta["architecture"] = {"layers": [{"type": "dense", "in_features": 8000, "out_features": 8000, "init": "he"}],
                            "head": "softmax"}
    for key in [k for k in arrays if k != "__metadata__"]:
        del arrays[key]
    arrays["__metadata__"] = np.array(json.dumps(meta))


def set_layer(index: int, **changes) -> Callable[[dict[str, np.ndarray]], None]:
    def mutate(arrays):
        meta = json.loads(str(arrays["__metadata__"]))
        meta["architecture"]["layers"][index].update(changes)
        arrays["__metadata__"] = np.array(json.dumps(meta))  # NaN is written as NaN: not strict JSON
    return mutate


FILE_KINDS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "not a zip": lambda p: p.write_bytes(b"hello, I am not weights"),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "empty": lambda p: p.write_bytes(b""),
    "missing array": in_place(lambda a: a.pop("params.0.W")),
    "extra array": in_place(lambda a: a.update(extra=np.zeros(3))),
    "wrong shape": in_place(lambda a: a.update({"params.0.W": a["params.0.W"][:, :-1]})),
    "wrong dtype": in_place(lambda a: a.update({"params.0.W": a["params.0.W"].astype(np.float64)})),
    "nan weights": in_place(lambda a: a[last_bias(a)].__setitem__(0, np.nan)),
    "no metadata": in_place(lambda a: a.pop("__metadata__")),
    "metadata not json": in_place(lambda a: a.update(__metadata__=np.array("{oops"))),
    "metadata not a string": in_place(lambda a: a.update(__metadata__=np.zeros(2))),
    "metadata json but not an object": in_place(lambda a: a.update(__metadata__=np.array("[1, 2]"))),
    "future format": in_place(set_meta(format_version=99)),
    "unknown layer": in_place(set_meta(architecture={"layers": [{"type": "conv9d"}]})),
    "bad dtype": in_place(set_meta(dtype="int8")),
    "pickled object": lambda p: np.savez(p, __metadata__=np.array([{"evil": 1}], dtype=object)),
    "a pickled object array": in_place(lambda a: a.update({"params.0.W": np.array([{"pickle": "me"}], dtype=object)})),
    # hostile archives: each once escaped as another exception, or made the loader allocate what the file lacks
    "a bare .npy, not an archive": lambda p: np.save(open(p, "wb"), np.zeros(3)),  # noqa: SIM115
    "metadata stored raw, not as .npy": replace_member("__metadata__.npy", b'{"format_version": 1}'),
    "a member that is no array": add_member("notes.txt", b"hello"),
    "metadata nested too deeply": in_place(lambda a: a.update(__metadata__=np.array("[" * 200_000))),
    "metadata with NaN": in_place(set_meta(metrics={"loss": float("nan")})),
    "a NaN layer setting": in_place(set_layer(-1, negative_slope=float("nan"))),
    "a layer setting out of range": in_place(set_layer(1, eps=-1.0)),  # a BatchNorm1d in tests/test_io.py's net
    "a huge architecture in a tiny file": in_place(huge_architecture),
    "a header that lies about its size": replace_member("params.0.W.npy", npy_header((2**40,))),
    "a layer setting no float can hold": in_place(set_layer(2, type="leaky_relu", negative_slope=10**400)),
    "an encrypted member": lambda p: p.write_bytes(encrypted(p.read_bytes())),
    "a zip version above zipfile's": lambda p: p.write_bytes(zip_version(p.read_bytes(), 64)),  # NotImplementedError
    "a compressed member": add_member("extra.npy", npy_header((10_000_000,)) + bytes(40_000_000), zipfile.ZIP_DEFLATED),
}

SERVING_KINDS: dict[str, Callable[[Path], None]] = {
    "labels that do not match the outputs": in_place(set_meta(labels=lambda m: [*m["labels"], "one too many"])),
    "labels that are not strings": in_place(set_meta(labels=lambda m: list(range(len(m["labels"]))))),
    "an input shape that lies": in_place(set_meta(input_shape=[3])),
    # each of these once loaded as ready, and then every request to it was a 500
    "an input range that is no range": in_place(set_meta(preprocessing={"input_range": [0]})),
    "an input range upside down": in_place(set_meta(preprocessing={"input_range": [1, 0]})),
    "preprocessing that is no object": in_place(set_meta(preprocessing=[0, 1])),
}

ALL_KINDS = {**FILE_KINDS, **SERVING_KINDS}


def make_bad(kind: str, good: Path, target: Path) -> None:
    """Write a weights file of ``kind`` at ``target``, made from the good file ``good``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(good, target)
    ALL_KINDS[kind](target)
