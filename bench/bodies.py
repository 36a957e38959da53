"""The request bodies the serving benchmarks send, written once per run from the real MNIST test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.datasets import mnist


def bodies(tmp: Path, data_dir: Path | None) -> dict[str, tuple[Path, int, int | None]]:
    """Write every body the serving benchmarks send into ``tmp``.

    Parameters
    ----------
    tmp : Path
        A directory for the files.
    data_dir : Path or None
        The MNIST IDX files (None: the cache, downloading them).

    Returns
    -------
    dict
        name -> (file, images in it, the JSON header's length for a V2 body with binary tensors or
        None). Names: ``mnist1``, ``mnist32``, ``mnist256`` and ``xor1`` (``/predict``); ``gradcheck``
        (16 images with labels); ``explain`` (one image, integrated gradients); ``v1mnist1`` and
        ``v1mnist256`` (V1 ``:predict``); ``v2jsonmnist1``, ``v2json256`` and ``v2bin256`` (V2 ``infer``).
    """
    ds = mnist(data_dir, download=data_dir is None)
    x, y = ds.eval_sets["test"]
    out = {}

    def write(name: str, doc: dict, images: int, tail: bytes = b"") -> None:
        path = tmp / f"{name}.body"
        head = json.dumps(doc).encode()
        path.write_bytes(head + tail)
        out[name] = (path, images, len(head) if tail else None)

    for n in (1, 32, 256):
        write(f"mnist{n}", {"model": "mnist", "inputs": [[float(v) for v in row] for row in x[:n]]}, n)
    write("xor1", {"model": "xor", "inputs": [[0, 1]]}, 1)
    write("gradcheck", {"model": "mnist", "inputs": [[float(v) for v in row] for row in x[:16]],
                        "labels": [str(v) for v in y[:16]]}, 16)
    write("explain", {"model": "mnist", "inputs": [[float(v) for v in x[0]]], "method": "integrated_gradients"}, 1)
    one = [float(v) for v in np.asarray(x[0]).ravel()]
    write("v1mnist1", {"instances": [one]}, 1)
    write("v1mnist256", {"instances": [[float(v) for v in row] for row in x[:256]]}, 256)
    write("v2jsonmnist1", {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": one}]}, 1)
    batch = np.ascontiguousarray(x[:256], dtype="<f4")
    tensor = {"name": "input", "shape": [256, 784], "datatype": "FP32"}
    binary_out = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    write("v2json256", {"inputs": [{**tensor, "data": [float(v) for v in batch.ravel()]}]}, 256)
    write("v2bin256", {"inputs": [{**tensor, "parameters": {"binary_data_size": batch.nbytes}}],
                       "outputs": binary_out}, 256, batch.tobytes())
    return out


def images(data: dict, name: str = "v2bin256") -> np.ndarray:
    """The images of a V2 binary body from :func:`bodies`, as a float32 array (n, 784)."""
    path, n, header = data[name]
    return np.frombuffer(path.read_bytes()[header:], dtype="<f4").reshape(n, -1)
