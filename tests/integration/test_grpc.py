"""The Open Inference Protocol over gRPC, judged by tritonclient.grpc (and its published stubs for the
``contents`` field) against the real ``python -m service``: health, the standard grpc.health.v1
service, metadata, inference with ``raw_input_contents`` and ``contents`` for all three models
(answers equal to /predict's to 1e-6, and to each other exactly), request ids, errors and their
status codes, the message size limit, metrics in /metrics, and a SIGTERM with calls in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import requests

from tests.conftest import ROOT
from tests.integration.conftest import LocalServer

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

GLYPHS = json.loads((ROOT / "training" / "data" / "digits5x5.json").read_text())
MODELS = ("xor", "digits", "mnist")


def wait_grpc(target: str, timeout: float = 60.0) -> None:
    """The gRPC processes start beside gunicorn: wait until they answer ServerReady."""
    deadline = time.monotonic() + timeout
    with grpcclient.InferenceServerClient(target) as c:
        while True:
            try:
                if c.is_server_ready():
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gRPC at {target} not ready after {timeout}s")
            time.sleep(0.2)


@pytest.fixture(scope="module", params=["gunicorn", "container"])
def server(request):
    """The gunicorn server started here, or the image (tests/container/engine.py): ``url`` and ``grpc_target``."""
    target = request.getfixturevalue("gunicorn_server" if request.param == "gunicorn" else "container")
    wait_grpc(target.grpc_target)
    return target


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def samples(mnist_data):
    x = mnist_data.eval_sets["test"][0][:16].reshape(16, 28, 28).astype(np.float32)
    return {"xor": np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
            "digits": np.array(GLYPHS["images"], np.float32).reshape(-1, 5, 5),
            "mnist": x}


def predict(url, name, x):
    r = requests.post(f"{url}/predict", json={"model": name, "inputs": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.array([p["probabilities"] for p in body["predictions"]]), [p["label"] for p in body["predictions"]]


def raw_infer(client, name, x, datatype="FP32", **kwargs):
    tensor = grpcclient.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor], **kwargs)


def infer_error(client, name, x, datatype="FP32", **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        raw_infer(client, name, x, datatype, **kwargs)
    return info.value


def test_health(client):
    assert client.is_server_live() and client.is_server_ready()
    for name in MODELS:
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("mnist", "7")
    assert not client.is_model_ready("resnet")  # Triton's answer for a model it does not have


def test_standard_health_service(server):
    """What Kubernetes' gRPC probe and grpc_health_probe call."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_metadata_equals_rest(server, client):
    meta = client.get_server_metadata()
    assert meta.name == "numpy-nets"
    for name in MODELS:
        rest = requests.get(f"{server.url}/v2/models/{name}", timeout=10).json()
        got = client.get_model_metadata(name, as_json=True)
        assert got["name"] == name and got["versions"] == rest["versions"] and got["platform"] == "numpy"
        for side in ("inputs", "outputs"):
            assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in got[side]] == rest[side]
    assert client.get_model_metadata("xor", "1", as_json=True)["versions"] == ["1"]


@pytest.mark.parametrize("name", MODELS)
def test_infer_raw_equals_predict(server, client, samples, name):
    x = samples[name]
    outputs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("label")]
    result = raw_infer(client, name, x, outputs=outputs, request_id=f"req-{name}", model_version="1")
    expected, labels = predict(server.url, name, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=1e-6)
    assert [v.decode() for v in result.as_numpy("label")] == labels
    response = result.get_response()
    assert response.id == f"req-{name}" and response.model_name == name and response.model_version == "1"


@pytest.mark.parametrize("name", MODELS)
def test_infer_contents_equals_raw_exactly(stub, client, samples, name):
    """The same batch through the same kernel: the typed contents and the raw bytes give the same bits."""
    x = samples[name]
    request = service_pb2.ModelInferRequest(model_name=name, id="c")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["probabilities", "label"]  # none named: all of them
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_array_equal(got, raw_infer(client, name, x).as_numpy("probabilities"))


@pytest.mark.parametrize("datatype,field", [("FP64", "fp64_contents"), ("INT32", "int_contents"),
                                            ("UINT8", "uint_contents")])
def test_other_datatypes(server, stub, client, samples, datatype, field):
    x = samples["digits"]
    expected = predict(server.url, "digits", x)[0]
    np.testing.assert_allclose(raw_infer(client, "digits", x.astype(datatype.lower().replace("fp", "float")),
                                         datatype).as_numpy("probabilities"), expected, atol=1e-6)
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    getattr(tensor.contents, field).extend(x.ravel().astype(int if "INT" in datatype else float).tolist())
    response = stub.ModelInfer(request, timeout=30)
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(expected.shape),
                               expected, atol=1e-6)


def test_errors_and_their_codes(client, stub, samples):
    x = samples["xor"]
    unknown = infer_error(client, "resnet", x)
    assert unknown.status() == "StatusCode.NOT_FOUND" and "unknown model 'resnet'" in unknown.message()
    assert infer_error(client, "xor", x, model_version="7").status() == "StatusCode.NOT_FOUND"
    wrong = infer_error(client, "xor", samples["digits"])
    assert wrong.status() == "StatusCode.INVALID_ARGUMENT" and "expected 2 values" in wrong.message()
    outside = infer_error(client, "xor", np.array([[0, 2]], np.float32))
    assert outside.status() == "StatusCode.INVALID_ARGUMENT" and "outside" in outside.message()
    nan = infer_error(client, "xor", np.array([[0, np.nan]], np.float32))
    assert nan.status() == "StatusCode.INVALID_ARGUMENT" and "finite" in nan.message()
    assert infer_error(client, "xor", np.zeros((1, 2), np.float16), "FP16").status() == "StatusCode.INVALID_ARGUMENT"
    over = infer_error(client, "xor", np.zeros((1025, 2), np.float32))  # MAX_BATCH=1024 in the tests' server
    assert over.status() == "StatusCode.RESOURCE_EXHAUSTED" and "MAX_BATCH=1024" in over.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("resnet")
    assert info.value.status() == "StatusCode.NOT_FOUND"

    def call(**changes):
        request = service_pb2.ModelInferRequest(model_name="xor")
        tensor = request.inputs.add(name=changes.pop("input", "input"), datatype="FP32", shape=changes.pop("shape",
                                                                                                         [1, 2]))
        if "raw" in changes:
            request.raw_input_contents.append(changes.pop("raw"))
        else:
            tensor.contents.fp32_contents.extend(changes.pop("values", [0.0, 1.0]))
        for key, value in changes.items():
            setattr(request, key, value)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        return info.value

    assert call(values=[0.0]).code() == grpc.StatusCode.INVALID_ARGUMENT  # 1 value for shape [1, 2]
    assert call(raw=b"\0" * 7).code() == grpc.StatusCode.INVALID_ARGUMENT  # 7 bytes for shape [1, 2]
    assert call(shape=[-1, 2]).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert call(input="x").code() == grpc.StatusCode.INVALID_ARGUMENT
    assert call(model_version="one").code() == grpc.StatusCode.INVALID_ARGUMENT
    evil = call(model_name="a\nb" * 100)
    assert evil.code() == grpc.StatusCode.NOT_FOUND and "\n" not in evil.details() and len(evil.details()) < 400


def test_message_size_is_max_body_bytes(client):
    """MAX_BODY_BYTES (8 MiB in the tests' server) bounds a gRPC message as it bounds an HTTP body."""
    x = np.zeros((1024, 28 * 28 * 3), np.float32)  # 9.4 MB
    assert infer_error(client, "mnist", x).status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_grpc_requests_are_in_metrics(server, client, samples):
    raw_infer(client, "xor", samples["xor"])
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    line = next(li for li in text.splitlines() if li.startswith("nn_requests_total{") and
                'endpoint="grpc:/inference.GRPCInferenceService/ModelInfer"' in li and 'model="xor"' in li)
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert 'endpoint="grpc:/inference.GRPCInferenceService/ModelInfer",model="(unknown)"' in text or \
        "resnet" not in text  # a client's unknown name never becomes a series


def test_sigterm_lets_calls_in_flight_finish(tmp_path, mnist_data):
    """Calls the server has taken finish after SIGTERM; later ones are refused (UNAVAILABLE); exit 0."""
    srv = LocalServer(tmp_path, WORKERS="1", GRPC_THREADS="2").start()
    try:
        wait_grpc(srv.grpc_target)
        x = np.repeat(mnist_data.eval_sets["test"][0][:64].astype(np.float32), 16, axis=0)  # 1024 samples
        results: list[tuple[float, str]] = []
        first = threading.Event()

        def send() -> None:
            with grpcclient.InferenceServerClient(srv.grpc_target) as c:
                try:
                    r = raw_infer(c, "mnist", x, client_timeout=60)
                    assert r.as_numpy("probabilities").shape == (1024, 10)
                    results.append((time.monotonic(), "OK"))
                except InferenceServerException as exc:
                    results.append((time.monotonic(), exc.status()))
                first.set()

        threads = [threading.Thread(target=send) for _ in range(24)]
        for t in threads:
            t.start()
        assert first.wait(60)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        try:
            code = srv.proc.wait(60)
        except subprocess.TimeoutExpired:
            subprocess.run(["pkill", "-USR1", "-P", str(srv.proc.pid), "-f", "service.grpc_server"], check=False)
            time.sleep(1)
            pytest.fail(f"still running 60 s after SIGTERM:\n{srv.read_log()[-4000:]}")
        assert code == 0, srv.read_log()[-3000:]
    finally:
        srv.stop()
    statuses = {status for _, status in results}
    assert len(results) == 24 and statuses <= {"OK", "StatusCode.UNAVAILABLE"}, results
    assert any(status == "OK" and at > signalled for at, status in results), "no call finished after SIGTERM"
    assert "Traceback" not in srv.read_log()


def test_kserves_grpc_client(server, samples):
    """KServe's own InferenceGRPCClient (kserve.inference_client, from the wheel): live, ready, infer."""
    import asyncio
    import concurrent.futures

    from tests.integration.test_kserve_sdk import load_sdk

    sdk = load_sdk()
    x = samples["digits"]
    expected, _ = predict(server.url, "digits", x)

    async def run():
        client = sdk.InferenceGRPCClient(server.grpc_target, timeout=30)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("digits")
            tensor = sdk.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            request = sdk.InferRequest(model_name="digits", infer_inputs=[tensor], request_id="k1")
            return await client.infer(request)
        finally:
            await client.close()

    # On an event loop of its own thread, as tests/integration/test_kserve_sdk.py runs the SDK: the
    # browser tests' Playwright keeps one running on this thread for the whole session.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        response = pool.submit(asyncio.run, run()).result()
    assert response.model_name == "digits" and response.id == "k1"
    got = next(o for o in response.outputs if o.name == "probabilities").as_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_hot_reload_and_a_failed_version_over_grpc(tmp_path):
    """A version written into the repository serves over gRPC within the poll interval, as over HTTP; a
    version that failed to load is UNAVAILABLE, and the others keep serving."""
    import shutil

    from tests.bad_weights import make_bad

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "xor", repo / "xor")
    srv = LocalServer(tmp_path / "server", MODEL_DIR=str(repo), MODEL_POLL_SECONDS="1", MODEL_SETTLE_SECONDS="0.5",
                      VERSION_POLICY="all", WORKERS="1").start()
    try:
        wait_grpc(srv.grpc_target)
        x = np.array([[0, 1]], np.float32)
        with grpcclient.InferenceServerClient(srv.grpc_target) as c:
            assert c.get_model_metadata("xor", as_json=True)["versions"] == ["1"]
            good = repo / "xor" / "1" / "model.npz"
            make_bad("wrong shape", good, repo / "xor" / "2" / "model.npz")
            (repo / "xor" / "3").mkdir()
            shutil.copyfile(good, repo / "xor" / "3" / "model.npz")
            deadline = time.monotonic() + 30
            while c.get_model_metadata("xor", as_json=True)["versions"] != ["1", "3"]:
                assert time.monotonic() < deadline, c.get_model_metadata("xor", as_json=True)
                time.sleep(0.2)
            assert raw_infer(c, "xor", x).get_response().model_version == "3"  # the newest that serves
            failed = infer_error(c, "xor", x, model_version="2")
            assert failed.status() == "StatusCode.UNAVAILABLE" and "xor/2 failed to load" in failed.message()
            assert not c.is_model_ready("xor", "2") and c.is_model_ready("xor", "3")
            while requests.get(f"{srv.url}/v2/models/xor", timeout=10).json()["versions"] != ["1", "3"]:
                assert time.monotonic() < deadline  # HTTP's workers rescan on their own clock, as often
                time.sleep(0.2)
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]


def test_repository_rpcs_need_the_token(tmp_path):
    """RepositoryModelUnload/Load over gRPC with ADMIN_TOKEN as metadata (tritonclient's unload_model and
    load_model); without it UNAUTHENTICATED, with a wrong one PERMISSION_DENIED; an unload reaches HTTP too."""
    token = "grpc-admin-token"
    srv = LocalServer(tmp_path, ADMIN_TOKEN=token, WORKERS="1").start()
    try:
        wait_grpc(srv.grpc_target)
        with grpcclient.InferenceServerClient(srv.grpc_target) as c:
            for headers, code in ((None, "UNAUTHENTICATED"), ({"authorization": "Bearer nope"}, "PERMISSION_DENIED")):
                with pytest.raises(InferenceServerException) as info:
                    c.unload_model("xor", headers=headers)
                assert info.value.status() == f"StatusCode.{code}"
            admin = {"authorization": f"Bearer {token}"}
            with pytest.raises(InferenceServerException) as info:
                c.unload_model("resnet", headers=admin)
            assert info.value.status() == "StatusCode.NOT_FOUND"
            c.unload_model("xor", headers=admin)
            assert not c.is_model_ready("xor") and c.is_model_ready("mnist")
            deadline = time.monotonic() + 30
            while requests.get(f"{srv.url}/v2/models/xor/ready", timeout=10).status_code != 400:  # unloaded
                assert time.monotonic() < deadline  # every process serves what the shared state says
                time.sleep(0.2)
            c.load_model("xor", headers=admin)
            assert c.is_model_ready("xor")
            assert raw_infer(c, "xor", np.array([[0, 1]], np.float32)).as_numpy("label").tolist() == [b"1"]
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]


def test_repository_rpcs_are_off_without_a_token(client):
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("xor", headers={"authorization": "Bearer anything"})
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_model_ready("xor")
