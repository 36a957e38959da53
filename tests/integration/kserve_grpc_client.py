"""KServe's InferenceGRPCClient on KServe's own generated messages (its grpc_predict_v2.proto), in a
process of its own: ``python -m tests.integration.kserve_grpc_client TARGET MODELS_DIR < samples.json``.

In the pytest process KServe's client must share tritonclient's messages (protobuf's one descriptor
pool refuses a second ``inference`` package; tests/integration/test_kserve_sdk.py), so there it
would speak Triton's proto, not KServe's. Here no other copy is imported: what reaches the server is
what KServe's own proto makes, and what comes back is read by it. Prints a JSON answer on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types

import numpy as np


async def main(target: str, models_dir: str) -> dict:
    package = types.ModuleType("kserve")  # without kserve/__init__, as tests/integration/test_kserve_sdk.py does
    package.__path__ = [f"{models_dir}/kserve"]
    sys.modules["kserve"] = package
    from kserve.inference_client import InferenceGRPCClient
    from kserve.protocol.grpc import grpc_predict_v2_pb2
    from kserve.protocol.infer_type import InferInput, InferRequest

    x = np.asarray(json.load(sys.stdin), np.float32)
    client = InferenceGRPCClient(target, timeout=30)
    try:
        health = [await client.is_server_live(), await client.is_server_ready(), await client.is_model_ready("digits")]
        tensor = InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        response = await client.infer(InferRequest(model_name="digits", infer_inputs=[tensor], request_id="k1"))
    finally:
        await client.close()
    probabilities = next(o for o in response.outputs if o.name == "probabilities").as_numpy()
    return {"health": health, "model_name": response.model_name, "id": response.id,
            "probabilities": probabilities.tolist(), "proto": grpc_predict_v2_pb2.__file__,
            "tritonclient_imported": "tritonclient" in sys.modules}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
