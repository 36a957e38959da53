"""The worker's own writer of the inference middleware's answers (``response_writer.write_answer``, in
service/http_server/response_writer.py) writes what gunicorn's Response writes.

Each request is parsed by gunicorn's own parser (with the service's configuration: the C parser),
then answered twice with the same status, headers and body: by gunicorn's ``Response`` as the worker
installs it (``CoalescingResponse``) and by ``response_writer.write_answer``. The bytes on the socket must be
equal, send for send, and so must the decision to close the connection. The environ the middleware is
given must hold what ``wsgi.create`` would give it for the keys it reads.
"""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest
from gunicorn import util as gunicorn_util
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from service.app.inference_middleware import STATUS_LINES
from service.http_server import response_writer
from service.http_server.response_writer import COALESCE_BYTES, CoalescingResponse

NOW = 1_700_000_000
ANSWER = [("Content-Type", "application/json"), ("Content-Length", "17"), ("X-Request-ID", "fixed-id-1"),
          ("X-Content-Type-Options", "nosniff")]


def config() -> Config:
    cfg = Config()
    cfg.set("http_parser", "fast")  # as service/http_server/gunicorn_conf.py
    return cfg


def parsed(raw: bytes):
    return next(iter(RequestParser(config(), [raw], ("127.0.0.1", 5000))))


class Capture:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    send = sendall


def by_gunicorn(req, status: int, headers, body: bytes, must_close: bool) -> tuple[list[bytes], bool]:
    sock = Capture()
    resp = CoalescingResponse(req, sock, config())
    if must_close:
        resp.force_close()
    resp.start_response(STATUS_LINES[status], headers)
    resp.write(body)
    resp.close()
    return sock.sends, resp.should_close()


def request(version: str = "1.1", connection: str | None = None, extra: str = "") -> bytes:
    head = f"POST /predict HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    if connection is not None:
        head += f"Connection: {connection}\r\n"
    return (head + extra + "\r\n{}").encode()


REQUESTS = {
    "1.1": request(),
    "1.1 close": request(connection="close"),
    "1.1 keep-alive": request(connection="keep-alive"),
    "1.0": request("1.0"),
    "1.0 keep-alive": request("1.0", "keep-alive"),
}
ANSWERS = {
    "200": (200, ANSWER, b'{"classes": [1]} '),
    "gzip": (200, [*ANSWER[:-1], ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")], b"\x1f\x8b" * 9),
    "404": (404, ANSWER, b'{"error": "nope"}'),
    "503 with Retry-After": (503, [*ANSWER, ("Retry-After", "1")], b'{"error": "busy!"}'),
    "422": (422, ANSWER, b'{"error": "wrong"}'),
    "a body at the one-send limit": (200, ANSWER, b"x" * COALESCE_BYTES),
    "a body past it": (200, ANSWER, b"x" * (COALESCE_BYTES + 1)),
}


@pytest.fixture
def fixed_date(monkeypatch):
    monkeypatch.setattr(gunicorn_util, "http_date", lambda timestamp=None: formatdate(NOW, usegmt=True))
    monkeypatch.setattr(response_writer, "http_date", lambda timestamp=None: formatdate(NOW, usegmt=True))


@pytest.mark.parametrize("must_close", [False, True], ids=["keep-alive", "worker closes"])
@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
@pytest.mark.parametrize("raw", REQUESTS.values(), ids=REQUESTS.keys())
def test_bytes_and_closing_equal_gunicorns(raw, answer, must_close, fixed_date):
    status, headers, body = answer
    headers = [(name, str(len(body)) if name == "Content-Length" else value) for name, value in headers]
    expected, expected_close = by_gunicorn(parsed(raw), status, headers, body, must_close)
    sock = Capture()
    close = response_writer.write_answer(sock, parsed(raw), status, headers, body, must_close)
    assert sock.sends == expected
    assert close is expected_close


def test_the_keep_alive_rules_are_gunicorns():
    closes = {name: response_writer.write_answer(Capture(), parsed(raw), *ANSWERS["200"], False)
              for name, raw in REQUESTS.items()}
    assert closes == {"1.1": False, "1.1 close": True, "1.1 keep-alive": False, "1.0": True, "1.0 keep-alive": False}


ENVIRON_KEYS = ["REQUEST_METHOD", "PATH_INFO", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_REQUEST_ID",
                "HTTP_ACCEPT_ENCODING", "HTTP_CONTENT_ENCODING", "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"]


@pytest.mark.parametrize("extra", [
    "",
    "X-Request-ID: abc\r\nAccept-Encoding: gzip\r\n",
    "Accept-Encoding: gzip\r\nAccept-Encoding: br\r\n",  # repeated: joined with a comma, as gunicorn does
    "Content-Encoding: gzip\r\nInference-Header-Content-Length: 12\r\n",
])
def test_the_environ_holds_what_wsgi_create_gives(extra):
    req = parsed(request(extra=extra))
    _, full = wsgi.create(req, Capture(), ("127.0.0.1", 5000), "127.0.0.1:8000", config())
    lean = response_writer.middleware_environ(parsed(request(extra=extra)))
    assert {key: lean.get(key) for key in ENVIRON_KEYS} == {key: full.get(key) for key in ENVIRON_KEYS}
    assert lean["wsgi.input"].read() == b"{}"


@pytest.mark.parametrize("path", ["/v2/models/m%6Eist/infer", "/predict%2F"])
def test_a_path_gunicorn_rewrites_goes_its_way(path):
    raw = request().replace(b"/predict", path.encode())
    assert response_writer.middleware_environ(parsed(raw)) is None


def test_the_date_is_gunicorns_and_moves_on():
    for _ in range(3):  # the same second on both sides (a boundary in between: try again)
        ours, theirs = response_writer.http_date(), gunicorn_util.http_date()
        if ours == theirs:
            break
    assert ours == theirs
    for moment in [NOW, NOW + 0.5, NOW + 1, NOW + 61.2, time.time()]:  # cached within a second, new after
        assert response_writer.http_date(moment) == gunicorn_util.http_date(moment)
