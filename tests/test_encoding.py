"""The content-coding rule (service/protocols/content_coding.py), transport-free: limits to the byte, codings in
order, Accept-Encoding negotiation, and every refusal with its status."""

from __future__ import annotations

import gzip
import zlib

import pytest

from service.errors import ServiceError
from service.protocols import content_coding

BODY = b'{"inputs": [[0, 1], [1, 1]]}' * 50


def gz(data: bytes) -> bytes:
    """gzip with a fixed time stamp: the bytes name parametrised tests, which must be the same in every
    test process (pytest-xdist compares them; gzip's own stamp is the second it ran)."""
    return gzip.compress(data, mtime=0)


def status_of(call) -> int:
    with pytest.raises(ServiceError) as info:
        call()
    return info.value.status


@pytest.mark.parametrize("header,data", [
    ("gzip", gz(BODY)), ("x-gzip", gz(BODY)), ("GZIP", gz(BODY)),
    ("deflate", zlib.compress(BODY)), ("deflate", zlib.compress(BODY)[2:-4]),  # zlib format, and raw deflate
    ("identity", BODY), ("", BODY), (None, BODY),
    ("deflate, gzip", gz(zlib.compress(BODY))), ("gzip, identity", gz(BODY)),
    ("gzip", gz(BODY[:100]) + gz(BODY[100:])),  # two gzip members
])
def test_decodes(header, data):
    assert content_coding.decode(data, header, len(BODY)) == BODY


@pytest.mark.parametrize("coding,compress", [("gzip", gz), ("deflate", zlib.compress)])
def test_the_limit_holds_to_the_byte(coding, compress):
    data = compress(BODY)
    assert content_coding.decode(data, coding, len(BODY)) == BODY
    assert status_of(lambda: content_coding.decode(data, coding, len(BODY) - 1)) == 413


def test_a_gzip_trailer_that_understates_the_size_is_stopped_by_the_stream():
    data = gz(BODY)[:-4] + (10).to_bytes(4, "little")
    assert status_of(lambda: content_coding.decode(data, "gzip", len(BODY) // 2)) == 413


def test_the_limit_spans_gzip_members():
    data = gz(BODY) + gz(BODY)
    assert content_coding.decode(data, "gzip", 2 * len(BODY)) == BODY * 2
    assert status_of(lambda: content_coding.decode(data, "gzip", 2 * len(BODY) - 1)) == 413


@pytest.mark.parametrize("header,data,status", [
    ("br", BODY, 415), ("gzip, zstd", BODY, 415), ("gzip," * 5, gz(BODY), 415),
    ("gzip", BODY, 400), ("deflate", b"\x00\x01 not deflate", 400),
    ("gzip", gz(BODY)[:-6], 400), ("deflate", zlib.compress(BODY)[:-3], 400),
    ("deflate", zlib.compress(BODY) + b"tail", 400), ("gzip", gz(BODY) + b"tail", 400),
])
def test_refusals(header, data, status):
    assert status_of(lambda: content_coding.decode(data, header, 10 * len(BODY))) == status


def test_many_gzip_members_are_refused_at_once():
    """Each gzip member's end hands zlib the rest of the body again: many tiny members cost the square of
    their number. 200,000 empty members (4 MB) took a worker's event loop 10 s; now a prompt 400."""
    members = content_coding.MAX_GZIP_MEMBERS
    assert content_coding.decode(gz(b"[1]") * members, "gzip", 10 * members) == b"[1]" * members
    with pytest.raises(ServiceError) as info:
        content_coding.decode(gz(b"") * 200_000, "gzip", 64 << 20)
    assert info.value.status == 400 and f"more than {members} members" in info.value.message


def test_a_refused_coding_is_named_briefly():
    with pytest.raises(ServiceError) as info:
        content_coding.decode(BODY, "br" * 100, 1000)
    assert info.value.message.startswith("Content-Encoding 'brbr") and "(202 characters)" in info.value.message


@pytest.mark.parametrize("header,chosen", [
    (None, None), ("", None), ("identity", None), ("gzip", "gzip"), ("deflate", "deflate"),
    ("gzip, deflate", "gzip"), ("deflate, gzip", "gzip"), ("gzip;q=0.5, deflate", "deflate"),
    ("gzip;q=0", None), ("*", "gzip"), ("*;q=0", None), ("*, gzip;q=0", "deflate"), ("br, gzip;q=0.1", "gzip"),
    ("gzip;q=bad", None),
])
def test_negotiation(header, chosen):
    assert content_coding.negotiate(header) == chosen


@pytest.mark.parametrize("coding,decompress", [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
def test_encode_round_trips(coding, decompress):
    assert decompress(content_coding.encode(BODY, coding)) == BODY
    assert content_coding.decode(content_coding.encode(BODY, coding), coding, len(BODY)) == BODY
