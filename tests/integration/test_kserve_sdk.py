"""KServe's own Python SDK, ``kserve.InferenceRESTClient``, unchanged against the server and the
container, with both of its protocols: ``RESTConfig(protocol="v2")`` (Open Inference Protocol) and
``"v1"`` (KServe V1). Health, model readiness, and inference with JSON and binary tensors on all
three models; the answers must equal ``/predict``'s exactly (same inputs, same batch, same kernel);
and V1's ``explain()``.

The client runs from the kserve wheel in ``.venv/kserve-models`` (``make .venv/.dev``), imported
without ``kserve/__init__`` (which starts with KServe's model server and its dependencies), with
exactly the modules ``kserve.inference_client`` imports (``requirements-kserve-client.lock``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import predict

MODELS_DIR = Path(os.environ.get("KSERVE_MODELS", ROOT / ".venv" / "kserve-models"))


def share_inference_messages() -> None:
    """KServe's client and tritonclient.grpc each generate the protocol's messages (package ``inference``)
    from their copy of the .proto, and protobuf's one descriptor pool refuses the second copy
    ("duplicate symbol 'inference.ServerLiveRequest'"), so the two clients could not be tested in one
    pytest run. KServe's modules are given tritonclient's generated ones instead: the same messages and
    service, field for field, for everything KServe's client sends (ServerLive ... ModelInfer)."""
    try:
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError:
        return
    sys.modules.setdefault("kserve.protocol.grpc.grpc_predict_v2_pb2", service_pb2)
    sys.modules.setdefault("kserve.protocol.grpc.grpc_predict_v2_pb2_grpc", service_pb2_grpc)


def load_sdk() -> types.SimpleNamespace:
    """KServe's REST client and its request types, from the wheel (a bare ``kserve`` package)."""
    if not (MODELS_DIR / "kserve" / "inference_client.py").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"KServe's SDK is missing from {MODELS_DIR}: run make .venv/.dev")
        pytest.skip(f"no kserve wheel in {MODELS_DIR} (make .venv/.dev installs it)")
    if "kserve" not in sys.modules or not hasattr(sys.modules["kserve"], "__path__"):
        package = types.ModuleType("kserve")
        package.__path__ = [str(MODELS_DIR / "kserve")]
        sys.modules["kserve"] = package
    share_inference_messages()
    try:
        from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig
        from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"KServe's client cannot import ({exc}): make .venv/.dev installs requirements-kserve-client.lock")
    return types.SimpleNamespace(InferenceRESTClient=InferenceRESTClient, RESTConfig=RESTConfig,
                                 InferenceGRPCClient=InferenceGRPCClient,
                                 InferInput=InferInput, InferRequest=InferRequest, RequestedOutput=RequestedOutput)


@pytest.fixture(scope="module")
def sdk():
    return load_sdk()


def run(sdk, protocol: str, call):
    """``await call(client)`` with a fresh client of that protocol (the SDK is asynchronous), on an
    event loop of its own thread: the browser tests' Playwright keeps one running on this thread for
    the whole session, and asyncio.run refuses to start a second there."""
    async def main():
        async with sdk.InferenceRESTClient(sdk.RESTConfig(protocol=protocol, timeout=30)) as client:
            return await call(client)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


# -- V2 -------------------------------------------------------------------------------------------
def test_v2_health_and_model_readiness(sdk, base_url):
    async def calls(client):
        ready = {name: await client.is_model_ready(base_url, name) for name in ("xor", "digits", "mnist")}
        return (await client.is_server_live(base_url), await client.is_server_ready(base_url), ready,
                await client.is_model_ready(base_url, "resnet"))
    live, ready, models, unknown = run(sdk, "v2", calls)
    assert live is True and ready is True
    assert models == {"xor": True, "digits": True, "mnist": True}
    assert unknown is False


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", ["xor", "digits", "mnist"])
def test_v2_infer_equals_predict(sdk, base_url, samples, name, binary):
    x = samples[name]
    tensor = sdk.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [sdk.RequestedOutput("probabilities", parameters={"binary_data": binary}),
               sdk.RequestedOutput("label", parameters={"binary_data": binary})]
    request = sdk.InferRequest(model_name=name, infer_inputs=[tensor], request_id=f"kserve-{name}",
                               request_outputs=outputs)
    response = run(sdk, "v2", lambda client: client.infer(base_url, request, model_name=name))
    expected, labels = predict(base_url, name, x)
    expected = expected.astype(np.float32)  # the SDK decodes float32; /predict sent float32 values
    assert response.model_name == name and response.id == f"kserve-{name}"
    by_name = {o.name: o for o in response.outputs}
    np.testing.assert_array_equal(by_name["probabilities"].as_numpy(), expected)
    got = [v.decode() if isinstance(v, bytes) else v for v in by_name["label"].as_numpy().tolist()]
    assert got == labels


def test_v2_a_body_naming_another_model_is_refused(sdk, base_url, samples):
    tensor = sdk.InferInput("input", [4, 2], "FP32")
    tensor.set_data_from_numpy(samples["xor"], binary_data=False)
    request = sdk.InferRequest(model_name="digits", infer_inputs=[tensor])
    import httpx

    with pytest.raises(httpx.HTTPStatusError) as info:
        run(sdk, "v2", lambda client: client.infer(base_url, request, model_name="xor"))
    assert info.value.response.status_code == 400
    assert "model_name 'digits' contradicts the URL's model 'xor'" in str(info.value)


# -- V1 -------------------------------------------------------------------------------------------
def test_v1_health_and_model_readiness(sdk, base_url):
    async def calls(client):
        ready = {name: await client.is_model_ready(base_url, name) for name in ("xor", "digits", "mnist")}
        return await client.is_server_live(base_url), ready
    live, models = run(sdk, "v1", calls)
    assert live is True and models == {"xor": True, "digits": True, "mnist": True}


def test_v1_unknown_model_is_a_404_naming_it(sdk, base_url):
    import httpx

    with pytest.raises(httpx.HTTPStatusError) as info:
        run(sdk, "v1", lambda client: client.is_model_ready(base_url, "resnet"))
    assert info.value.response.status_code == 404 and "unknown model 'resnet'" in str(info.value)


@pytest.mark.parametrize("name", ["xor", "digits", "mnist"])
def test_v1_infer_equals_predict(sdk, base_url, samples, name):
    x = samples[name]
    response = run(sdk, "v1", lambda client: client.infer(base_url, {"instances": x.tolist()}, model_name=name))
    expected = predict(base_url, name, x)[0].astype(np.float32)
    assert set(response) == {"predictions"}
    np.testing.assert_array_equal(np.array(response["predictions"], np.float32), expected)


def test_v1_explain_through_the_sdk(sdk, base_url, samples):
    """The SDK's explain() (V1 :explain, served by the explanations' codec) answers as KServe's does."""
    x = samples["xor"]
    response = run(sdk, "v1", lambda client: client.explain(base_url, "xor", {"instances": x.tolist()}))
    expected = predict(base_url, "xor", x)[0].astype(np.float32)
    np.testing.assert_array_equal(np.array(response["predictions"], np.float32), expected)
    assert len(response["explanations"]) == len(x)
