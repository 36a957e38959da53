"""Property tests of the data plane with hypothesis, against an oracle written here from the documented
rules (independently of ``protocols/json_codec.py`` and ``dataplane/dataplane.py``): any JSON value as ``inputs``
gets exactly the status the rules give it, and a 200 only for a valid batch, with its content right."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from service.app import create_app  # noqa: E402
from service.dataplane.dataplane import DataPlane, Limits  # noqa: E402
from service.errors import ServiceError  # noqa: E402
from service.protocols import json_codec  # noqa: E402
from service.protocols.json_codec import MAX_SAMPLE_DEPTH  # noqa: E402
from service.repository.registry import ModelRegistry  # noqa: E402

MAX_BATCH = 8
numbers = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                           st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                           max_leaves=40)
# values shaped like real inputs, so the search reaches the shape, finiteness and range checks too
pixels = st.one_of(numbers, st.sampled_from([0, 1, 0.5, 2, -1, True, False, math.nan, math.inf]))
near_inputs = st.lists(st.lists(pixels, min_size=0, max_size=4), min_size=1, max_size=10)
# valid by construction for xor and digits (flat or nested), with an occasional bad element
unit = st.floats(0, 1)
valid_xor = st.lists(st.lists(unit, min_size=2, max_size=2), min_size=1, max_size=MAX_BATCH)
valid_digits = st.lists(st.one_of(st.lists(unit, min_size=25, max_size=25),
                                  st.lists(st.lists(unit, min_size=5, max_size=5), min_size=5, max_size=5)),
                        min_size=1, max_size=MAX_BATCH)
MODELS = {"xor": ((2,), (0.0, 1.0)), "digits": ((5, 5), (0.0, 1.0))}
# a valid batch with one element replaced by something that breaks exactly one rule: the cases where
# the answer hinges on one check (a lone false, a lone NaN), which random values almost never reach
BREAKERS = [True, False, math.nan, math.inf, -math.inf, 2, -1, 1.0000001, "1", None, [0.5], 10**400]


@st.composite
def almost_valid(draw):
    batch = draw(st.one_of(valid_xor, valid_digits))
    i = draw(st.integers(0, len(batch) - 1))
    sample = batch[i]
    row = sample[draw(st.integers(0, len(sample) - 1))] if isinstance(sample[0], list) else sample
    row[draw(st.integers(0, len(row) - 1))] = draw(st.sampled_from(BREAKERS))
    return batch


def regular_shape(value) -> tuple[int, ...] | None:
    """The shape of a regular nested list of numbers (not booleans), or None if it is not one."""
    if type(value) in (int, float):
        return ()
    if not isinstance(value, list):
        return None
    if not value:
        return (0,)
    shapes = {regular_shape(v) for v in value}
    if len(shapes) != 1 or None in shapes:
        return None
    return (len(value), *shapes.pop())


def expected_status(value, model: str) -> set[int]:
    """What the documented rules say /predict answers for ``inputs=value``, in the order it checks them."""
    if not isinstance(value, list) or not value:
        return {422}  # the envelope: a non-empty list
    shape = regular_shape(value)
    if shape is None:
        return {422}  # numbers only, in a regular shape
    try:  # the codec turns the numbers into an array before any other rule
        flat = np.asarray(value, dtype=np.float64).ravel()
    except OverflowError:  # an integer past float64's range: not a finite number
        return {422}
    if len(value) > MAX_BATCH:
        # a sample nested past MAX_SAMPLE_DEPTH is refused by the element walk, which runs first when it runs
        return {413, 422} if len(shape) > MAX_SAMPLE_DEPTH + 1 else {413}
    if model not in MODELS:
        return {404}
    sample_shape, (lo, hi) = MODELS[model]
    if shape[1:] not in ((math.prod(sample_shape),), sample_shape):
        return {422}
    if not np.all(np.isfinite(flat)) or flat.min() < lo or flat.max() > hi:
        return {422}
    return {200}


def test_the_oracle_knows_the_rules():
    assert expected_status([[0, 1]], "xor") == {200}
    assert expected_status([[0, True]], "xor") == expected_status([[0, False]], "xor") == {422}
    assert expected_status([[0, math.nan]], "xor") == expected_status([[0, -math.inf]], "xor") == {422}
    assert expected_status([[0, 1]] * 9, "xor") == {413} and expected_status([[0, 1]], "nope") == {404}
    assert expected_status([[[0] * 5] * 5], "digits") == {200}
    assert expected_status([[[0] * 5] * 4], "digits") == {422}
    assert expected_status([[0, 1], [0]], "xor") == {422} and expected_status([[]], "xor") == {422}
    assert expected_status([[10**400, 0.0]], "nope") == expected_status([[10**400, 0]] * 9, "xor") == {422}


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository).load_all()


@pytest.fixture(scope="module")
def plane(registry):
    return DataPlane(registry, Limits(max_batch=MAX_BATCH))


@pytest.fixture(scope="module")
def client(registry):
    return create_app({"max_batch": MAX_BATCH}, model_registry=registry).test_client()


def expected_probabilities(registry, model: str, value) -> np.ndarray:
    """The served network on the same batch: equal to the data plane's answer by construction."""
    network = registry.snapshot.get(model).network
    batch = np.asarray(value, dtype=np.float64).reshape(len(value), -1).astype(network.dtype)
    return network.predict_proba(batch)


SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,  # CI must not pass or fail by luck
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(value=st.one_of(json_values, near_inputs, valid_xor, valid_digits, almost_valid()),
       model=st.sampled_from(["xor", "digits", "nope"]))
def test_the_data_plane_answers_as_the_rules_say(plane, registry, value, model):
    expected = expected_status(value, model)
    try:
        if not isinstance(value, list) or not value:
            return  # the envelope's rule is pydantic's, exercised through the app below
        result = plane.infer(model, None, json_codec.to_array(value, "inputs"))
    except ServiceError as exc:
        assert exc.status in expected, (exc.status, exc.message, value)
        assert exc.message and (exc.details is None or all({"loc", "message", "type"} <= set(d) for d in exc.details))
    else:
        assert expected == {200}, (expected, value)
        np.testing.assert_array_equal(result.probabilities, expected_probabilities(registry, model, value))
        assert result.predicted() == [result.labels[k] for k in result.probabilities.argmax(axis=1)]


@SETTINGS
@given(value=st.one_of(json_values, near_inputs, valid_xor, valid_digits, almost_valid(), st.lists(pixels)))
@example(value=[[], {}])  # found by hypothesis: {} and "" unpacked as empty rows by the struct path
@example(value=[[], ""])
def test_the_struct_path_reads_what_the_element_walk_reads(value):
    """``json_codec.samples`` (struct-packed rows where it can) against ``to_array`` alone: the same error,
    or the same values (as float64: the struct path reads integers as floats)."""
    raw = json.dumps({"inputs": value}, allow_nan=True).encode()
    try:
        expected = json_codec.to_array(value, "inputs", booleans=json_codec.count_booleans(raw) > 0)
    except ServiceError as exc:
        with pytest.raises(ServiceError) as got:
            json_codec.samples(value, raw)
        assert (got.value.status, got.value.message, got.value.details) == (exc.status, exc.message, exc.details)
        return
    got = json_codec.samples(value, raw)
    assert got.shape == expected.shape and got.dtype.kind in "iuf"
    np.testing.assert_array_equal(got.astype(np.float64), expected.astype(np.float64))


@SETTINGS
@given(value=st.one_of(json_values, near_inputs, valid_xor, valid_digits, almost_valid()),
       model=st.sampled_from(["xor", "digits"]))
def test_through_the_app_the_status_and_content_follow_the_rules(client, registry, value, model):
    body = json.dumps({"model": model, "inputs": value}, allow_nan=True)
    r = client.post("/predict", data=body, headers={"Content-Type": "application/json"})
    expected = expected_status(value, model)
    assert r.status_code in expected, (r.status_code, expected, r.get_data()[:300], value)
    assert b"Traceback" not in r.get_data()
    if r.status_code == 200:
        predictions = r.get_json()["predictions"]
        probabilities = np.array([p["probabilities"] for p in predictions], dtype=np.float32)
        np.testing.assert_array_equal(probabilities, expected_probabilities(registry, model, value))


def test_the_app_runs_without_debug_mode(client):
    assert client.application.debug is False
    assert client.application.config.get("PROPAGATE_EXCEPTIONS") is not True
