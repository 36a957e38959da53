"""The suite's one float-comparison policy (docs/contributing.md, "Floats", states it).

Exact equality only where it holds by construction: the same inputs through the same shapes and the
same kernel (a save/load round trip, ``infer`` against an eval-mode ``forward`` on the same batch, two
runs of the same code on the same machine).

Everywhere else a sample's float32 answer may differ in its last digits, and these tolerances say by
how much. OpenBLAS picks a kernel by the CPU it runs on (SkylakeX on an Intel Xeon, Haswell on an AMD
EPYC, whatever ``OPENBLAS_CORETYPE`` forces) and by the problem's shape (one row: gemv; several: gemm,
which sums in blocks of another size), so the same sample alone and inside a batch is summed in another
order. A float32 dot product of ``n`` terms then differs by about ``sqrt(n) * eps * |z|`` (eps = 1.2e-7):
for the shipped MNIST network's 1024-term products and logits up to ~30, a few 1e-5 at the very worst.
A softmax output's *relative* error equals its logits' *absolute* error to first order, so:

* ``PROBABILITY_RTOL = 1e-4`` (measured worst on the three shipped models over batch sizes 1-256, AMD
  EPYC, Haswell kernels: 1.5e-5 relative, on a probability of ~1e-6), and
* ``PROBABILITY_ATOL = 1e-6`` for probabilities near 0 (measured worst 6e-7 absolute; float32's spacing
  near 1 is 6e-8).

Float64 gradients (the library's backward passes against PyTorch or central differences) have their own,
much tighter, tolerances in the tests that compare them.
"""

from __future__ import annotations

import numpy as np

PROBABILITY_RTOL = 1e-4
PROBABILITY_ATOL = 1e-6


def assert_probabilities_close(actual, expected, err_msg: str = "") -> None:
    """Two float32 answers for the same samples, computed in batches of other compositions."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=PROBABILITY_RTOL, atol=PROBABILITY_ATOL, err_msg=err_msg)
