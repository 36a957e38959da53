"""A sequential network: layers applied in order, then an output head.

The network's ``forward`` returns *logits* (the last layer's output). The ``head`` names the
function that turns logits into what a user sees (``softmax`` probabilities, ``sigmoid``
probabilities, or ``identity``); training pairs it with the fused loss of the same name, so the
probabilities are never differentiated through separately.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from model.heads import HEADS, head
from model.layers import ACTIVATIONS, Dense, Dropout, Layer, layer_from_spec, layer_shapes


class Sequential:
    """Chain of layers.

    Parameters
    ----------
    layers : iterable of Layer
    head : {"softmax", "sigmoid", "identity"}
        Output function applied by :meth:`predict_proba`.
    """

    def __init__(self, layers: Iterable[Layer], head: str = "softmax") -> None:
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; known: {sorted(HEADS)}")
        self.layers = list(layers)
        self.head = head

    # -- the two passes -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """x : (batch, in_features) -> logits : (batch, out_features)."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate d(loss)/d(logits); fills every layer's ``grads`` and returns d/dx.

        With ``input_grad=False`` (training) the first layer skips its input gradient, which
        nothing uses: for MNIST that is the largest matmul of the backward pass.
        """
        for layer in reversed(self.layers[1:]):
            grad_out = layer.backward(grad_out)
        if not input_grad:
            self.layers[0].backward_params(grad_out)
            return None
        return self.layers[0].backward(grad_out)

    def backward_input(self, grad_out: np.ndarray) -> np.ndarray:
        """d/dx only, from d(output)/d(logits) after a :meth:`forward` (explanations): each layer's
        :meth:`Layer.backward_input`, so no parameter gradient is computed. (batch, in_features)."""
        for layer in reversed(self.layers):
            grad_out = layer.backward_input(grad_out)
        return grad_out

    def infer(self, x: np.ndarray) -> np.ndarray:
        """x : (batch, in_features) -> logits in evaluation mode, whatever the current mode.

        Stores nothing in the layers, so concurrent callers may share one network (the server
        does: its threads and greenlets run requests on the same weights without a lock).
        """
        for layer in self.layers:
            x = layer.infer(x)
        return x

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Inference: :meth:`infer`, then the head."""
        return head(self.head).activation(self.infer(x))

    # -- modes ------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        return any(layer.training for layer in self.layers)

    def train(self, mode: bool = True) -> Sequential:
        for layer in self.layers:
            layer.training = mode
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    # -- parameters -------------------------------------------------------------------------
    def named_params(self) -> dict[str, np.ndarray]:
        """Trainable arrays by stable name ``"<layer index>.<key>"`` (the arrays themselves)."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    def named_grads(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}

    def named_buffers(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.buffers.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Everything that is saved: parameters and buffers."""
        return {**self.named_params(), **self.named_buffers()}

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.named_params().values()))

    @property
    def dtype(self) -> np.dtype:
        for layer in self.layers:
            for value in layer.params.values():
                return value.dtype
        return np.dtype(np.float32)

    def astype(self, dtype: np.dtype) -> Sequential:
        for layer in self.layers:
            layer.astype(dtype)
        return self

    # -- description and copies -------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        return {"layers": [layer.spec() for layer in self.layers], "head": self.head}

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any], rng: np.random.Generator | None = None,
                          dtype: np.dtype = np.float32) -> Sequential:
        """Build a fresh (randomly initialised) network from :meth:`architecture`'s output."""
        try:
            specs = architecture["layers"]
            head = architecture.get("head", "softmax")
        except (TypeError, KeyError):
            raise ValueError("architecture must be a mapping with a 'layers' list") from None
        if not isinstance(specs, list) or not specs:
            raise ValueError("architecture 'layers' must be a non-empty list")
        rng = rng if rng is not None else np.random.default_rng(0)
        return cls([layer_from_spec(spec, rng=rng, dtype=dtype) for spec in specs], head=head)

    @staticmethod
    def array_shapes(architecture: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shapes of every array a network of ``architecture`` holds, as ``state()`` names them
        (``params.<layer>.<key>``, ``buffers.<layer>.<key>``), without building it."""
        specs = architecture.get("layers") if isinstance(architecture, dict) else None
        if not isinstance(specs, list) or not specs:
            raise ValueError("architecture must be a mapping with a non-empty 'layers' list")
        out: dict[str, tuple[int, ...]] = {}
        for i, spec in enumerate(specs):
            params, buffers = layer_shapes(spec)
            out.update({f"params.{i}.{k}": shape for k, shape in params.items()})
            out.update({f"buffers.{i}.{k}": shape for k, shape in buffers.items()})
        return out

    def copy(self, dtype: np.dtype | None = None) -> Sequential:
        """Deep copy (optionally converted to ``dtype``); the copy starts in evaluation mode.

        The layer objects themselves are cloned (not rebuilt from :meth:`architecture`), so a
        subclass keeps its own forward and backward, and forward caches are not carried over.
        """
        dtype = np.dtype(dtype) if dtype is not None else self.dtype
        layers = []
        for layer in self.layers:
            clone = copy.copy(layer)
            for attr in [a for a in vars(clone) if a.startswith("_")]:
                setattr(clone, attr, None)
            if isinstance(getattr(clone, "rng", None), np.random.Generator):
                clone.rng = copy.deepcopy(layer.rng)
            clone.params = {k: np.array(v, dtype=dtype, copy=True) for k, v in layer.params.items()}
            clone.buffers = {k: np.array(v, dtype=dtype, copy=True) for k, v in layer.buffers.items()}
            clone.grads = {k: np.zeros_like(v) for k, v in clone.params.items()}
            layers.append(clone)
        return Sequential(layers, head=self.head).eval()

    @property
    def output_features(self) -> int | None:
        """Width of the network's output (the last layer that sets one)."""
        for layer in reversed(self.layers):
            for attr in ("out_features", "num_features"):
                if hasattr(layer, attr):
                    return getattr(layer, attr)
        return None

    @property
    def input_features(self) -> int | None:
        for layer in self.layers:
            if hasattr(layer, "in_features"):
                return layer.in_features
            if hasattr(layer, "num_features"):
                return layer.num_features
        return None

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], head={self.head!r})"


def mlp(sizes: list[int], *, activation: str = "relu", init: str = "he", dropout: float = 0.0,
        head: str = "softmax", rng: np.random.Generator | None = None, dtype: np.dtype = np.float32) -> Sequential:
    """Multi-layer perceptron ``sizes[0] -> ... -> sizes[-1]``: Dense + activation (+ dropout) per hidden layer.

    ``mlp([784, 256, 256, 10])`` is two hidden ReLU layers of 256 and a 10-way softmax head.
    """
    rng = rng if rng is not None else np.random.default_rng()
    layers: list[Layer] = []
    for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
        layers += [Dense(fan_in, fan_out, init=init, rng=rng, dtype=dtype), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(Dropout(dropout, rng=rng))
    layers.append(Dense(sizes[-2], sizes[-1], init=init, rng=rng, dtype=dtype))
    return Sequential(layers, head=head)
