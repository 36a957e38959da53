"""JSON numbers parsed straight into float64 (``service/protocols/json_numbers.py``) are exactly what the old path
reads, and every other body takes the old path, with its errors.

"The old path" is the same code with the fast path switched off (``MIN_BYTES`` beyond any body): orjson, then
``json_codec.floats``'s ``struct`` packing or ``to_array``. Over random bodies of every protocol (exponents,
integers beyond 2**53 and 2**64, negative zero, decimals a hair from halfway between two doubles, odd spacing)
the fast path must give the same float64 array bit for bit, so the same float32 after the data plane's cast
(decimal -> float64 -> float32, rounded twice as before); over hostile ones (booleans, strings, NaN, ragged
rows, nesting, huge integers, escapes, repeated keys, the placeholder's own text) the same answer or error.
"""

from __future__ import annotations

import json
import math
import re
import struct
from decimal import Decimal, getcontext

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from service.app.inference_middleware import decode_predict  # noqa: E402
from service.dataplane.dataplane import DataPlane  # noqa: E402
from service.errors import ServiceError  # noqa: E402
from service.protocols import json_codec, json_numbers, v1_http, v2_http  # noqa: E402
from service.repository.registry import ModelRegistry  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NO_LIMIT = lambda: 10**9  # noqa: E731 - check_value_count's bound, out of the way


@pytest.fixture(scope="module")
def plane(model_repository):
    return DataPlane(ModelRegistry(model_repository).load_all())


@pytest.fixture
def fast(monkeypatch):
    """Any body takes the fast path where it can (small ones too)."""
    monkeypatch.setattr(json_numbers, "MIN_BYTES", 0)


def halfway(x: float, nudge: int, digits: int) -> str:
    """The decimal ``digits`` significant digits long nearest the midpoint of ``x`` and the next double, moved
    ``nudge`` units of its last digit: the decimals where a parser that does not round correctly goes wrong."""
    getcontext().prec = 1200
    mid = (Decimal(x) + Decimal(float(np.nextafter(x, math.inf)))) / 2
    text = format(mid, f".{digits - 1}e")
    exponent = text.split("e")[1]
    last = Decimal(1).scaleb(-(digits - 1) + int(exponent))
    return format(Decimal(text) + nudge * last, f".{digits - 1}e").replace("+", "")


doubles = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300).filter(lambda v: v != 0)
literals = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,22})(\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda f: repr(float(f))),  # as clients print
    st.integers(-2**70, 2**70).map(str),  # beyond 2**53 (rounded) and 2**64 (simdjson refuses: the old path)
    st.builds(halfway, doubles, st.integers(-1, 1), st.integers(16, 40)),
    st.sampled_from(["-0", "-0.0", "0e0", "-0E-0", "0.0", "1", "9007199254740993", "18446744073709551615",
                     "18446744073709551616", "-9223372036854775809", "1e-400", "4.9e-324", "2.4703282292062328e-324",
                     "1.7976931348623157e308", "1.7976931348623159e308", "1e400", "0.1", "0.30000000000000004"]),
)
spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])


@st.composite
def rows(draw, flat: bool | None = None) -> str:
    """A JSON array of number literals: rows of equal width, or flat; spaced at random."""
    width, count = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    sep = draw(spaces)

    def array(items: list[str]) -> str:
        return "[" + sep + ("," + sep).join(items) + sep + "]"

    if flat if flat is not None else draw(st.booleans()):
        return array(draw(st.lists(literals, min_size=1, max_size=12)))
    return array([array(draw(st.lists(literals, min_size=width, max_size=width))) for _ in range(count)])


def outcome(call):
    """What a decode gives: the array it decoded (exactly), or the error it raised."""
    try:
        arr = call()
        if arr is None:
            return ("handed over",)
    except ServiceError as exc:
        return ("error", exc.status, exc.message, json.dumps(exc.details, sort_keys=True, default=str))
    except ValidationError as exc:
        return ("invalid", json.dumps(exc.errors(include_url=False, include_input=False), default=str))
    arr = np.asarray(arr)
    return ("array", arr.dtype.str, arr.shape, arr.tobytes())


def both_ways(monkeypatch, call):
    """The decode with the fast path off (the old path), then on."""
    monkeypatch.setattr(json_numbers, "MIN_BYTES", 10**12)
    old = outcome(call)
    monkeypatch.setattr(json_numbers, "MIN_BYTES", 0)
    return old, outcome(call)


def predict(plane, body: str):
    def call():
        decoded = decode_predict(body.encode(), {}, None, None, plane)
        return None if decoded is None else decoded.inputs
    return call


def simdjson_reads(array: str) -> bool:
    """Whether every number in ``array`` is one simdjson parses (an integer within 64 bits, a finite float)."""
    for token in re.findall(r"-?[0-9][0-9.eE+-]*", array):
        if re.fullmatch(r"-?[0-9]+", token):
            if not -2**63 <= int(token) < 2**64:
                return False
        elif not math.isfinite(float(token)):
            return False
    return True


def v1(body: str):
    return lambda: v1_http.decode(body.encode(), NO_LIMIT).batch


def v2(body: str, datatype: str = "FP32"):
    return lambda: v2_http.decode(body.encode(), None, "mnist", None, NO_LIMIT).tensor


def v2_body(data: str, shape: list[int], datatype: str = "FP32", extra: str = "") -> str:
    return ('{"inputs": [{"name": "input", "shape": ' + json.dumps(shape) + ', "datatype": "' + datatype +
            '", "data": ' + data + "}]" + extra + "}")


def shape_of(text: str) -> list[int]:
    value = json.loads(text)
    return [len(value), len(value[0])] if isinstance(value[0], list) else [len(value)]


# -- the same numbers, bit for bit ------------------------------------------------------------------
@SETTINGS
@given(array=rows())
def test_the_numbers_are_the_old_paths_bit_for_bit(monkeypatch, plane, array):
    body = '{"model": "mnist", "inputs": ' + array + "}"
    old, new = both_ways(monkeypatch, predict(plane, body))
    assert new == old
    # and it was the fast path that read them, wherever simdjson can
    assert (json_codec.loads_samples(body.encode(), (b"inputs",))[1] is not None) == simdjson_reads(array)
    if old[0] == "array":  # and so after the data plane's cast: float64 first, then float32, as before
        with np.errstate(over="ignore"):  # beyond float32's range: inf either way (the range check refuses it)
            before, after = (np.frombuffer(o[3], dtype=np.float64).astype(np.float32) for o in (old, new))
        np.testing.assert_array_equal(before.view(np.uint32), after.view(np.uint32))


@SETTINGS
@given(array=rows(), key=st.sampled_from(["instances", "inputs"]))
def test_v1_reads_the_same(monkeypatch, array, key):
    old, new = both_ways(monkeypatch, v1("{" + json.dumps(key) + ": " + array + "}"))
    assert new == old


@SETTINGS
@given(array=rows(), datatype=st.sampled_from(["FP32", "FP64", "INT32"]), binary_output=st.booleans())
def test_v2_reads_the_same(monkeypatch, array, datatype, binary_output):
    extra = ', "parameters": {"binary_data_output": true}' if binary_output else ""
    old, new = both_ways(monkeypatch, v2(v2_body(array, shape_of(array), datatype, extra)))
    assert new == old


@pytest.mark.parametrize(("text", "expected"), [
    ("-0", 0.0), ("-0.0", -0.0), ("-0e0", -0.0), ("9007199254740993", 9007199254740992.0),
    ("18446744073709551615", 1.8446744073709552e19), ("1e-400", 0.0), ("4.9e-324", 5e-324),
    ("1.00000000000000011102230246251565404236316680908203125", 1.0),  # exactly halfway: to even
])
def test_single_numbers(fast, text, expected):
    doc, arr = json_codec.loads_samples(('{"inputs": [[' + text + "]]}").encode(), (b"inputs",))
    assert doc == {"inputs": json_numbers.PLACEHOLDER}
    assert struct.pack("<d", arr[0, 0]) == struct.pack("<d", expected)  # the sign of zero too


def test_the_double_rounding_is_kept(fast, plane):
    """Decimal -> float64 -> float32 rounds twice, as the old path did; rounding the decimal to float32 at
    once would differ for this one (it lies just above a float32 midpoint, and float64 rounds it onto it)."""
    text = "1.000000059604644775390625000000000001"  # 1 + 2**-24 (halfway between two float32), plus a hair
    assert Decimal(text) > Decimal(1 + 2**-24) and float(text) == 1 + 2**-24  # float64 rounds it onto the midpoint
    at_once = np.float32(1 + 2**-23)  # the float32 nearest the decimal itself
    call = decode_predict(('{"model": "mnist", "inputs": [[' + text + "]]}").encode(), {}, None, None, plane)
    assert call.inputs.astype(np.float32)[0, 0] == np.float32(1.0) != at_once  # then to even: 1.0, as before


# -- every other body: the old path and its errors --------------------------------------------------
HOSTILE = ["true", "false", "null", '"1"', "NaN", "Infinity", "-Infinity", "1e400", "[0.5]", "[]", "{}",
           "10" * 200, "1.", ".5", "01", "+1", "0x10", "1e", "--1"]


@SETTINGS
@given(array=rows(flat=False), bad=st.sampled_from(HOSTILE), where=st.integers(0, 10**6),
       protocol=st.sampled_from(["predict", "v1", "v2"]))
def test_a_hostile_element_gets_the_old_answer(monkeypatch, plane, array, bad, where, protocol):
    """One element replaced by something off the common case: the same error (or answer) either way."""
    value = json.loads(array)
    row = value[where % len(value)]
    row[where % len(row)] = "@"
    text = json.dumps(value).replace('"@"', bad)
    call = {"predict": lambda: predict(plane, '{"model": "mnist", "inputs": ' + text + "}"),
            "v1": lambda: v1('{"instances": ' + text + "}"),
            "v2": lambda: v2(v2_body(text, [len(value), len(value[0])]))}[protocol]()
    old, new = both_ways(monkeypatch, call)
    assert new == old


@pytest.mark.parametrize("body", [
    '{"model": "mnist", "inputs": [[0, 1], [1]]}',  # ragged
    '{"model": "mnist", "inputs": [[0, 1], [1], [0, 1, 1]]}',  # ragged, the count as if regular
    '{"model": "mnist", "inputs": [[0, [1]], [1, 0]]}',  # nested inside a row, and the count still right
    '{"model": "mnist", "inputs": [[0, []], [1, 0, 1]]}',
    '{"model": "mnist", "inputs": [[[0.5, 1]], [[1, 0]]]}',  # deeper than rows: the old walk
    '{"model": "mnist", "inputs": [[0, 1], 1]}',
    '{"model": "mnist", "inputs": [[0, 1]], "inputs": [[1, 1]]}',  # repeated: the last counts
    '{"model": "mnist", "inputs": [[0, 1]], "inputs": ["json_numbers:placeholder"]}',  # the placeholder's text
    '{"model": "mnist", "inputs": "json_numbers:placeholder", "x": [[0, 1]]}',
    '{"model": "mn\\u0069st", "inputs": [[0, 1]]}',  # an escape outside the array
    '{"model": "mnist", "inputs": [[0, 1]], "inputs": ["json_numbers:placeholde\\u0072"]}',  # escaped placeholder
    '{"model": "inputs", "inputs": [[0, 1]]}',  # the key's text as a value first
    '{"model": "\\"inputs\\": [[0, 1]]", "inputs": [[0.5, 1]]}',  # the key's text inside a string
    '{"model": "mnist", "inputs": [[0, 1]], "version": true}',  # a boolean elsewhere: the old walk reads the data
    '{"model": "mnist", "inputs": [[0, 1]]',  # malformed
    '{"model": "mnist", "inputs": [[0, 1]]} x',
    '{"model": "mnist", "inputs": [[0, 1]], "x": NaN}',
    '{"model": "mnist", "inputs": [[0, 1]\u000c]}',  # form feed: whitespace to Python's regex, not to JSON
    '{"model": "mnist", "inputs": [[0, 1]], "y": {"inputs": [[2]]}}',
    '[{"inputs": [[0, 1]]}]',
])
def test_the_off_cases_take_the_old_path(monkeypatch, plane, body):
    old, new = both_ways(monkeypatch, predict(plane, body))
    assert new == old


@pytest.mark.parametrize("body", [
    v2_body("[[0, 1], [1, 0]]", [2, 2], extra=', "outputs": [{"name": "probabilities", "parameters": '
            '{"binary_data": true}}]'),  # a boolean in the parameters only: still the fast path's case
    v2_body("[0, 1, 1, 0]", [2, 2]),
    v2_body("[0, true, 1, 0]", [2, 2]),
    v2_body("[0, 1, 1, 0]", [2, 2], "INT8"),  # integer tensors: read element by element, as before
    v2_body("[0, 1.5, 1, 0]", [2, 2], "INT8"),
    v2_body("[0, 1, 1, 0]", [2, 2], "FP16"),
    v2_body("[0, 1, 1, 0]", [3, 2]),
    '{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "parameters": {"data": [1, 2]}, '
    '"data": [0, 1]}]}',  # the key first met inside the parameters
    '{"inputs": [{"name": "other", "shape": [2], "datatype": "FP32", "data": [0, 1]}]}',
    '{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [0, 1], "data": [1, 1]}]}',
    '{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [0, 1], '
    '"parameters": {"binary_data_size": 8}}]}',
])
def test_v2_off_cases_take_the_old_path(monkeypatch, body):
    old, new = both_ways(monkeypatch, v2(body))
    assert new == old


def test_the_common_cases_take_the_fast_path(fast, plane):
    """Not a silent fallback: every protocol's usual large body is parsed by simdjson."""
    image = [0.0, 0.25, 1.0, 0.5] * 196
    batch = [image] * 8
    assert json_codec.loads_samples(json.dumps({"model": "mnist", "inputs": batch}).encode(), (b"inputs",))[1] \
        is not None
    for key in ("instances", "inputs"):
        body = json.dumps({key: batch}).encode()
        assert json_codec.loads_samples(body, (b"instances", b"inputs"))[1] is not None
    for data in (batch, [v for row in batch for v in row]):
        body = v2_body(json.dumps(data), [8, 784])
        assert v2_http.parse_head(body.encode())[1] is not None
    body = json.dumps({"model": "mnist", "inputs": batch}).encode()
    np.testing.assert_array_equal(decode_predict(body, {}, None, None, plane).inputs, np.array(batch))


def test_small_bodies_keep_the_old_path():
    body = json.dumps({"model": "mnist", "inputs": [[0.5] * 784]}).encode()
    assert len(body) < json_numbers.MIN_BYTES
    assert json_numbers.cut(body, (b"inputs",)) is None


def test_a_busy_parser_is_not_shared(fast):
    """A parser holds one document at a time: while another's proxies are alive, parsing declines
    (the old path then reads the body) instead of corrupting them."""
    held = json_numbers._shared.parse(b"[[1, 2]]")
    try:
        assert json_numbers.parse(b"[[3, 4]]", 0, 8) is None
    finally:
        del held
    np.testing.assert_array_equal(json_numbers.parse(b"[[3, 4]]", 0, 8), [[3.0, 4.0]])


@SETTINGS
@given(data=st.binary(max_size=300_000), byte=st.sampled_from([b",", b"[", b"\x00", b"\xff"]))
def test_count_byte_is_bytes_count(data, byte):
    assert json_numbers.count_byte(data, byte) == data.count(byte)
    assert json_numbers.count_brackets(data, 0, len(data), 10) == min(data.count(b"["), 11)
