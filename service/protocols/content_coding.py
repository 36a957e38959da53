"""Content codings of message bodies (gzip, deflate): one rule for every protocol, free of any transport.

Requests: ``Content-Encoding`` may be ``gzip`` (``x-gzip``), ``deflate`` or ``identity``, or a
list of them in the order applied. Decoding streams through zlib with a hard output limit: at
most ``limit + 1`` bytes are ever inflated, so a small body that would inflate to gigabytes (a
"zip bomb") costs no more than a body of the limit before it is refused with a 413, and one
whose gzip trailer states its size is refused before inflating anything. Any other
coding is a 415 that names the supported ones; data that is not what its coding says is a 400.

Responses: :func:`negotiate` picks gzip or deflate from ``Accept-Encoding`` (q-values, ``*``,
``q=0`` honoured) and :func:`encode` compresses. ``deflate`` is the zlib format (RFC 9110), as
tritonclient sends and reads it; a raw deflate stream, which some clients send, is read too.

A second front-end (gRPC carries its own compression per message) can reuse :func:`decode` with
the same limit.
"""

from __future__ import annotations

import zlib

from service.errors import ServiceError, bad_request, quote

SUPPORTED = ("gzip", "deflate")
ALIASES = {"x-gzip": "gzip"}
MAX_CODINGS = 4  # layers one body may carry (each is bounded by the limit anyway)
# gzip members one body may hold. Each member's end hands zlib the rest of the body again, so many
# tiny members cost the square of their number: 838,000 empty members (16 MB) held a worker's event
# loop past gunicorn's timeout. Clients write one member; concatenated files, a few.
MAX_GZIP_MEMBERS = 32
LEVEL = 1  # zlib's fastest level: most of the saving on JSON numbers, a fraction of the time of level 6
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
GZIP_MIN = 18  # bytes of gzip's header and trailer around an empty stream
GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip's identification bytes and its one compression method, deflate
DEFLATE_MAX_RATIO = 1032  # the most deflate can expand: 258 bytes from every 2 bits


def unsupported(coding: str) -> ServiceError:
    return ServiceError(415, "unsupported_media_type",
                        f"Content-Encoding {quote(coding)} is not supported; send gzip, deflate or identity")


def inflates_past(coding: str, limit: int) -> ServiceError:
    return ServiceError(413, "payload_too_large", f"the {coding} body inflates past MAX_BODY_BYTES={limit} bytes")


def codings(header: str) -> list[str]:
    """The codings of a ``Content-Encoding`` header in the order they were applied, without identity."""
    found = []
    for part in header.split(","):
        coding = ALIASES.get(part.strip().lower(), part.strip().lower())
        if coding in ("", "identity"):
            continue
        if coding not in SUPPORTED:
            raise unsupported(part.strip())
        found.append(coding)
    if len(found) > MAX_CODINGS:
        raise ServiceError(415, "unsupported_media_type", f"at most {MAX_CODINGS} content codings, got {len(found)}")
    return found


def decode(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its content codings undone, never inflating past ``limit`` bytes (413)."""
    if not content_encoding:
        return body
    for coding in reversed(codings(content_encoding)):
        body = inflate(body, coding, limit)
    return body


def inflate(data: bytes, coding: str, limit: int) -> bytes:
    """One coding undone; gzip may hold several members one after another (RFC 1952)."""
    # gzip's trailer states the (last member's) inflated size mod 2**32. A size over the limit that
    # deflate could reach from this many bytes is refused before any work (an honest bomb costs
    # microseconds); one it could not reach is no trailer (a truncated body), and one that lies is
    # bounded by the streaming below.
    if coding == "gzip" and len(data) >= GZIP_MIN and data[:3] == GZIP_MAGIC and \
            limit < int.from_bytes(data[-4:], "little") <= len(data) * DEFLATE_MAX_RATIO:
        raise inflates_past(coding, limit)
    out = bytearray()
    rest = data
    for _ in range(MAX_GZIP_MEMBERS):
        rest = _inflate_member(rest, coding, limit - len(out), out)
        if not rest:
            return bytes(out)
        if coding != "gzip":
            raise bad_request(f"the {coding} body has {len(rest)} bytes after its end")
    raise bad_request(f"the gzip body has more than {MAX_GZIP_MEMBERS} members")


def _inflate_member(data: bytes, coding: str, room: int, out: bytearray) -> bytes:
    """Inflate one stream into ``out`` (at most ``room`` bytes); the bytes after its end."""
    inflater = zlib.decompressobj(WBITS[coding])
    try:
        chunk = inflater.decompress(data, room + 1)
    except zlib.error:
        if coding != "deflate":
            raise bad_request(f"the body is not valid {coding} data") from None
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # a raw deflate stream, without zlib's header
        try:
            chunk = inflater.decompress(data, room + 1)
        except zlib.error:
            raise bad_request("the body is not valid deflate data") from None
    if len(chunk) > room:
        raise inflates_past(coding, len(out) + room)
    if not inflater.eof:
        raise bad_request(f"the {coding} body is truncated")
    out += chunk
    return inflater.unused_data


def negotiate(accept_encoding: str | None) -> str | None:
    """gzip or deflate if ``Accept-Encoding`` accepts one (the higher q, gzip on a tie), else None."""
    if not accept_encoding:
        return None
    quality: dict[str, float] = {}
    for part in accept_encoding.split(","):
        name, _, params = part.partition(";")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[name] = q
    best = None
    for coding in SUPPORTED:
        q = quality.get(coding, quality.get("*", 0.0))
        if q > 0 and (best is None or q > best[1]):
            best = (coding, q)
    return best[0] if best else None


def for_client(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """``body`` as the client's ``Accept-Encoding`` prefers it, and the coding used (None: as it is)."""
    coding = negotiate(accept_encoding)
    return (body, None) if coding is None else (encode(body, coding), coding)


def encode(body: bytes, coding: str) -> bytes:
    """``body`` compressed with ``coding`` (gzip or deflate) at zlib's fastest level."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS[coding])
    return compressor.compress(body) + compressor.flush()
