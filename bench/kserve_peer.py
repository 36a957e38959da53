"""The serving benchmark's KServe peer: kserve's Python model server serving the shipped MNIST weights with
this repository's own NumPy forward pass (``model/``), so the comparison is of the servers alone.

Run by ``bench/serve_load.py`` with the interpreter of ``.venv-kserve`` (``make bench-peers``: kserve and
its dependencies, hash-pinned, kept apart from the service's). Tuned as the issue measured it: 2 uvicorn
workers and one BLAS thread each (set by the caller in the environment). Both of kserve's JSON protocols:

    POST /v1/models/mnist:predict   {"instances": [[784 floats], ...]}
    POST /v2/models/mnist/infer     {"inputs": [{"name": "input", "shape": [n, 784], "datatype": "FP32", ...}]}
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the NumPy library (model/ needs NumPy only)

from model.io import load_model  # noqa: E402
from model.repository import newest_weights  # noqa: E402


class NumpyMNIST(kserve.Model):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.network = load_model(self.path).network
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            x = payload.inputs[0].as_numpy()
            p = self.network.predict_proba(np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32))
            return InferResponse(model_name=self.name, infer_outputs=[
                InferOutput("probabilities", list(p.shape), "FP32", p)], response_id=payload.id or str(uuid.uuid4()))
        x = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": self.network.predict_proba(x.reshape(len(x), -1)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    model = NumpyMNIST("mnist", newest_weights(ROOT / "model_repository", "mnist"))  # what the service serves
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.http_port + 1, enable_grpc=False, workers=args.workers,
                       enable_docs_url=False).start([model])


if __name__ == "__main__":
    main()
