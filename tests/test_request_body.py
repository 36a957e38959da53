"""A body read into one buffer (``service/http_server/request_body.py``): ``receive`` fills it from what gunicorn
read ahead and then straight from the socket, ``WholeBody`` hands the inference middleware that very buffer and everyone
else ``bytes``, and a binary tensor ends up a view of it, aligned, through decode and the data plane: no copy
between the socket and the forward pass."""

from __future__ import annotations

import ctypes
import io
import socket
import threading

import numpy as np
import pytest

from service.dataplane.dataplane import as_batch
from service.http_server.request_body import TENSOR_ALIGNMENT, WholeBody, aligned_buffer, receive, tensor_offset
from service.protocols import v2_http
from service.repository.registry import ModelRegistry


class Unreader:
    """gunicorn's read-ahead buffer, as ``receive`` uses it."""

    def __init__(self, ahead: bytes) -> None:
        self.ahead, self.unread_data = ahead, b""

    def take_buffered(self) -> bytes:
        ahead, self.ahead = self.ahead, b""
        return ahead

    def unread(self, data: bytes) -> None:
        self.unread_data = data + self.unread_data


class Request:
    def __init__(self, ahead: bytes, headers: list[tuple[str, str]] = ()) -> None:
        self.unreader, self.headers = Unreader(ahead), list(headers)


def address(data: bytearray | memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(data))


@pytest.mark.parametrize("ahead", [0, 1, 100, 5000])
def test_receive_takes_the_read_ahead_then_the_socket(ahead):
    body = bytes(range(256)) * 40
    server, client = socket.socketpair()
    with server, client:
        sender = threading.Thread(target=client.sendall, args=(body[ahead:],))
        sender.start()
        req = Request(body[:ahead])
        data = receive(req, server, len(body))
        sender.join()
    assert isinstance(data, bytearray) and data == body and req.unreader.unread_data == b""


def test_receive_puts_back_a_pipelined_request():
    body, following = b"x" * 300, b"POST /predict HTTP/1.1\r\n"
    server, client = socket.socketpair()
    with server, client:
        req = Request(body + following)
        assert receive(req, server, len(body)) == body
    assert req.unreader.unread_data == following


def test_receive_stops_short_when_the_client_hangs_up():
    server, client = socket.socketpair()
    with server:
        client.sendall(b"abc")
        client.close()
        assert receive(Request(b"12"), server, 100) == b"12abc"


@pytest.mark.parametrize("offset", [0, 1, 193, 4096])
@pytest.mark.parametrize("length", [2 * TENSOR_ALIGNMENT, 4097, 803_009])
def test_the_tensor_lands_aligned(offset, length):
    offset = min(offset, length)
    data = aligned_buffer(length, offset)
    assert len(data) == length and not any(data) and (address(data) + offset) % TENSOR_ALIGNMENT == 0


def test_the_tensor_offset_is_the_json_headers_length():
    assert tensor_offset(Request(b"", [("INFERENCE-HEADER-CONTENT-LENGTH", "193")]), 1000) == 193
    for value in ("x", "-1", "2000", "١٢"):  # not a byte count within the body: no offset
        assert tensor_offset(Request(b"", [("INFERENCE-HEADER-CONTENT-LENGTH", value)]), 1000) == 0
    assert tensor_offset(Request(b""), 1000) == 0


def test_the_lanes_read_is_the_buffer_itself_and_every_other_read_bytes():
    data = bytearray(b"line one\nline two\n")
    whole = WholeBody(data)
    assert whole.read(len(data)) is data and whole.read(10) == b""
    for read in (lambda b: b.read(), lambda b: b.read(-1), lambda b: b.read(None), lambda b: b.read(5) + b.read()):
        got = read(WholeBody(bytearray(data)))
        assert got == data and type(got) is bytes
    assert WholeBody(bytearray(data)).readline() == b"line one\n"
    assert list(WholeBody(bytearray(data))) == [b"line one\n", b"line two\n"]
    assert WholeBody(bytearray(data)).readlines() == [b"line one\n", b"line two\n"]
    buffer = bytearray(4)
    assert WholeBody(bytearray(data)).readinto(buffer) == 4 and buffer == b"line"


def test_a_binary_tensor_is_a_view_of_the_body_down_to_the_forward_pass(model_repository):
    """The copies of a V2 binary request between the socket and BLAS: none (the kernel's into the buffer)."""
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    head = b'{"inputs": [{"name": "input", "shape": [4, 784], "datatype": "FP32", "parameters": ' \
           b'{"binary_data_size": 12544}}]}'
    raw = head + x.tobytes()
    data = aligned_buffer(len(raw), len(head))
    data[:] = raw
    body = WholeBody(data).read(len(data))
    tensor = v2_http.decode(body, str(len(head)), "mnist", None, lambda: 10**9).tensor
    assert np.shares_memory(tensor, np.frombuffer(data, np.uint8)) and tensor.flags.aligned
    assert not tensor.flags.writeable  # a view of a bytearray, but read-only as a view of bytes was
    entry = ModelRegistry(model_repository).load_all().snapshot.get("mnist")
    batch = as_batch(tensor, entry)
    assert np.shares_memory(batch, np.frombuffer(data, np.uint8))  # as the forward pass reads it
    np.testing.assert_array_equal(batch, x)


def test_a_handed_over_body_is_bytes_for_flask():
    data = bytearray(b'{"model": "xor"}')
    whole = WholeBody(data)
    body = whole.read(len(data))
    flask_input = io.BytesIO(body)  # what the middleware puts back in wsgi.input when it hands over
    assert flask_input.read() == data


def test_a_chunked_body_fits_beside_a_stalled_upload_of_max_body_bytes():
    """A chunked body reserved MAX_BODY_BYTES + 1 of the budget (it is read to one byte more, to tell one
    too large): beside a stalled upload of MAX_BODY_BYTES, the default budget of twice that had no room,
    and a 30-byte chunked request waited REQUEST_TIMEOUT / 2, then got a 503."""
    import types

    from service.http_server.request_body import BodyReader

    reader = BodyReader(max_body=1 << 20, request_timeout=2.0, budget=2 << 20)
    chunked = types.SimpleNamespace(body=io.BytesIO(b'{"model": "xor", "inputs": [[0, 1]]}'))
    with reader.budget.reserve(reader.max_body, 0):  # the stalled upload, holding its room
        # sock None: a refusal would have to write to it, and fail the test
        assert reader.read(chunked, None, reader.max_body + 1, continues=False) == chunked.body.getvalue()
