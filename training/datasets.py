"""The three datasets: XOR, the 5x5 digit glyphs (with augmentation and a noisy held-out set), MNIST."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from training.mnist import load_mnist


@dataclass
class Dataset:
    """Float32 rows ``x`` (n, features), integer class indices ``y`` (n,), and what describes them."""

    name: str
    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    input_shape: list[int]
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # watched every epoch
    test_sets: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # touched once, at the end
    checksums: dict[str, str] = field(default_factory=dict)


def xor() -> Dataset:
    """The four XOR points with labels 0, 1, 1, 0."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return Dataset("xor", x, y, labels=["0", "1"], input_shape=[2])


# --- 5x5 digits ---------------------------------------------------------------------------------

def digit_glyphs() -> tuple[np.ndarray, list[str], str]:
    """The five 5x5 training glyphs as float32 (5, 25), their labels, and the file's SHA-256."""
    raw = resources.files("training").joinpath("data/digits5x5.json").read_bytes()
    doc = json.loads(raw)
    images = np.asarray(doc["images"], dtype=np.float32).reshape(len(doc["images"]), 25)
    return images, list(doc["labels"]), hashlib.sha256(raw).hexdigest()


def flip_pixels(images: np.ndarray, flips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copy of binary ``images`` (n, 25) where row i has ``flips[i]`` distinct pixels inverted."""
    out = images.copy()
    for i, k in enumerate(flips):
        idx = rng.choice(out.shape[1], size=int(k), replace=False)
        out[i, idx] = 1.0 - out[i, idx]
    return out


def shift_glyphs(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each 5x5 glyph by up to one pixel in each direction where no ink falls off the edge."""
    grids = images.reshape(-1, 5, 5)
    out = grids.copy()
    for i, g in enumerate(grids):
        dy, dx = rng.integers(-1, 2, size=2)
        shifted = np.roll(g, (dy, dx), axis=(0, 1))
        if shifted.sum() == g.sum() and _no_wrap(g, dy, dx):
            out[i] = shifted
    return out.reshape(len(images), 25)


def _no_wrap(g: np.ndarray, dy: int, dx: int) -> bool:
    rows = {1: g[-1], -1: g[0]}.get(dy)
    cols = {1: g[:, -1], -1: g[:, 0]}.get(dx)
    return (rows is None or not rows.any()) and (cols is None or not cols.any())


def glyph_variants(glyphs: np.ndarray, max_flips: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every copy of each glyph with 1..max_flips distinct pixels inverted, in a fixed order: rows
    (n, 25) and their glyph indices (n,). A row that is also a variant (or the clean form) of
    another glyph has no one right label and is left out: "2" and "3" differ in only 3 pixels."""
    from itertools import combinations

    masks = [np.isin(np.arange(glyphs.shape[1]), idx)
             for k in range(1, max_flips + 1) for idx in combinations(range(glyphs.shape[1]), k)]
    flips = np.array(masks, dtype=np.float32)
    x = np.abs(glyphs[:, None, :] - flips[None, :, :]).reshape(-1, glyphs.shape[1])
    y = np.repeat(np.arange(len(glyphs)), len(flips))
    seen: dict[bytes, set[int]] = {}
    for row, label in zip(np.concatenate([x, glyphs]), np.concatenate([y, np.arange(len(glyphs))]), strict=True):
        seen.setdefault(row.tobytes(), set()).add(int(label))
    unambiguous = np.array([len(seen[row.tobytes()]) == 1 for row in x])
    return x[unambiguous], y[unambiguous]


def noisy_digits(seed: int, fraction: float = 0.5, max_flips: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Held-out set: a fixed random ``fraction`` of each glyph's 1..max_flips-flip variants (all
    distinct), chosen with ``seed``; :func:`digits` never trains on any of them."""
    glyphs, _, _ = digit_glyphs()
    x, y = glyph_variants(glyphs, max_flips)
    rng = np.random.default_rng(seed)
    keep = []
    for g in range(len(glyphs)):
        rows = np.flatnonzero(y == g)
        keep.append(np.sort(rng.permutation(rows)[:round(fraction * len(rows))]))
    keep = np.concatenate(keep)
    return x[keep], y[keep]


def digits(samples_per_class: int = 400, seed: int = 0, heldout_seed: int = 12345) -> Dataset:
    """Augmented 5x5 digits: the clean glyphs plus copies with small shifts and 0-2 flipped pixels.

    ``eval_sets`` holds the clean glyphs and the noisy held-out set (:func:`noisy_digits`: half of
    each glyph's unambiguous one- and two-pixel variants, drawn with ``heldout_seed``). Disjoint by
    construction: a training copy that equals a held-out row is drawn again.
    """
    glyphs, labels, checksum = digit_glyphs()
    noisy_x, noisy_y = noisy_digits(heldout_seed)
    held_out = {row.tobytes() for row in noisy_x}
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(glyphs)), samples_per_class)
    x = np.empty((len(y), glyphs.shape[1]), dtype=np.float32)
    todo = np.arange(len(y))
    while len(todo):
        drawn = shift_glyphs(glyphs[y[todo]], rng)
        x[todo] = flip_pixels(drawn, rng.integers(0, 3, size=len(todo)), rng)
        todo = todo[[x[i].tobytes() in held_out for i in todo]]
    x = np.concatenate([glyphs, x]).astype(np.float32)
    y = np.concatenate([np.arange(len(glyphs)), y])
    return Dataset("digits", x, y, labels=labels, input_shape=[5, 5],
                   eval_sets={"glyphs": (glyphs, np.arange(len(glyphs))), "noisy": (noisy_x, noisy_y)},
                   checksums={"digits5x5.json": checksum})


# --- MNIST --------------------------------------------------------------------------------------

def mnist(data_dir: str | Path | None = None, *, download: bool = True, progress: bool = False,
          validation: int = 0) -> Dataset:
    """MNIST as float32 rows in [0, 1] (pixel / 255).

    With ``validation=0``, ``eval_sets["test"]`` is the 10k test set (as the classic experiments
    watched it). With ``validation=v``, the last ``v`` training images become ``eval_sets["validation"]``,
    for watching each epoch and choosing settings, and the test set moves to ``test_sets["test"]``,
    evaluated once, on the finished model.
    """
    from training.mnist import SHA256

    splits = load_mnist(data_dir, download=download, progress=progress)
    (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
    x, y = to_rows(xtr), ytr.astype(np.int64)
    test = (to_rows(xte), yte.astype(np.int64))
    common = {"labels": [str(d) for d in range(10)], "input_shape": [28, 28], "checksums": dict(SHA256)}
    if not validation:
        return Dataset("mnist", x, y, eval_sets={"test": test}, **common)
    if not 0 < validation < len(x):
        raise ValueError(f"validation must be between 1 and {len(x) - 1} images, got {validation}")
    cut = len(x) - validation
    return Dataset("mnist", x[:cut], y[:cut], eval_sets={"validation": (x[cut:], y[cut:])}, test_sets={"test": test},
                   **common)


def to_rows(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, h, w) -> contiguous float32 rows (n, h*w) scaled to [0, 1]."""
    return np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.float32) / np.float32(255.0)
