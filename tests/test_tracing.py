"""Tracing in-process (service/observability/tracing.py): which OTEL_* variables turn it on, that nothing of
OpenTelemetry is imported while it is off, and the spans of a request through the inference middleware, a
Flask route and the thread batcher, caught by the SDK's in-memory exporter. The real server, exporting over OTLP:
tests/integration/test_tracing.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import gevent
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.test import Client

from service.app import create_app
from service.batching.cost_table import CostTable
from service.batching.gevent_batcher import GeventBatcher
from service.batching.queue_policy import QueuePolicy
from service.batching.thread_batcher import ThreadBatcher
from service.observability import request_record, tracing
from service.repository.registry import ModelRegistry
from tests.integration.conftest import ROOT, free_port
from tests.test_batcher import fresh_hub
from tests.test_thread_batcher import gated, queued, with_table

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT + "/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),  # the SDK's default endpoint, localhost:4318
    ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ["otlp"]),
])
def test_the_standard_variables_decide_whether_tracing_is_on(env, expected):
    assert tracing.exporters(env) == expected


@pytest.mark.parametrize("env", [
    {"OTEL_TRACES_EXPORTER": "zipkin"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
])
def test_what_this_server_cannot_export_is_refused(env):
    with pytest.raises(tracing.TracingConfigError):
        tracing.exporters(env)


def test_a_refused_setting_stops_the_server_at_start():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", GRPC_PORT="0",
               PORT=str(free_port()))
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "not supported" in run.stderr


def test_tracing_asked_for_without_opentelemetry_installed_is_refused(monkeypatch):
    """The default image has no OpenTelemetry (the tracing extra): asking for tracing there stops the
    server at start with how to install it, rather than serving untraced."""
    assert tracing.installed()  # the dev environment has the extra
    monkeypatch.setattr(tracing.importlib_util, "find_spec", lambda name: None)
    assert not tracing.installed()
    with pytest.raises(tracing.TracingConfigError, match=r"requirements-tracing\.lock"):
        tracing.exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT})
    assert tracing.exporters({}) == []  # off: nothing is asked of the packages


def test_route_templates():
    versioned = "/v2/models/<name>/versions/<version>/infer"
    assert tracing.http_route(versioned) == "/v2/models/{name}/versions/{version}/infer"
    assert tracing.http_route("/v1/models/<model:name>:predict") == "/v1/models/{name}:predict"
    assert tracing.http_route("/predict") == "/predict"


OFF = """
import sys
from werkzeug.test import Client
from service.app import create_app
from service.observability import request_record, tracing
app = create_app()
client = Client(app)
assert client.post("/predict", json={"model": "xor", "inputs": [[0, 1]]}).status_code == 200  # the middleware
assert client.post("/gradcheck", json={"model": "xor", "inputs": [[0, 1]], "labels": ["1"]}).status_code == 200
assert client.get("/v2/models/xor").status_code == 200  # Flask
assert tracing.start() is False and not tracing.ENABLED
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_off_nothing_of_opentelemetry_is_imported():
    """A worker's modules, without OTEL_* variables: the app, requests through the middleware and Flask, start()."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    run = subprocess.run([sys.executable, "-c", OFF], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.stop_using()


@pytest.fixture(scope="module")
def app(model_repository):
    return create_app(model_registry=ModelRegistry(model_repository).load_all())


TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}


def tree(exporter) -> dict[str, list]:
    found: dict[str, list] = {}
    for s in exporter.get_finished_spans():
        found.setdefault(s.name, []).append(s)
    return found


def test_the_lane_s_request_span_and_its_steps(spans, app, monkeypatch):
    logged = []
    monkeypatch.setattr(request_record, "log_request", logged.append)
    r = Client(app).post("/v2/models/xor/infer", headers=TRACEPARENT, json={
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]})
    assert r.status_code == 200
    found = tree(spans)
    (server,) = found["POST /v2/models/{name}/infer"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert server.attributes["http.response.status_code"] == 200
    for name in ("decode", "batch", "encode"):  # inline runner here: its pass is the batch span
        (step,) = found[name]
        assert step.parent.span_id == server.context.span_id, name
    assert found["batch"][0].links[0].context.span_id == server.context.span_id
    assert [line["trace_id"] for line in logged] == [TRACE_ID]  # the request's log line


def test_a_request_refused_for_a_full_queue_is_traced(spans, app, monkeypatch):
    """The middleware refuses it before parsing: it had no span, and its log line no trace id."""
    logged = []
    monkeypatch.setattr(request_record, "log_request", logged.append)
    queue = app.wsgi_app.plane.queue
    monkeypatch.setattr(queue, "max_queue_size", 1)
    monkeypatch.setattr(queue, "waiting", 1)
    r = Client(app).post("/v2/models/xor/infer", headers=TRACEPARENT, json={
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]})
    assert r.status_code == 503
    (server,) = tree(spans)["POST /v2/models/{name}/infer"]
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.attributes["http.response.status_code"] == 503 and not server.status.is_ok
    assert [line["trace_id"] for line in logged] == [TRACE_ID]


def test_a_flask_route_s_span_and_an_error_status(spans, app):
    assert Client(app).get("/v2/models/xor", headers=TRACEPARENT).status_code == 200
    assert Client(app).get("/v2/models/nosuch", headers=TRACEPARENT).status_code == 404
    found = tree(spans)
    ok, missing = found["GET /v2/models/{name}"]
    assert format(ok.parent.span_id, "016x") == PARENT_ID
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status.is_ok or missing.status.status_code.name == "UNSET"  # a client's error is not the server's


def test_one_batch_span_links_every_request_it_serves(spans, registry):
    """The thread batcher: a pass holds the only slot while two requests queue; their pass is ONE span, linked
    to both, each of which also has its queue span."""
    entry, gate = gated(registry.snapshot.get("digits"))
    batcher = ThreadBatcher(max_batch=64, threads=1)
    with_table(batcher, entry)
    tracer = tracing._tracer
    x = np.zeros((1, 25), entry.dtype)
    ids = {}

    def request(k: int):
        with tracer.start_as_current_span(f"request {k}") as span:
            ids[k] = span.get_span_context().span_id
            return batcher.run(entry, x)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(request, 0)
        assert gate.started.wait(30)
        rest = []
        for k in (1, 2):
            rest.append(pool.submit(request, k))
            while queued(batcher) < k:
                threading.Event().wait(0.001)
        gate.gate.set()
        for f in [first, *rest]:
            f.result(30)
    found = tree(spans)
    batches = found["batch"]
    assert len(batches) == 2  # the gated pass, and the merged one
    linked = sorted([sorted(link.context.span_id for link in b.links) for b in batches], key=len)
    assert linked == [[ids[0]], sorted([ids[1], ids[2]])]
    merged = next(b for b in batches if len(b.links) == 2)
    assert merged.attributes["batch.rows"] == 2 and merged.attributes["batch.requests"] == 2
    queues = found["queue"]
    assert sorted(q.parent.span_id for q in queues) == sorted([ids[1], ids[2]])


@fresh_hub
def test_a_batch_its_leader_hands_to_a_greenlet_is_still_the_leader_s_child(spans, registry):
    """The gevent batcher: a leader with a deadline hands a pass that may wait for the model thread to a
    greenlet of its own (service/batching/gevent_batcher.py); that pass's span is still a child of the
    leader's span, linked to both requests."""
    entry = registry.snapshot.get("xor")
    batcher = GeventBatcher(64)
    batcher.tables[id(entry)] = (weakref.ref(entry), CostTable((1, 2, 64), (0.01, 0.011, 0.1)))  # off the loop
    policy, x, ids = QueuePolicy(), np.zeros((1, 2), entry.dtype), {}

    def request(k: int, timeout_us: int | None) -> np.ndarray:
        with tracing._tracer.start_as_current_span(f"request {k}") as span:
            ids[k] = span.get_span_context().span_id
            ticket = policy.admit("xor", timeout_us, time.perf_counter())
            try:
                return batcher.run(entry, x, ticket)
            finally:
                policy.release(ticket)

    gevent.joinall([gevent.spawn(request, 0, 10_000_000), gevent.spawn(request, 1, None)], timeout=30,
                   raise_error=True)
    [batch] = tree(spans)["batch"]
    assert batch.parent is not None and batch.parent.span_id == ids[0]
    assert sorted(link.context.span_id for link in batch.links) == sorted(ids.values())


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


def test_a_grpc_call_s_span_names_only_a_model_name_that_can_be_one(spans):
    """The gRPC server span is made before the call's model name is checked: a 4 MB name was kept as the
    span's attribute (the SDK does not cut attributes, and holds up to 2,048 spans between exports)."""
    from service.grpc.calls import server_span
    from service.grpc.stubs import grpc_service_pb2 as pb

    for name, kept in (("mnist", True), ("x" * 4_000_000, False), ("bad name\n", False)):
        server_span("/inference.GRPCInferenceService/ModelInfer", pb.ModelInferRequest(model_name=name),
                    None).finish(False, {})
        [span] = spans.get_finished_spans()
        assert span.attributes.get("model.name") == (name if kept else None)
        spans.clear()
