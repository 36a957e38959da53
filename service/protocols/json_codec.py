"""JSON in and out: orjson for speed, strict numbers, and JSON arrays to NumPy in one step.

Parsing is most of the cost of a large request (a 256-image MNIST body, 1.5 MB: the standard
library takes 36 ms, orjson 9 ms, the forward pass 2 ms), so bodies are parsed by orjson, once.
orjson follows RFC 8259 strictly and refuses ``NaN``, ``Infinity`` and overflowing numbers such as
``1e999``; the contract answers those with a 422 naming the field, so a body orjson refuses is
parsed again by the lenient standard library (only on that error path) and the non-finite value
is then refused by location. Nesting deeper than orjson's 1024 levels is a 400.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import orjson

from service.errors import bad_request, invalid, too_large
from service.protocols import json_numbers

NUMBER_TYPES = (int, float)  # exactly: bool is an int subclass and is refused
MAX_SAMPLE_DEPTH = 8  # nesting levels inside one JSON array that the error walk follows
NOT_A_NUMBER = {bool: "a boolean", str: "a string", type(None): "null", dict: "an object"}


SMALL_JSON = 256 * 1024  # bytes: a body this small is parsed without counting its values first


def check_value_count(body: bytes, max_values: Callable[[], int]) -> None:
    """A 413 for a body holding more values than any allowed batch, before it is parsed.

    Parsing builds a Python object per number: a 16 MiB body of two-number samples took a worker
    410 MB before its batch could be refused as too large. Each value but the last is followed by a
    comma, so the commas bound the values, and a body with more than ``max_values()`` of them cannot be
    a valid request. Bodies under ``SMALL_JSON`` skip the count. NumPy counts them
    (:func:`json_numbers.count_byte`: 0.13 ms for a 1.5 MB body, ``bytes.count`` 0.6 ms).
    """
    if len(body) <= SMALL_JSON:
        return
    limit = max_values()
    if len(body) > limit and (commas := json_numbers.count_byte(body, b",")) > limit:
        raise too_large(413, "batch_too_large", "", f"the body holds {commas + 1:,} values or more; no request here "
                        f"may send more than {limit:,} (the largest batch any route takes, of the largest model's "
                        "samples)", limit, commas + 1)


def loads(data: str | bytes) -> Any:
    """Parse a body: orjson, else the lenient standard library (NaN...), else a 400."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        try:
            return json.loads(data)
        except RecursionError:
            raise bad_request("request body is not valid JSON: nested too deeply") from None
        except ValueError:
            raise bad_request(f"request body is not valid JSON: {first}") from None


def loads_samples(body: bytes | bytearray, keys: tuple[bytes, ...]) -> tuple[Any, np.ndarray | None]:
    """:func:`loads`, with the samples under one of ``keys`` (top level) already an array where :func:`samples`
    would read them as floats: (document, float64 array), the document holding ``json_numbers.PLACEHOLDER``
    in their place; else (``loads(body)``, None).

    The common case of a large inference body (rows of plain numbers, no boolean anywhere) is parsed by
    ``json_numbers``, without a Python object per number; every other body, and every error, takes the
    old path, so the rules and their errors stay those of :func:`loads` and :func:`samples`.
    """
    found = json_numbers.cut(body, keys)
    if found is not None and isinstance(found.doc, dict) and count_booleans(found.rest) == 0 and \
            any(found.doc.get(key.decode()) == json_numbers.PLACEHOLDER for key in keys):
        return found.doc, found.numbers
    return loads(body), None


def dumps(obj: Any) -> bytes:
    """Serialise, NumPy arrays included (float32 as the shortest decimal that round-trips)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


# -- JSON arrays to NumPy -------------------------------------------------------------------------
def count_booleans(body: bytes) -> int:
    """How many ``true``/``false`` the text could hold at most (a string may contain them too).

    Each word is counted only if a letter it needs is in the body at all: a one-byte search runs at
    memchr speed (0.1 µs for one MNIST sample's 5 kB) where counting a word took 4-5 µs, and a body
    of numbers under ``/predict``'s keys (model, inputs) has no ``r`` and no ``f``.
    """
    return (body.count(b"true") if b"r" in body else 0) + (body.count(b"false") if b"f" in body else 0)


def samples(inputs: list[Any], raw: bytes, loc: str = "inputs") -> np.ndarray:
    """A request's samples as one array, walked for booleans only when ``raw``, the body they were
    parsed from, may hold any: the common case by :func:`floats`, anything else (and every error)
    by :func:`to_array`."""
    booleans = count_booleans(raw) > 0
    if not booleans and (arr := floats(inputs)) is not None:
        return arr
    return to_array(inputs, loc, booleans=booleans)


def floats(value: Any) -> np.ndarray | None:
    """A flat list of numbers, or a list of equally long such lists, as float64; else None.

    ``struct`` packs a row of Python numbers into the array's buffer in C at a third of the cost of
    ``np.array``'s type discovery (one 784-value MNIST row: 6-8 µs against 22 µs here; 256 rows:
    2.1 ms against 5.8 ms). It refuses a string, ``null``, a list or an object (None is returned, and
    :func:`to_array` finds and names the offence) but reads ``true`` as 1.0, so callers come here only
    when the body holds no boolean. Integers come out as float64 where ``np.array`` keeps int64: for
    callers that cast to float anyway (the data plane's float32), the same values below 2**53.
    """
    if type(value) is not list or not value:
        return None
    if type(value[0]) is not list:  # flat
        rows, width = (value,), len(value)
    else:  # a row that is not a list of exactly ``width`` numbers fails its pack below
        rows, width = value, len(value[0])
    out = np.empty((len(rows), width) if rows is value else width, dtype=np.float64)
    packer, step = _row_packer(width), 8 * width
    try:
        for i, row in enumerate(rows):
            if type(row) is not list:  # an object or a string would unpack: {} and "" as empty rows
                return None
            packer.pack_into(out, i * step, *row)
    except (struct.error, TypeError, OverflowError):
        return None
    return out


@lru_cache(maxsize=8)  # a few widths are in use at once; a client's odd widths cannot grow it
def _row_packer(width: int) -> struct.Struct:
    return struct.Struct(f"={width}d")


def to_array(value: list[Any], loc: str, booleans: bool = True) -> np.ndarray:
    """A JSON array of numbers, nested to any regular shape, as an int64 or float64 array.

    Numbers only: a string (``"1"``), a boolean, ``null`` or an object anywhere is a 422 naming its
    location, and so are rows of unequal length. NumPy converts a regular array of numbers in one
    step; only when it cannot (or, with ``booleans``, when the body may hold ``true``/``false``,
    which NumPy would silently read as 1 and 0) are the elements walked, to find what is wrong.
    """
    try:
        arr = np.array(value)
    except (ValueError, TypeError, RecursionError):
        arr = None
    if arr is None or arr.dtype.kind not in "iuf" or booleans:
        shape_of(value, loc, 0)  # raises on the first offending element
        if arr is None or arr.dtype.kind not in "iuf":  # integers beyond int64: read as floats
            try:
                arr = np.array(value, dtype=np.float64)
            except OverflowError:  # an integer past float64's range (about 1.8e308)
                raise invalid(huge_integer_loc(value, loc), "Input should be a finite number: this integer is "
                              "beyond the range of a float", "finite_number") from None
    return arr


def huge_integer_loc(value: Any, loc: str) -> str:
    """The location of the first integer too large for a float64 (the walk is only on that error path)."""
    stack = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack.extend((v, f"{where}.{i}") for i, v in reversed(list(enumerate(item))))
        elif type(item) is int:
            try:
                float(item)
            except OverflowError:
                return where
    return loc


def shape_of(value: Any, loc: str, depth: int) -> tuple[int, ...]:
    """The regular shape of a nested list of numbers, or a 422 at the first thing that breaks it."""
    if type(value) in NUMBER_TYPES:
        return ()
    if not isinstance(value, list):
        raise invalid(loc, f"Input should be a number, not {NOT_A_NUMBER.get(type(value), 'this')}", "number_type")
    if depth > MAX_SAMPLE_DEPTH:
        raise invalid(loc, f"nested too deeply (more than {MAX_SAMPLE_DEPTH} levels)")
    if all(type(v) in NUMBER_TYPES for v in value):  # the common leaf row, in one pass
        return (len(value),)
    shapes = [shape_of(v, f"{loc}.{i}", depth + 1) for i, v in enumerate(value)]
    first = shapes[0]
    for i, shape in enumerate(shapes):
        if shape == first:
            continue
        if len(shape) != len(first):
            what = "samples mix flat and nested forms" if depth == 0 else "rows mix numbers and lists"
            raise invalid(loc, f"{what} ({loc}.0 has {describe(first)}, {loc}.{i} has {describe(shape)})"
                          + ("; send all flat or all nested" if depth == 0 else ""))
        raise invalid(f"{loc}.{i}", f"has {describe(shape)}, but {loc}.0 has {describe(first)}"
                      if depth == 0 else f"rows of unequal length ({describe(shape)} and {describe(first)})")
    return (len(value), *first)


def describe(shape: tuple[int, ...]) -> str:
    if len(shape) == 0:
        return "a single number"
    return f"{shape[0]} values" if len(shape) == 1 else f"shape {'x'.join(map(str, shape))}"
