"""The Open Inference Protocol over gRPC, judged by tritonclient.grpc (and its published stubs for the
``contents`` field) against the real ``python -m service``: health, the standard grpc.health.v1
service, metadata, inference with ``raw_input_contents`` and ``contents`` for all three models
(answers equal to /predict's to 1e-6, and to each other exactly), request ids, errors and their
status codes, the message size limit, metrics in /metrics, a SIGTERM with calls in flight, Triton's
configuration, statistics and repository index equal to REST's, the RPCs not served UNIMPLEMENTED,
and KServe's InferenceGRPCClient on its own proto."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import requests

from tests.conftest import ROOT, served_version
from tests.integration.conftest import LocalServer, predict

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")
from google.protobuf import json_format  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

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
        assert client.is_model_ready(name) and client.is_model_ready(name, served_version(name).name)
    assert not client.is_model_ready("mnist", "7")
    assert not client.is_model_ready("resnet")  # Triton's answer for a model it does not have


def test_standard_health_service(server):
    """What Kubernetes' gRPC probe and grpc_health_probe call."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "liveness"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_metadata_equals_rest(server, client):
    meta = client.get_server_metadata()
    rest = requests.get(f"{server.url}/v2", timeout=10).json()
    assert meta.name == rest["name"] == "numpy-nets" and meta.version == rest["version"]
    assert list(meta.extensions) == ["model_configuration", "statistics"]  # REST adds binary_tensor_data
    for name in MODELS:
        rest = requests.get(f"{server.url}/v2/models/{name}", timeout=10).json()
        got = client.get_model_metadata(name, as_json=True)
        assert got["name"] == name and got["versions"] == rest["versions"] and got["platform"] == "numpy"
        for side in ("inputs", "outputs"):
            assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in got[side]] == rest[side]
    assert client.get_model_metadata("xor", "1", as_json=True)["versions"] == ["1"]


@pytest.mark.parametrize("name", MODELS)
def test_model_config_equals_rests(server, client, name):
    """ModelConfig answers what GET /v2/models/{m}/config does: REST's JSON, read by Triton's own
    ModelConfig schema (every field must be one of Triton's), is the message gRPC sends, field for field."""
    served = served_version(name).name
    for version, path in ((None, f"/v2/models/{name}/config"), (served, f"/v2/models/{name}/versions/{served}/config")):
        rest = requests.get(f"{server.url}{path}", timeout=10).json()
        got = client.get_model_config(name, version or "").config
        assert got == json_format.ParseDict(rest, model_config_pb2.ModelConfig()), (got, rest)
        assert got.name == name and got.max_batch_size == 1024 and got.input[0].data_type == model_config_pb2.TYPE_FP32
    for args, code in ((("resnet",), "NOT_FOUND"), ((name, "7"), "NOT_FOUND"), ((name, "one"), "INVALID_ARGUMENT")):
        with pytest.raises(InferenceServerException) as info:
            client.get_model_config(*args)
        assert info.value.status() == f"StatusCode.{code}", args


def test_statistics_equal_rests_and_count_grpc_calls(server, client, samples):
    """ModelStatistics answers what GET /v2/models[/{m}[/versions/{v}]]/stats does (the same counters,
    summed over the HTTP workers and the gRPC processes), and a gRPC inference moves them."""
    def rest(path: str) -> service_pb2.ModelStatisticsResponse:
        return json_format.ParseDict(requests.get(f"{server.url}{path}", timeout=10).json(),
                                     service_pb2.ModelStatisticsResponse())

    raw_infer(client, "digits", samples["digits"])  # so the numbers compared are not all zeros
    before = client.get_inference_statistics("digits")
    assert before == rest("/v2/models/digits/stats")
    assert client.get_inference_statistics() == rest("/v2/models/stats")
    assert client.get_inference_statistics("digits", "1") == rest("/v2/models/digits/versions/1/stats")
    (stat,) = before.model_stats
    assert stat.name == "digits" and stat.version == "1" and stat.inference_count >= len(samples["digits"])
    raw_infer(client, "digits", samples["digits"])
    (after,) = client.get_inference_statistics("digits").model_stats
    assert after.execution_count == stat.execution_count + 1
    assert after.inference_count == stat.inference_count + len(samples["digits"])
    assert after.inference_stats.success.count == stat.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.ns > stat.inference_stats.compute_infer.ns
    for args, code in ((("resnet",), "NOT_FOUND"), (("digits", "9"), "NOT_FOUND"), (("", "1"), "INVALID_ARGUMENT")):
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics(*args)
        assert info.value.status() == f"StatusCode.{code}", args


def test_rpcs_not_served_are_unimplemented_without_a_traceback(server, client, stub):
    """Triton's shared-memory, trace and log-settings RPCs: UNIMPLEMENTED, named, nothing logged
    as a failure (the generated base class would answer so too, with a traceback in the log each time).
    Only this test's part of the log is read: the session's server also served other files."""
    read_log = getattr(server, "read_log", None)  # the gunicorn target's (the container's log is its engine's)
    start = len(read_log()) if read_log else 0
    for call in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.UNIMPLEMENTED" and "not supported" in info.value.message()
    if read_log:
        log = read_log()[start:]
        assert "Traceback" not in log and "Method not implemented" not in log


@pytest.mark.parametrize("name", MODELS)
def test_infer_raw_equals_predict(server, client, samples, name):
    x = samples[name]
    outputs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("label")]
    served = served_version(name).name
    result = raw_infer(client, name, x, outputs=outputs, request_id=f"req-{name}", model_version=served)
    expected, labels = predict(server.url, name, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=1e-6)
    assert [v.decode() for v in result.as_numpy("label")] == labels
    response = result.get_response()
    assert response.id == f"req-{name}" and response.model_name == name and response.model_version == served


def test_a_request_id_is_bounded_as_over_rest(server, stub, samples):
    """V2 REST refuses an id over 256 characters (its schema); gRPC echoed any length."""
    x = samples["xor"]

    def call(rid: str):
        request = service_pb2.ModelInferRequest(model_name="xor", id=rid)
        request.inputs.add(name="input", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(
            x.ravel().tolist())
        return stub.ModelInfer(request, timeout=30)

    assert call("r" * 256).model_name == "xor"  # answered (with capture on, under an id of the server's)
    with pytest.raises(grpc.RpcError) as info:
        call("r" * 257)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in info.value.details()
    rest = requests.post(f"{server.url}/v2/models/xor/infer", timeout=30, json={
        "id": "r" * 257, "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})
    assert rest.status_code == 400


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
    assert call(shape=[1] * 70 + [2]).code() == grpc.StatusCode.INVALID_ARGUMENT  # past NumPy's 64 dimensions
    assert call(shape=[0, 2**62, 2**62], values=[]).code() == grpc.StatusCode.INVALID_ARGUMENT  # no array's shape
    classify = service_pb2.ModelInferRequest(model_name="xor")  # tritonclient's class_count: not given, so refused
    classify.inputs.add(name="input", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([0.0, 1.0])
    classify.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(classify, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "classification" in info.value.details()
    unsigned = service_pb2.ModelInferRequest(model_name="xor")  # 2**64 - 1 read as a float became 0, answered
    unsigned.inputs.add(name="input", datatype="UINT64", shape=[1, 2]).contents.uint64_contents.extend([0, 2**64 - 1])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(unsigned, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside" in info.value.details()
    assert call(input="x").code() == grpc.StatusCode.INVALID_ARGUMENT
    assert call(model_version="one").code() == grpc.StatusCode.INVALID_ARGUMENT
    evil = call(model_name="a\nb" * 100)
    assert evil.code() == grpc.StatusCode.NOT_FOUND and "\n" not in evil.details() and len(evil.details()) < 400


def stream(target: str, sends) -> list[tuple]:
    """Run ``sends(client)`` on a tritonclient stream; the callbacks' (result, error) in arrival order."""
    got: list[tuple] = []
    done = threading.Condition()

    def callback(result, error):
        with done:
            got.append((result, error))
            done.notify_all()

    with grpcclient.InferenceServerClient(target) as c:
        c.start_stream(callback=callback, stream_timeout=60)
        count = sends(c)
        with done:
            assert done.wait_for(lambda: len(got) >= count, 60), got
        c.stop_stream()
    return got


def stream_inputs(x, datatype="FP32"):
    tensor = grpcclient.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return [tensor]


def test_stream_infer_answers_each_request_in_order_and_errors_in_stream(server, samples):
    """ModelStreamInfer through tritonclient's stream: one answer per request, in order, each equal to
    /predict's; a bad request's error comes back as its answer and the stream goes on."""
    requests_sent = [("xor", samples["xor"]), ("resnet", samples["xor"]), ("mnist", samples["mnist"]),
                     ("xor", samples["digits"]), ("digits", samples["digits"]),
                     ("xor", np.zeros((1025, 2), np.float32))]

    def sends(c):
        for i, (name, x) in enumerate(requests_sent):
            c.async_stream_infer(name, stream_inputs(x), request_id=f"s{i}", enable_empty_final_response=i == 0)
        return len(requests_sent)

    got = stream(server.grpc_target, sends)
    assert len(got) == len(requests_sent)
    for i, ((name, x), (result, error)) in enumerate(zip(requests_sent, got, strict=True)):
        if i in (1, 3, 5):
            assert result is None and error is not None, (i, result)
            continue
        assert error is None, (i, error)
        response = result.get_response()
        assert response.id == f"s{i}" and response.model_name == name
        expected, labels = predict(server.url, name, x)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=1e-6)
        assert [v.decode() for v in result.as_numpy("label")] == labels
        final = response.parameters.get("triton_final_response")
        assert (final is not None and final.bool_param) == (i == 0), (i, response.parameters)
    assert "unknown model 'resnet'" in got[1][1].message()
    assert "expected 2 values" in got[3][1].message()
    assert "MAX_BATCH=1024" in got[5][1].message()
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    counted = [li for li in text.splitlines() if li.startswith("nn_requests_total{") and "ModelStreamInfer" in li]
    assert any('model="xor"' in li and 'status="200"' in li for li in counted), counted
    assert any('model="(unknown)"' in li and 'status="404"' in li for li in counted), counted


def test_stream_infer_answers_are_modelinfers_exactly(stub, samples):
    """The same request alone and in a stream (same kernel): the same bytes back."""
    x = samples["mnist"]
    request = service_pb2.ModelInferRequest(model_name="mnist", id="same")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    alone = stub.ModelInfer(request, timeout=30)
    streamed = list(stub.ModelStreamInfer(iter([request, request]), timeout=30))
    assert [r.error_message for r in streamed] == ["", ""]
    assert all(r.infer_response == alone for r in streamed)


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


@pytest.mark.serial  # bounds a latency or a time: run alone (Makefile)
def test_sigterm_lets_calls_in_flight_finish(tmp_path, mnist_data):
    """Calls the server has taken finish after SIGTERM; later ones are refused (UNAVAILABLE); an idle
    stream is ended within a second or so; exit 0."""
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

        streamed: list = []
        idle = grpcclient.InferenceServerClient(srv.grpc_target)  # a stream left open, idle, across the stop
        idle.start_stream(callback=lambda result, error: streamed.append((result, error)))
        idle.async_stream_infer("mnist", stream_inputs(x[:1]))
        threads = [threading.Thread(target=send) for _ in range(24)]
        for t in threads:
            t.start()
        assert first.wait(60)
        assert streamed and streamed[0][1] is None, streamed
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        try:
            code = srv.proc.wait(60)
            stopped = time.monotonic() - signalled
        except subprocess.TimeoutExpired:
            subprocess.run(["pkill", "-USR1", "-P", str(srv.proc.pid), "-f", "service.grpc.server"], check=False)
            time.sleep(1)
            pytest.fail(f"still running 60 s after SIGTERM:\n{srv.read_log()[-4000:]}")
        assert code == 0, srv.read_log()[-3000:]
        # the idle stream was ended, not waited for until GRACEFUL_TIMEOUT (30 s)
        assert stopped < 20 and len(streamed) == 2 and streamed[1][1] is not None, (stopped, streamed)
        idle.close()
    finally:
        srv.stop()
    statuses = {status for _, status in results}
    assert len(results) == 24 and statuses <= {"OK", "StatusCode.UNAVAILABLE"}, results
    assert any(status == "OK" and at > signalled for at, status in results), "no call finished after SIGTERM"
    assert "Traceback" not in srv.read_log()


def test_kserves_grpc_client(server, samples):
    """KServe's own InferenceGRPCClient (kserve.inference_client, from the wheel) with KServe's own
    grpc_predict_v2 messages, in a process of its own (tests/integration/kserve_grpc_client.py): live,
    ready, infer equal to /predict's, against the server's Triton proto."""
    import sys

    from tests.integration.test_kserve_sdk import MODELS_DIR, load_sdk

    load_sdk()  # the other KServe tests' rule for a missing wheel: skip here, fail in CI

    x = samples["digits"]
    expected, _ = predict(server.url, "digits", x)
    run = subprocess.run([sys.executable, "-m", "tests.integration.kserve_grpc_client", server.grpc_target,
                          str(MODELS_DIR)], input=json.dumps(x.tolist()), capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout)
    assert answer["proto"].startswith(str(MODELS_DIR)) and not answer["tritonclient_imported"]
    assert answer["health"] == [True, True, True]
    assert answer["model_name"] == "digits" and answer["id"] == "k1"
    np.testing.assert_allclose(np.array(answer["probabilities"]), expected, rtol=0, atol=1e-6)


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


def wait_http_ready(url: str, name: str, status: int) -> None:
    """HTTP's workers rescan on their own clock (within a second of a change to the shared state)."""
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/v2/models/{name}/ready", timeout=10).status_code != status:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def rest_index(url: str, token: str, body: dict | None = None) -> list[dict]:
    r = requests.post(f"{url}/v2/repository/index", headers={"Authorization": f"Bearer {token}"}, json=body,
                      timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def as_rows(models) -> list[dict]:
    """RepositoryIndexResponse.models as REST's rows (an unloaded model has no version)."""
    return [{"name": m.name, **({"version": m.version} if m.version else {}), "state": m.state, "reason": m.reason}
            for m in models]


def grpc_index(client, admin: dict) -> list[dict]:
    return as_rows(client.get_model_repository_index(headers=admin).models)


def test_the_liveness_service_serves_while_the_server_is_not_ready(tmp_path):
    """A probe on "" restarted a pod whose repository holds a model that fails to load (NOT_SERVING:
    not ready); the "liveness" service the manifests' liveness and startup probes ask is SERVING. Once
    the broken model is unloaded over gRPC, "" says SERVING with the RPC's answer, as ServerReady does
    (it waited for the repository watcher's next look, up to a second)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "xor" / "1", repo / "xor" / "1")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.npz").write_bytes(b"not a weights file")
    token = "grpc-admin-token"
    srv = LocalServer(tmp_path, MODEL_DIR=str(repo), ADMIN_TOKEN=token, GRPC_WORKERS="1").start(path="/healthz")
    try:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10,
                                    wait_for_ready=True).status

            deadline = time.monotonic() + 60
            while status("liveness") != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status("liveness") == health_pb2.HealthCheckResponse.SERVING
            assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert requests.get(f"{srv.url}/readyz", timeout=10).status_code == 503

            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)  # the same channel: the same process
            stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="broken"),
                                       metadata=(("authorization", f"Bearer {token}"),), timeout=10)
            assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
            assert status("") == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]


def test_repository_rpcs_need_the_token(tmp_path):
    """RepositoryIndex/ModelUnload/ModelLoad over gRPC with ADMIN_TOKEN as metadata (tritonclient's
    get_model_repository_index, unload_model and load_model); without it UNAUTHENTICATED, with a wrong one
    PERMISSION_DENIED; the index equals REST's; an unload reaches HTTP too."""
    token = "grpc-admin-token"
    srv = LocalServer(tmp_path, ADMIN_TOKEN=token, WORKERS="1").start()
    try:
        wait_grpc(srv.grpc_target)
        with grpcclient.InferenceServerClient(srv.grpc_target) as c:
            for headers, code in ((None, "UNAUTHENTICATED"), ({"authorization": "Bearer nope"}, "PERMISSION_DENIED")):
                for call in (lambda h: c.unload_model("xor", headers=h), lambda h: c.load_model("xor", headers=h),
                             lambda h: c.get_model_repository_index(headers=h)):
                    with pytest.raises(InferenceServerException) as info:
                        call(headers)
                    assert info.value.status() == f"StatusCode.{code}"
            admin = {"authorization": f"Bearer {token}"}
            index = grpc_index(c, admin)
            assert index == rest_index(srv.url, token)
            assert {(r["name"], r["version"], r["state"]) for r in index} == {
                (name, served_version(name).name, "READY") for name in ("digits", "mnist", "xor")}
            with grpc.insecure_channel(srv.grpc_target) as channel, pytest.raises(grpc.RpcError) as raw:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                    service_pb2.RepositoryIndexRequest(repository_name="other"), metadata=tuple(admin.items()),
                    timeout=10)  # Triton's answer: a repository's name is not supported
            assert raw.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(InferenceServerException) as info:  # a config override is a client's file
                c.load_model("xor", headers=admin, config='{"max_batch_size": 8}')
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "config" in info.value.message()
            with pytest.raises(InferenceServerException) as info:
                c.unload_model("resnet", headers=admin)
            assert info.value.status() == "StatusCode.NOT_FOUND"
            c.unload_model("xor", headers=admin)
            assert not c.is_model_ready("xor") and c.is_model_ready("mnist")
            assert {"name": "xor", "state": "UNAVAILABLE", "reason": "unloaded"} in grpc_index(c, admin)
            wait_http_ready(srv.url, "xor", 400)  # every process serves what the shared state says
            assert grpc_index(c, admin) == rest_index(srv.url, token)
            with grpc.insecure_channel(srv.grpc_target) as channel:  # ready: true, which tritonclient never sends
                ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                    service_pb2.RepositoryIndexRequest(ready=True), metadata=tuple(admin.items()), timeout=10)
            assert as_rows(ready.models) == rest_index(srv.url, token, {"ready": True})
            assert {r["name"] for r in as_rows(ready.models)} == {"digits", "mnist"}
            c.load_model("xor", headers=admin)
            assert c.is_model_ready("xor")
            wait_http_ready(srv.url, "xor", 200)
            assert grpc_index(c, admin) == rest_index(srv.url, token)
            assert raw_infer(c, "xor", np.array([[0, 1]], np.float32)).as_numpy("label").tolist() == [b"1"]
    finally:
        assert srv.stop() == 0, srv.read_log()[-3000:]


def test_repository_rpcs_are_off_without_a_token(client):
    for call in (client.unload_model, client.load_model):
        with pytest.raises(InferenceServerException) as info:
            call("xor", headers={"authorization": "Bearer anything"})
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index(headers={"authorization": "Bearer anything"})
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_model_ready("xor")
