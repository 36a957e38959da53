"""An inference body's array of plain numbers parsed straight into float64, without a Python object per number.

Why: parsing was nearly the whole cost of a large JSON request. A 256-image MNIST body holds 200,704
numbers in 1.5 MB; orjson made a Python float of each and ``struct`` packed them into an array, 6.9 ms
in all, against 1.3 ms for the forward pass. simdjson (pysimdjson's ``as_buffer``) parses the same
numbers into one C buffer of doubles, which NumPy views, and no float object is made: 2.9 ms for the
whole body (``python -m bench.json_parsers`` measures every candidate; ``docs/architecture.md`` says why
this one).

How: :func:`cut` finds the array under a key (``"inputs": [[...], ...]``), parses it with simdjson,
and parses the rest of the body, with the text of :data:`PLACEHOLDER` where the array was, with orjson,
as before. It gives up (None: the caller parses the whole body the old way) at anything outside the
common case: a body under ``MIN_BYTES``, anything but numbers in the array, rows of unequal length or
nested deeper than rows, a number simdjson refuses (out of range, an integer beyond 64 bits), a
backslash outside the array, or a rest orjson refuses.

Why this is exactly the old parse: the array was checked by simdjson to be one complete JSON value,
and the rest, with a string token where the array stood, by orjson; so the body is the rest with that
token's value replaced by the array, wherever the token sits. The caller checks that the placeholder
stands where its protocol reads samples (and nowhere else can a string equal it: its text is not in
the body and, with no backslash outside the array, no escape can spell it). Numbers come out as the old
path reads them: a float correctly rounded (simdjson and orjson both are), an integer as
``float(int)`` (``-0`` too is ``+0.0``), checked over random bodies by ``tests/test_json_numbers.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

MIN_BYTES = 64 * 1024  # a smaller body (one MNIST sample: 6 kB) is parsed the old way: one sample runs as before
MARKER = "json_numbers:placeholder"  # letters outside a string are invalid JSON, so a misplaced cut fails to parse
PLACEHOLDER = [MARKER]  # what the parsed rest holds where the numbers were (a list: a samples field's type)
_TEXT = b'["' + MARKER.encode() + b'"]'
_VALUE = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*\[")  # JSON's whitespace only
COUNT_BLOCK = 64 * 1024  # bytes compared at once by count_byte: a temporary glibc keeps on its heap
SHARED_CAPACITY = 8 * 1024 * 1024  # bytes: a larger array gets a parser of its own, freed with it
_shared = simdjson.Parser(max_capacity=SHARED_CAPACITY)  # reused: its buffers stay allocated (and faulted in)


@dataclass(frozen=True)
class Cut:
    """A body split in two: its numbers, and everything else parsed."""

    doc: Any  # the body as orjson parses it, with PLACEHOLDER where the numbers were
    numbers: np.ndarray  # float64: (n,) for a flat list, (rows, width) for rows
    rest: bytes  # the body's text without the numbers (for count_booleans: the numbers hold no letter of them)


def cut(body: bytes | bytearray, keys: tuple[bytes, ...]) -> Cut | None:
    """The numbers under the first of ``keys`` found in ``body`` (a flat list, or rows of equal length),
    and the rest parsed; None where the body is not that common case (the module's docstring says when)."""
    if len(body) < MIN_BYTES:
        return None
    span = locate(body, keys)
    if span is None:
        return None
    start, end = span
    marker = MARKER.encode()
    for lo, hi in ((0, start), (end, len(body))):
        if body.find(b"\\", lo, hi) >= 0 or body.find(marker, lo, hi) >= 0:
            return None
    numbers = parse(body, start, end)
    if numbers is None:
        return None
    rest = bytes(body[:start]) + _TEXT + bytes(body[end:])
    try:
        doc = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    return Cut(doc, numbers, rest)


def locate(body: bytes | bytearray, keys: tuple[bytes, ...]) -> tuple[int, int] | None:
    """(start, end) of the array right after ``"key":``, the first of ``keys`` to occur with one.

    An array of numbers holds no ``"`` and no ``}``, so it ends at the last ``]`` before the next of
    either. Whether the text found is really a key, and the array really its value, is proven later by
    the parses (:func:`cut`); here it only has to be cheap (memchr-speed searches, not a scan in Python).
    """
    for key in keys:
        quoted = b'"' + key + b'"'
        at = body.find(quoted)
        for _ in range(4):  # the key's text may first occur as a value ("inputs" as a model name)
            if at < 0:
                break
            match = _VALUE.match(body, at + len(quoted))
            if match is not None:
                start = match.end() - 1
                limits = [i for i in (body.find(b'"', start), body.find(b"}", start)) if i >= 0]
                end = body.rfind(b"]", start, min(limits, default=len(body))) + 1
                return (start, end) if end > start else None
            at = body.find(quoted, at + 1)
    return None


def parse(body: bytes | bytearray, start: int, end: int) -> np.ndarray | None:
    """``body[start:end]``, a JSON array of numbers, flat or rows of equal length, as float64; None for
    anything else."""
    parser = _shared if end - start <= SHARED_CAPACITY else simdjson.Parser()
    try:
        array = parser.parse(memoryview(body)[start:end])
        if not isinstance(array, simdjson.Array) or len(array) == 0:
            return None
        flat = np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)  # any non-number raises
        first = array[0]
        if not isinstance(first, simdjson.Array):  # a flat list: no array inside it
            shape: tuple[int, ...] = (len(array),)
            brackets = 1
        else:  # rows: every element an array of ``width`` numbers (as_buffer flattens any nesting: counted below)
            width = len(first)
            if width == 0 or not all(isinstance(row, simdjson.Array) and len(row) == width for row in array):
                return None
            shape, brackets = (len(array), width), len(array) + 1
        del first, array  # the parser may parse again only once its proxies are gone
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError):  # simdjson's refusals, a parser in use
        return None
    if flat.size != np.prod(shape) or count_brackets(body, start, end, brackets) != brackets:
        return None
    return flat.reshape(shape)


def count_brackets(body: bytes | bytearray, start: int, end: int, expected: int) -> int:
    """How many ``[`` ``body[start:end]`` holds, exact up to ``expected + 1``: a memchr-speed ``find`` per
    bracket where few are expected (0.04 ms for 256 rows of 784 numbers), else :func:`count_byte`."""
    if expected > 4096:
        return count_byte(memoryview(body)[start:end], b"[")
    count, at = 0, body.find(b"[", start, end)
    while at >= 0 and count <= expected:
        count, at = count + 1, body.find(b"[", at + 1, end)
    return count


def count_byte(data: bytes | bytearray | memoryview, byte: bytes) -> int:
    """How many times the one byte ``byte`` occurs in ``data``: ``data.count(byte)``, vectorised.

    ``bytes.count`` compares a byte at a time (0.6 ms for a 1.5 MB body), NumPy a vector at a time
    (0.13 ms). In blocks of ``COUNT_BLOCK``: a comparison of the whole body would allocate a temporary
    as large, which glibc maps afresh on every request (370 page faults, 1 ms, for 1.5 MB).
    """
    codes = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(min(len(codes), COUNT_BLOCK), dtype=bool)
    total = 0
    for i in range(0, len(codes), COUNT_BLOCK):
        block = codes[i:i + COUNT_BLOCK]
        total += int(np.count_nonzero(np.equal(block, ord(byte), out=out[:len(block)])))
    return total
