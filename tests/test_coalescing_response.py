"""service/http_server/response_writer.py: gunicorn's response writer with the head and a small body in one send.

Driven over a real socket pair whose type keeps message boundaries (``SOCK_SEQPACKET``): each
``send`` the writer makes arrives as one message, so the test counts the writer's sends exactly,
with gunicorn's own request parser and configuration. gunicorn's stock writer is the baseline.
"""

from __future__ import annotations

import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from service.http_server.response_writer import COALESCE_BYTES, CoalescingResponse


def messages(sock: socket.socket) -> list[bytes]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(1 << 20))
        except BlockingIOError:
            return out


def respond(response_class, method: str, status: str, headers: list[tuple[str, str]], body: list[bytes]):
    """One request through gunicorn's parser, answered by ``response_class``; the messages sent."""
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with server, client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        client.sendall(f"{method} /x HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        cfg = Config()
        req = next(iter(RequestParser(cfg, server, ("127.0.0.1", 1))))
        resp = response_class(req, server, cfg)
        resp.start_response(status, headers)
        for chunk in body:
            resp.write(chunk)
        resp.close()
        return messages(client)


def split(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_a_small_answer_leaves_in_one_send_and_is_what_gunicorn_sends():
    headers = [("Content-Type", "application/json"), ("Content-Length", "11")]
    ours = respond(CoalescingResponse, "POST", "200 OK", headers, [b'{"ok":true}'])
    stock = respond(wsgi.Response, "POST", "200 OK", headers, [b'{"ok":true}'])
    assert len(stock) == 2 and len(ours) == 1
    drop_date = [line for line in split(ours[0])[0].split(b"\r\n") if not line.startswith(b"Date:")]
    assert drop_date == [line for line in stock[0].rstrip(b"\r\n").split(b"\r\n") if not line.startswith(b"Date:")]
    assert split(ours[0])[1] == stock[1] == b'{"ok":true}'


@pytest.mark.parametrize(("method", "status", "headers"), [
    ("HEAD", "200 OK", [("Content-Length", "11")]),
    ("GET", "204 No Content", []),
    ("GET", "200 OK", [("Content-Length", "0")]),
])
def test_no_body_the_head_alone(method, status, headers):
    sent = respond(CoalescingResponse, method, status, headers, [b'{"ok":true}'] if method == "HEAD" else [])
    assert len(sent) == 1 and sent[0].endswith(b"\r\n\r\n") and sent[0].startswith(f"HTTP/1.1 {status}".encode())


def test_a_large_body_follows_its_head_uncopied():
    body = b"x" * (COALESCE_BYTES + 1)
    sent = respond(CoalescingResponse, "GET", "200 OK", [("Content-Length", str(len(body)))], [body])
    assert len(sent) == 2 and sent[0].endswith(b"\r\n\r\n") and sent[1] == body


def test_a_chunked_body_head_first_then_its_chunks():
    sent = respond(CoalescingResponse, "GET", "200 OK", [], [b"ab", b"cd"])  # no length: chunked
    assert b"Transfer-Encoding: chunked" in sent[0] and sent[0].endswith(b"\r\n\r\n")
    assert sent[1:] == [b"2\r\nab\r\n", b"2\r\ncd\r\n", b"0\r\n\r\n"]


def test_several_body_pieces_the_first_rides_with_the_head():
    sent = respond(CoalescingResponse, "GET", "200 OK", [("Content-Length", "4")], [b"ab", b"cd"])
    assert len(sent) == 2 and split(sent[0])[1] == b"ab" and sent[1] == b"cd"


def test_a_file_is_sent_after_its_head(tmp_path):
    """``sendfile`` writes to the socket itself: the head held back must already be out."""
    path = tmp_path / "page.css"
    path.write_bytes(b"body { color: red }")
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with server, client, open(path, "rb") as f:
        client.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        cfg = Config()
        resp = CoalescingResponse(next(iter(RequestParser(cfg, server, ("127.0.0.1", 1)))), server, cfg)
        resp.start_response("200 OK", [("Content-Length", "19")])
        resp.write_file(wsgi.FileWrapper(f))
        resp.close()
        sent = b"".join(messages(client))
    assert sent.startswith(b"HTTP/1.1 200 OK") and sent.endswith(b"\r\n\r\nbody { color: red }")
