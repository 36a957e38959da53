"""How the gRPC front-end's process model serves: MNIST batches of 256 over tritonclient.grpc at
concurrency 8, for GRPC_WORKERS x GRPC_THREADS arrangements of ``python -m service`` (README "gRPC"),
and HTTP V2 with binary tensors (tritonclient.http) against the default arrangement in the same run.

``python -m bench.grpc_processes [SECONDS]`` prints images/s for each arrangement; the client runs
here, on the same cores, so the figures compare arrangements, not machines.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration.conftest import LocalServer
from tests.integration.test_grpc import wait_grpc

ARRANGEMENTS = [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]  # (GRPC_WORKERS, GRPC_THREADS)


def rate(target: str, seconds: float, concurrency: int = 8, batch: int = 256, protocol=grpcclient) -> float:
    x = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
    done, stop = [], threading.Event()

    def loop() -> None:
        with protocol.InferenceServerClient(target) as c:
            tensor = protocol.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            while not stop.is_set():
                c.infer("mnist", [tensor], outputs=[protocol.InferRequestedOutput("probabilities")])
                done.append(time.monotonic())

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm-up
    start, before = time.monotonic(), len(done)
    time.sleep(seconds)
    count = len(done) - before
    elapsed = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join()
    return count * batch / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    for workers, threads in ARRANGEMENTS:
        with tempfile.TemporaryDirectory() as tmp:
            server = LocalServer(Path(tmp), GRPC_WORKERS=workers, GRPC_THREADS=threads).start()
            try:
                wait_grpc(server.grpc_target)
                print(f"GRPC_WORKERS={workers} GRPC_THREADS={threads}: {rate(server.grpc_target, seconds):8.0f} "
                      "images/s", flush=True)
                if (workers, threads) == ("2", "1"):  # the default beside WORKERS=2
                    print(f"HTTP V2 binary, same server:  {rate(server.url[7:], seconds, protocol=httpclient):8.0f} "
                          "images/s", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
