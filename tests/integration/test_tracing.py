"""OpenTelemetry tracing in the real server (service/observability/tracing.py): the spans arrive over OTLP/HTTP at a
receiver in this process, and their tree is checked.

* HTTP (the inference middleware): the server span's trace and parent are the client's ``traceparent``; its children are
  ``read body``, ``decode``, ``queue``, ``batch`` and ``encode``; the request's log line carries its trace id.
* Two requests sent at the same moment to the one worker (``WORKERS=1``, a queue delay so they batch) are served
  by ONE ``batch`` span that links to both server spans.
* A Flask route honours ``traceparent`` too, and a gradcheck has its span.
* gRPC: the call's server span is parented on the metadata's ``traceparent``, with its children.
* Tracing off (``OTEL_TRACES_EXPORTER=none`` beside an endpoint): nothing is sent.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from service.grpc.stubs import grpc_service_pb2 as pb
from service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
from tests.integration.conftest import LocalServer

pytestmark = pytest.mark.skipif(os.environ.get("SERVICE_URL") is not None, reason="starts servers of its own")


class Receiver:
    """An OTLP/HTTP trace receiver on a free loopback port: every span it is sent, as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.posts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver.take(request, self.path)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, request, path: str) -> None:
        assert path == "/v1/traces", path
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    found.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "kind": s.kind, "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano, "status": s.status.code,
                        "attributes": {a.key: attribute(a.value) for a in s.attributes},
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        "service": resource.get("service.name")})
        with self.lock:
            self.posts += 1
            self.spans.extend(found)

    def wait_for(self, predicate, timeout: float = 20.0) -> list[dict]:
        """The spans once ``predicate(spans)`` holds (they come in batches, every OTEL_BSP_SCHEDULE_DELAY)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attribute(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def traceparent() -> tuple[str, str, str]:
    """A client's (header, trace id, span id), sampled."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(spans: list[dict], trace_id: str) -> list[dict]:
    return [s for s in spans if s["trace_id"] == trace_id]


def children(spans: list[dict], parent: dict) -> dict[str, dict]:
    return {s["name"]: s for s in spans if s["parent"] == parent["span_id"]}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory, receiver) -> Iterator[LocalServer]:
    """One HTTP worker and one gRPC process, exporting to the receiver; a request waits up to 300 ms for a
    second to join its batch (PREFERRED_BATCH_SIZE=2: it runs as soon as one has)."""
    server = LocalServer(tmp_path_factory.mktemp("traced"), WORKERS="1", GRPC_WORKERS="1",
                         MAX_QUEUE_DELAY_MICROSECONDS="300000", PREFERRED_BATCH_SIZE="2",
                         OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="nn-under-test",
                         OTEL_BSP_SCHEDULE_DELAY="100").start()
    yield server
    assert server.stop() == 0, server.read_log()[-3000:]


def v2_body(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                        "data": [v for row in rows for v in row]}]}


def test_an_http_request_s_spans_continue_the_client_s_trace(traced, receiver):
    header, trace_id, parent_id = traceparent()
    r = requests.post(f"{traced.url}/v2/models/xor/infer", json=v2_body([[0, 1]]),
                      headers={"traceparent": header, "tracestate": "vendor=1"}, timeout=30)
    assert r.status_code == 200, r.text
    # the server span ends last (after its children): waiting for it, the whole tree has arrived
    spans = receiver.wait_for(lambda s: any(x["name"] == "POST /v2/models/{name}/infer" for x in of_trace(s, trace_id)))
    mine = of_trace(spans, trace_id)
    (server,) = [s for s in mine if s["name"] == "POST /v2/models/{name}/infer"]
    assert server["parent"] == parent_id  # the client's span
    assert server["kind"] == 2  # SERVER
    assert server["service"] == "nn-under-test"
    attrs = server["attributes"]
    assert attrs["http.route"] == "/v2/models/{name}/infer"
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.path"] == "/v2/models/xor/infer"
    steps = children(mine, server)
    # a queue span only if it waited in a queue: alone in the worker it runs at once (the next test's case)
    assert {"read body", "decode", "batch", "encode"} <= set(steps) <= {"read body", "decode", "queue", "batch",
                                                                       "encode"}, sorted(steps)
    batch = steps["batch"]
    assert (trace_id, server["span_id"]) in batch["links"]
    assert batch["attributes"]["model.name"] == "xor"
    for name in steps:  # within the server span, in order
        assert server["start"] <= steps[name]["start"] <= steps[name]["end"] <= server["end"], name
    assert steps["read body"]["end"] <= steps["decode"]["end"] <= steps["batch"]["start"]
    assert steps["batch"]["end"] <= steps["encode"]["start"]
    # the request's one JSON log line names the trace
    lines = [json.loads(line) for line in traced.read_log().splitlines() if line.startswith("{")]
    logged = [e for e in lines if e.get("message") == "request" and e.get("trace_id") == trace_id]
    assert len(logged) == 1 and logged[0]["path"] == "/v2/models/xor/infer"


def test_one_batch_span_links_to_both_concurrent_requests(traced, receiver):
    """Two clients on connections already open (so the worker knows it is not alone) send at once."""
    sessions = [requests.Session(), requests.Session()]
    for s in sessions:
        assert s.get(f"{traced.url}/healthz", timeout=10).status_code == 200
    contexts = [traceparent(), traceparent()]
    barrier = threading.Barrier(2)
    answers: list = [None, None]

    def send(k: int) -> None:
        barrier.wait()
        answers[k] = sessions[k].post(f"{traced.url}/predict", json={"model": "xor", "inputs": [[k, 1]]},
                                      headers={"traceparent": contexts[k][0]}, timeout=30)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [a.status_code for a in answers] == [200, 200]
    ids = {c[1] for c in contexts}
    spans = receiver.wait_for(
        lambda s: sum(x["name"] == "POST /predict" and x["trace_id"] in ids for x in s) == 2
        and any(x["name"] == "batch" and len(x["links"]) == 2 for x in s))
    servers = {s["trace_id"]: s for s in spans if s["name"] == "POST /predict" and s["trace_id"] in ids}
    assert len(servers) == 2
    for _, trace_id, parent_id in contexts:
        assert servers[trace_id]["parent"] == parent_id
    wanted = {(trace_id, servers[trace_id]["span_id"]) for trace_id in ids}
    batches = [s for s in spans if s["name"] == "batch" and set(s["links"]) & wanted]
    assert len(batches) == 1, batches  # ONE pass served both
    (batch,) = batches
    assert set(batch["links"]) == wanted
    assert batch["attributes"]["batch.rows"] == 2 and batch["attributes"]["batch.requests"] == 2
    leader = next(s for s in servers.values() if s["span_id"] == batch["parent"])  # run by one of them
    assert batch["trace_id"] == leader["trace_id"]
    for trace_id, server in servers.items():  # each waited in the queue, under its own span
        queues = [s for s in of_trace(spans, trace_id) if s["name"] == "queue" and s["parent"] == server["span_id"]]
        assert len(queues) == 1 and queues[0]["end"] <= batch["end"]


def test_a_flask_route_and_a_gradcheck_are_traced(traced, receiver):
    header, trace_id, parent_id = traceparent()
    r = requests.post(f"{traced.url}/gradcheck", json={"model": "xor", "inputs": [[0, 1]], "labels": ["1"]},
                      headers={"traceparent": header}, timeout=60)
    assert r.status_code == 200, r.text
    spans = receiver.wait_for(lambda s: any(x["name"] == "POST /gradcheck" for x in of_trace(s, trace_id)))
    (server,) = [s for s in of_trace(spans, trace_id) if s["name"] == "POST /gradcheck"]
    assert server["parent"] == parent_id
    assert server["attributes"]["http.response.status_code"] == 200
    assert "gradcheck" in children(of_trace(spans, trace_id), server)


def test_a_grpc_call_s_spans_continue_the_metadata_s_trace(traced, receiver):
    header, trace_id, parent_id = traceparent()
    x = np.array([[1, 0]], np.float32)
    request = pb.ModelInferRequest(model_name="xor", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 2])], raw_input_contents=[x.tobytes()])
    with grpc.insecure_channel(traced.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=[("traceparent", header)], timeout=30)
    assert response.model_name == "xor"
    spans = receiver.wait_for(lambda s: any(x["name"] == "inference.GRPCInferenceService/ModelInfer"
                                            for x in of_trace(s, trace_id)))  # the last to end
    mine = of_trace(spans, trace_id)
    (server,) = [s for s in mine if s["name"] == "inference.GRPCInferenceService/ModelInfer"]
    assert server["parent"] == parent_id and server["kind"] == 2
    assert server["attributes"]["rpc.system"] == "grpc" and server["attributes"]["rpc.grpc.status_code"] == 0
    steps = children(mine, server)
    assert {"decode", "batch", "encode"} <= set(steps), sorted(steps)
    assert (trace_id, server["span_id"]) in steps["batch"]["links"]


def test_nothing_is_sent_with_tracing_off(tmp_path, receiver):
    """OTEL_TRACES_EXPORTER=none wins over an endpoint (as the SDK's own rule): no span, and no trace id logged."""
    before = receiver.posts
    server = LocalServer(tmp_path, WORKERS="1", GRPC_WORKERS="1", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                         OTEL_TRACES_EXPORTER="none", OTEL_BSP_SCHEDULE_DELAY="100").start()
    try:
        header, _, _ = traceparent()
        r = requests.post(f"{server.url}/predict", json={"model": "xor", "inputs": [[0, 1]]},
                          headers={"traceparent": header}, timeout=30)
        assert r.status_code == 200
    finally:
        assert server.stop() == 0
    time.sleep(0.5)
    assert receiver.posts == before
    lines = [json.loads(line) for line in server.read_log().splitlines() if line.startswith("{")]
    requests_logged = [e for e in lines if e.get("message") == "request"]
    assert requests_logged and all("trace_id" not in e for e in requests_logged)
