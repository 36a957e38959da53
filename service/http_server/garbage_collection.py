"""The garbage collector in a serving process: what exists at start-up is never scanned again.

A process that serves requests holds some 10^5 long-lived objects (Flask, pydantic's schemas,
NumPy, grpcio, the models' metadata) and each request makes a few hundred short-lived
containers, nearly all freed by reference counting. CPython's collector still runs a young
collection every 700 net container allocations and, now and then, a full one that walks every
long-lived object. Measured with ``python -m bench.cpu_per_request`` (one gunicorn worker, wrk
c=16, 4 rounds each): ``gc.freeze()`` after start-up cut the
CPU per ``/predict`` request by 14% (MNIST one sample) and 20% (XOR). A young-generation
threshold of 20,000 measured a further ~5% but let a worker's memory grow 10.1% in the 15 s soak
(tests/integration/test_soak.py allows 10%), so young collections keep CPython's default.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Call once a serving process has loaded everything and before it serves: every object alive now
    moves to the collector's permanent generation.

    gunicorn's master calls it before forking (``gunicorn_conf.py``: a collection in a worker would
    otherwise write to every inherited object and un-share its page) and each worker again after its
    own set-up (``worker.py``). The gRPC processes do not call it.
    """
    gc.collect()  # what start-up left as garbage goes now, not into the permanent generation
    gc.freeze()


def release_startup_objects() -> None:
    """Call as a serving process stops: the frozen objects return to the collector, so the interpreter's
    last collection frees them while every module still exists. Left frozen they are freed during
    module teardown, where a logging handler's weakref callback met gevent's thread module half gone
    and printed a traceback at every worker's exit."""
    gc.unfreeze()
