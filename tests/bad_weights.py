"""Every kind of bad weights file the tests feed the loader, the registry and a running server: one home.

``FILE_KINDS`` break the file format, so :func:`model.io.load_model` must refuse them; ``SERVING_KINDS``
are valid files whose metadata disagrees with the network, which the registry must refuse before it
serves them. :func:`make_bad` writes a kind from a good file.
"""

from __future__ import annotations

import json
import shutil
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
}

SERVING_KINDS: dict[str, Callable[[Path], None]] = {
    "labels that do not match the outputs": in_place(set_meta(labels=lambda m: [*m["labels"], "one too many"])),
    "labels that are not strings": in_place(set_meta(labels=lambda m: list(range(len(m["labels"]))))),
    "an input shape that lies": in_place(set_meta(input_shape=[3])),
}

ALL_KINDS = {**FILE_KINDS, **SERVING_KINDS}


def make_bad(kind: str, good: Path, target: Path) -> None:
    """Write a weights file of ``kind`` at ``target``, made from the good file ``good``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(good, target)
    ALL_KINDS[kind](target)
