"""The inference middleware (service/app/inference_middleware.py) answers ``/predict``, V1 ``:predict`` and
V2 ``infer`` exactly as Flask would, and hands over what it must.

Every case is sent twice, as the same bytes: to the app as served (the middleware in front of Flask) and to
Flask alone (the middleware's ``inner``). Status, headers and body must be equal (the request id too, where
the client supplies one), and so must the log line; the cases the middleware answers itself are checked
to never reach Flask, and the others to reach it once.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import time

import numpy as np
import pytest
from werkzeug.test import Client

from service.app import create_app
from service.app.inference_middleware import RECEIVED, InferenceMiddleware
from service.dataplane.dataplane import DataPlane
from service.observability import request_record
from service.protocols import v1_http
from service.repository.registry import ModelRegistry

ID = {"X-Request-ID": "fixed-id-1"}
JSON = {"Content-Type": "application/json", **ID}
ONE = {"model": "xor", "inputs": [[0, 1]]}

# (name, body bytes, headers, answered by the middleware itself), all sent to POST /predict
PREDICT_CASES = [
    ("xor", json.dumps(ONE).encode(), JSON, True),
    ("digits nested", json.dumps({"model": "digits", "inputs": [[[0.5] * 5] * 5, [[1] * 5] * 5]}).encode(),
     JSON, True),
    ("flat and nested mixed", json.dumps({"model": "digits", "inputs": [[[0.5] * 5] * 5, [1] * 25]}).encode(),
     JSON, False),
    ("a version", json.dumps({"model": "xor", "version": 1, "inputs": [[1, 1]]}).encode(), JSON, True),
    ("charset", json.dumps(ONE).encode(), {**JSON, "Content-Type": "application/json; charset=utf-8"}, True),
    ("gzip answer", json.dumps(ONE).encode(), {**JSON, "Accept-Encoding": "gzip, deflate"}, True),
    ("deflate answer", json.dumps(ONE).encode(), {**JSON, "Accept-Encoding": "deflate"}, True),
    ("no coding acceptable", json.dumps(ONE).encode(), {**JSON, "Accept-Encoding": "br"}, True),
    ("an unknown model", json.dumps({"model": "nope", "inputs": [[0, 1]]}).encode(), JSON, True),
    ("a missing version", json.dumps({"model": "xor", "version": 9, "inputs": [[0, 1]]}).encode(), JSON, True),
    ("over MAX_BATCH", json.dumps({"model": "xor", "inputs": [[0, 1]] * 9}).encode(), JSON, True),
    ("a value out of range", json.dumps({"model": "xor", "inputs": [[0, 7]]}).encode(), JSON, True),
    ("the wrong width", json.dumps({"model": "xor", "inputs": [[0, 1, 1]]}).encode(), JSON, True),
    ("NaN", b'{"model": "xor", "inputs": [[NaN, 1]]}', JSON, True),
    ("malformed JSON", b'{"model": "xor", "inputs": [[0, 1]', JSON, False),
    ("not an object", b'[1, 2]', JSON, False),
    ("a boolean", b'{"model": "xor", "inputs": [[true, 1]]}', JSON, False),
    ("a string", b'{"model": "xor", "inputs": [["0", 1]]}', JSON, False),
    ("ragged rows", b'{"model": "xor", "inputs": [[0, 1], [1]]}', JSON, False),
    ("no inputs", b'{"model": "xor", "inputs": []}', JSON, False),
    ("an extra field", b'{"model": "xor", "inputs": [[0, 1]], "x": 1}', JSON, False),
    ("a model name too long", json.dumps({"model": "m" * 300, "inputs": [[0, 1]]}).encode(), JSON, False),
    ("text/plain", json.dumps(ONE).encode(), {**ID, "Content-Type": "text/plain"}, False),
    ("gzip body", gzip.compress(json.dumps(ONE).encode()), {**JSON, "Content-Encoding": "gzip"}, False),
    ("a bad request id", json.dumps(ONE).encode(), {**JSON, "X-Request-ID": "bad id <script>"}, True),
]
V1 = "/v1/models/xor:predict"
V2 = "/v2/models/xor/infer"
V2_ONE = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}
V2_HEAD = json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                  "parameters": {"binary_data_size": 8}}],
                      "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
V2_BINARY = V2_HEAD + np.array([1, 0], dtype="<f4").tobytes()
OCTETS = {**ID, "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(V2_HEAD))}
# (name, path, body bytes, headers, answered by the middleware itself)
CASES = [(name, "/predict", *rest) for name, *rest in PREDICT_CASES] + [
    ("v1 rows", V1, b'{"instances": [[0, 1], [1, 1]]}', JSON, True),
    ("v1 columns, named", V1, b'{"inputs": {"input": [[0, 1]]}}', ID, True),
    ("v1 a version", "/v1/models/xor/versions/1:predict", b'{"instances": [[1, 0]]}', JSON, True),
    ("v1 a missing version", "/v1/models/xor/versions/9:predict", b'{"instances": [[1, 0]]}', JSON, True),
    ("v1 version 0", "/v1/models/xor/versions/0:predict", b'{"instances": [[1, 0]]}', JSON, False),
    ("v1 an unknown model", "/v1/models/nope:predict", b'{"instances": [[1, 0]]}', JSON, True),
    ("v1 out of range", V1, b'{"instances": [[1, 5]]}', JSON, True),
    ("v1 gzip answer", V1, b'{"instances": [[1, 0]]}', {**JSON, "Accept-Encoding": "gzip"}, True),
    ("v1 both formats", V1, b'{"instances": [[1, 0]], "inputs": [[1, 0]]}', JSON, False),
    ("v1 a boolean", V1, b'{"instances": [[true, 0]]}', JSON, False),
    ("v1 a form", V1, b'{"instances": [[1, 0]]}', {**ID, "Content-Type": "application/x-www-form-urlencoded"},
     False),
    ("v2 json", V2, json.dumps(V2_ONE).encode(), JSON, True),
    ("v2 a version, labels too", "/v2/models/xor/versions/1/infer",
     json.dumps({**V2_ONE, "id": "r1", "outputs": [{"name": "probabilities"}, {"name": "label"}]}).encode(),
     JSON, True),
    ("v2 binary in and out", V2, V2_BINARY, OCTETS, True),
    ("v2 binary, the header too long", V2, V2_BINARY,
     {**OCTETS, "Inference-Header-Content-Length": str(len(V2_BINARY) + 1)}, False),
    ("v2 an unknown output", V2, json.dumps({**V2_ONE, "outputs": [{"name": "nope"}]}).encode(), JSON, False),
    ("v2 an unknown model", "/v2/models/nope/infer", json.dumps(V2_ONE).encode(), JSON, True),
    ("v2 out of range", V2, json.dumps({"inputs": [{**V2_ONE["inputs"][0], "data": [0, 3]}]}).encode(), JSON, True),
    ("v2 the body names another model", V2, json.dumps({**V2_ONE, "model_name": "digits"}).encode(), JSON, False),
    ("v2 an explanation", V2, json.dumps({**V2_ONE, "outputs": [{"name": "attributions"}]}).encode(), JSON, False),
    ("v2 a name Flask's path model refuses", "/v2/models/-x/infer", json.dumps(V2_ONE).encode(), JSON, False),
]


@pytest.fixture(autouse=True)
def request_log():
    """The per-request log line on (its level is the server's LOG_LEVEL; tests run at warning)."""
    logger = logging.getLogger("service.requests")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def app(model_repository):
    return create_app({"max_batch": 8}, model_registry=ModelRegistry(model_repository).load_all())


class Spy:
    """A WSGI app in front of another that counts the calls it passes on."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.inner(environ, start_response)


def send(wsgi, body: bytes, headers: dict[str, str], path: str = "/predict"):
    response = Client(wsgi).post(path, data=body, headers=headers)
    return response.status_code, dict(response.headers), response.get_data()


def log_line(err: str) -> dict:
    line = json.loads([x for x in err.splitlines() if '"service.requests"' in x][-1])
    return {k: v for k, v in line.items() if k not in ("ts", "latency_ms")}


@pytest.mark.parametrize(("path", "body", "headers", "middleware_answers"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_middleware_answers_as_flask_does(app, capsys, monkeypatch, path, body, headers, middleware_answers):
    assert isinstance(app.wsgi_app, InferenceMiddleware)
    recorded = []  # what each path counts in /metrics: endpoint (the Flask rule), method, path, model, batch, status
    record = request_record.record
    monkeypatch.setattr(request_record, "record", lambda *args: (recorded.append(args[1:7]), record(*args)))
    flask_alone = app.wsgi_app.inner
    spy = Spy(flask_alone)
    middleware = InferenceMiddleware(spy, app.wsgi_app.plane, app.wsgi_app.max_body)
    capsys.readouterr()
    status, got_headers, got = send(middleware, body, headers, path)
    middleware_log = log_line(capsys.readouterr().err)
    want_status, want_headers, want = send(flask_alone, body, headers, path)
    flask_log = log_line(capsys.readouterr().err)
    assert spy.calls == (0 if middleware_answers else 1)
    if headers.get("X-Request-ID") != ID["X-Request-ID"]:  # not ours to keep: a fresh random id each
        assert got_headers.pop("X-Request-ID") != want_headers.pop("X-Request-ID")
        middleware_log.pop("request_id"), flask_log.pop("request_id")
    assert (status, got_headers) == (want_status, want_headers)
    if got_headers.get("Content-Encoding") == "gzip":
        got, want = gzip.decompress(got), gzip.decompress(want)
    assert got == want
    assert middleware_log == flask_log
    assert len(recorded) == 2 and recorded[0] == recorded[1], recorded


def test_only_the_inference_routes_take_the_lane(app):
    middleware = app.wsgi_app
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": "10"}
    assert middleware.takes(base)[2] == 10
    for path in ("/v1/models/mnist:predict", "/v1/models/a.b-c_d/versions/12:predict", "/v2/models/mnist/infer",
                 "/v2/models/mnist/versions/123456789/infer"):
        for content_type in ("application/json", "application/octet-stream", ""):
            assert middleware.takes({**base, "PATH_INFO": path, "CONTENT_TYPE": content_type}) is not None, path
    for change in ({"REQUEST_METHOD": "PUT"}, {"PATH_INFO": "/predict/"}, {"PATH_INFO": "/gradcheck"},
                   {"PATH_INFO": "/explain"}, {"PATH_INFO": "/v1/models/mnist:explain"},
                   {"PATH_INFO": "/v1/models/mnist/versions/01:predict"}, {"PATH_INFO": "/v2/models/mnist/infer/"},
                   {"PATH_INFO": "/v2/models/mnist/versions/0/infer"}, {"PATH_INFO": "/v2/models/a/b/infer"},
                   {"PATH_INFO": "/v2/models/mnist/versions/1234567890/infer"}, {"PATH_INFO": "/v2/repository/index"},
                   {"CONTENT_LENGTH": ""}, {"CONTENT_LENGTH": "-1"}, {"CONTENT_LENGTH": str(middleware.max_body + 1)},
                   {"CONTENT_TYPE": "application/x-www-form-urlencoded"}, {"CONTENT_TYPE": ""},
                   {"HTTP_CONTENT_ENCODING": "gzip"}):
        assert middleware.takes({**base, **change}) is None, change
    v2 = {**base, "PATH_INFO": "/v2/models/mnist/infer"}
    for change in ({"CONTENT_TYPE": "multipart/form-data; boundary=x"}, {"HTTP_CONTENT_ENCODING": "deflate"},
                   {"REQUEST_METHOD": "GET"}):
        assert middleware.takes({**v2, **change}) is None, change


@pytest.mark.parametrize(("path", "body"), [("/predict", json.dumps(ONE).encode()),
                                            (V1, b'{"instances": [[0, 1]]}'), (V2, json.dumps(V2_ONE).encode())])
def test_a_model_failure_is_a_500_naming_the_request_id(app, monkeypatch, caplog, path, body):
    entry = app.extensions["model_registry"].snapshot.get("xor")

    def broken(x):
        raise RuntimeError("a bug")

    monkeypatch.setattr(entry.network, "predict_proba", broken)
    spy = Spy(app.wsgi_app.inner)
    status, headers, body = send(InferenceMiddleware(spy, app.wsgi_app.plane, app.wsgi_app.max_body), body, JSON, path)
    assert spy.calls == 0 and status == 500 and headers["X-Request-ID"] == "fixed-id-1"
    error = json.loads(body)["error"]
    assert (error["code"] == "internal_error") if path == "/predict" else isinstance(error, str)
    assert "fixed-id-1" in body.decode()
    assert "a bug" not in body.decode()
    assert "unhandled error (request_id=fixed-id-1)" in caplog.text and "a bug" in caplog.text  # the log has it


def test_a_bug_while_decoding_is_handed_to_flask_which_answers_a_500(app, monkeypatch, caplog):
    def broken(raw, max_values):
        raise KeyError("a bug")

    monkeypatch.setattr(v1_http, "decode", broken)
    spy = Spy(app.wsgi_app.inner)
    status, headers, body = send(InferenceMiddleware(spy, app.wsgi_app.plane, app.wsgi_app.max_body),
                                 b'{"instances": [[0, 1]]}', JSON, V1)
    assert spy.calls == 1 and status == 500 and headers["X-Request-ID"] == "fixed-id-1"
    assert "fixed-id-1" in json.loads(body)["error"]
    assert "a bug" not in body.decode() and "a bug" in caplog.text


@pytest.mark.parametrize("path,body", [
    ("/predict", {"model": "xor", "inputs": [[0, 1]]}),
    ("/v1/models/xor:predict", {"instances": [[0, 1]]}),
    ("/v2/models/xor/infer", V2_ONE),
])
def test_a_utf8_rollout_key_header_is_one_key_in_every_protocol(app, monkeypatch, path, body):
    """WSGI hands a header's UTF-8 bytes over as latin-1 text: /predict and V1 routed on that mojibake
    where V2 (and its rollout_key parameter) routed on the text sent, so one client split across versions."""
    seen = []
    infer = DataPlane.infer
    monkeypatch.setattr(DataPlane, "infer", lambda self, *args, **kwargs: (seen.append(kwargs.get("route_key")),
                                                                          infer(self, *args, **kwargs))[1])
    headers = {"Content-Type": "application/json", "X-Rollout-Key": "müller-ключ".encode().decode("latin-1")}
    for wsgi in (app.wsgi_app, app.wsgi_app.inner):  # the middleware, and Flask alone
        assert send(wsgi, json.dumps(body).encode(), headers, path)[0] == 200
    assert seen == ["müller-ключ", "müller-ключ"]


def test_a_deadline_counts_from_when_the_server_had_the_request(app):
    """The HTTP worker reads a request, then (with MAX_QUEUE_SIZE) waits for its turn before the middleware
    parses it: it says when it had the request (``RECEIVED``), and the deadline counts from there. One
    that waited past its 5 ms is answered 504 uncomputed; the same request just received is served."""
    body = json.dumps({"model": "xor", "inputs": [[0, 1]]}).encode()

    def environ(received: float | None) -> dict:
        env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "CONTENT_TYPE": JSON["Content-Type"],
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "HTTP_X_TIMEOUT_MICROSECONDS": "5000"}
        if received is not None:
            env[RECEIVED] = received
        return env

    assert app.wsgi_app.respond(environ(None))[0] == 200
    assert app.wsgi_app.respond(environ(time.perf_counter()))[0] == 200
    status, _, out = app.wsgi_app.respond(environ(time.perf_counter() - 0.05))  # waited 50 ms for its turn
    assert status == 504 and b"deadline_exceeded" in out
