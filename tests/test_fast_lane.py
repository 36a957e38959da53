"""The fast lane (service/fast_lane.py) answers ``POST /predict`` exactly as Flask would, and hands over what it must.

Every case is sent twice, as the same bytes: to the app as served (the lane in front of Flask) and to
Flask alone (the lane's ``inner``). Status, headers and body must be equal (the request id too, where
the client supplies one), and so must the log line; the cases the lane answers itself are checked
to never reach Flask, and the others to reach it once.
"""

from __future__ import annotations

import gzip
import json
import logging

import pytest
from werkzeug.test import Client

from service.app import create_app
from service.fast_lane import FastLane
from service.registry import ModelRegistry

ID = {"X-Request-ID": "fixed-id-1"}
JSON = {"Content-Type": "application/json", **ID}
ONE = {"model": "xor", "inputs": [[0, 1]]}

# (name, body bytes, headers, answered by the lane itself)
CASES = [
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


def send(wsgi, body: bytes, headers: dict[str, str]):
    response = Client(wsgi).post("/predict", data=body, headers=headers)
    return response.status_code, dict(response.headers), response.get_data()


def log_line(err: str) -> dict:
    line = json.loads([x for x in err.splitlines() if '"service.requests"' in x][-1])
    return {k: v for k, v in line.items() if k not in ("ts", "latency_ms")}


@pytest.mark.parametrize(("body", "headers", "lane_answers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_lane_answers_as_flask_does(app, capsys, body, headers, lane_answers):
    assert isinstance(app.wsgi_app, FastLane)
    flask_alone = app.wsgi_app.inner
    spy = Spy(flask_alone)
    lane = FastLane(spy, app.wsgi_app.plane, app.wsgi_app.max_body)
    capsys.readouterr()
    status, got_headers, got = send(lane, body, headers)
    lane_log = log_line(capsys.readouterr().err)
    want_status, want_headers, want = send(flask_alone, body, headers)
    flask_log = log_line(capsys.readouterr().err)
    assert spy.calls == (0 if lane_answers else 1)
    if headers.get("X-Request-ID") != ID["X-Request-ID"]:  # not ours to keep: a fresh random id each
        assert got_headers.pop("X-Request-ID") != want_headers.pop("X-Request-ID")
        lane_log.pop("request_id"), flask_log.pop("request_id")
    assert (status, got_headers) == (want_status, want_headers)
    if got_headers.get("Content-Encoding") == "gzip":
        got, want = gzip.decompress(got), gzip.decompress(want)
    assert got == want
    assert lane_log == flask_log


def test_only_post_predict_takes_the_lane(app):
    lane = app.wsgi_app
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": "10"}
    assert lane.takes(base) == 10
    for change in ({"REQUEST_METHOD": "PUT"}, {"PATH_INFO": "/predict/"}, {"PATH_INFO": "/gradcheck"},
                   {"CONTENT_LENGTH": ""}, {"CONTENT_LENGTH": "-1"}, {"CONTENT_LENGTH": str(lane.max_body + 1)},
                   {"CONTENT_TYPE": "application/x-www-form-urlencoded"}, {"HTTP_CONTENT_ENCODING": "gzip"}):
        assert lane.takes({**base, **change}) is None, change


def test_a_model_failure_is_a_500_naming_the_request_id(app, monkeypatch, caplog):
    entry = app.extensions["model_registry"].snapshot.get("xor")

    def broken(x):
        raise RuntimeError("a bug")

    monkeypatch.setattr(entry.network, "predict_proba", broken)
    status, headers, body = send(app.wsgi_app, json.dumps(ONE).encode(), JSON)
    assert status == 500 and headers["X-Request-ID"] == "fixed-id-1"
    assert json.loads(body)["error"]["code"] == "internal_error" and "fixed-id-1" in body.decode()
    assert "a bug" not in body.decode()
    assert "unhandled error (request_id=fixed-id-1)" in caplog.text and "a bug" in caplog.text  # the log has it
