"""The forward pass's cost by batch size, measured per loaded model version: when merging pays.

OpenBLAS (and other BLAS) pick different kernels by the number of rows: on the machine of the
serving benchmark one MNIST sample took 0.28 ms, two 0.88 ms (gemm is slower per row than gemv
below ~8 rows), eight 1.19 ms. So whether merging a few waiting requests into one forward pass
pays depends on the model, the BLAS and the CPU, and is measured where it runs instead of guessed.
No gevent or Flask here: the batcher (``service/batching/gevent_batcher.py``) asks this table.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

SIZES = (1, 2, 4, 8, 16, 32, 64)  # rows measured; a request larger than the last goes straight to the model


@dataclass(frozen=True)
class CostTable:
    """Seconds of one forward pass by rows, ``seconds[i]`` for ``sizes[i]`` (each the best of a few)."""

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    @classmethod
    def measure(cls, network, features: int, dtype: np.dtype, sizes: tuple[int, ...] = SIZES,
                rounds: int = 3) -> CostTable:
        """Time ``network.predict_proba`` on zero batches of each size (the best of ``rounds``).

        Zeros are valid input for every model here and cost what real rows cost (dense products
        do not skip zeros). About 40 ms for the shipped MNIST model, once per version and worker.
        """
        x = np.zeros((max(sizes), features), dtype=dtype)
        network.predict_proba(x[:1])  # first touch of the weights
        best = []
        for n in sizes:
            batch = x[:n]
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                network.predict_proba(batch)
                times.append(time.perf_counter() - start)
            best.append(min(times))
        # the cost of more rows is never less than of fewer (timer noise on a tiny model)
        return cls(tuple(sizes), tuple(np.maximum.accumulate(best).tolist()))

    @property
    def merge_limit(self) -> int:
        """The largest request that may join a batch; larger ones run alone, at once."""
        return self.sizes[-1]

    def cost(self, rows: int) -> float:
        """Estimated seconds for ``rows``: linear between the measured sizes, per row beyond the last."""
        sizes, seconds = self.sizes, self.seconds
        if rows >= sizes[-1]:
            return seconds[-1] * rows / sizes[-1]
        i = bisect_left(sizes, rows)
        if sizes[i] == rows or i == 0:
            return seconds[i]
        lo, hi = sizes[i - 1], sizes[i]
        return seconds[i - 1] + (seconds[i] - seconds[i - 1]) * (rows - lo) / (hi - lo)

    def merge_pays(self, requests: list[int]) -> bool:
        """Whether one pass over all ``requests`` (their row counts) is cheaper than one pass each."""
        return len(requests) > 1 and self.cost(sum(requests)) < sum(self.cost(n) for n in requests)

    def as_dict(self) -> dict[str, float]:
        return {str(n): round(s * 1e6, 1) for n, s in zip(self.sizes, self.seconds, strict=True)}
