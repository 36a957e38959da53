"""Property tests of the data plane with hypothesis: any JSON value as ``inputs`` gives an answer or a
documented client error (400, 404, 413, 422), never another exception; and through the app, never a 5xx."""

from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from service import jsonio  # noqa: E402
from service.app import create_app  # noqa: E402
from service.dataplane import DataPlane, Limits  # noqa: E402
from service.errors import ServiceError  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402

DOCUMENTED = {400, 404, 413, 422}
numbers = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                           st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                           max_leaves=40)
# values shaped like real inputs, so the search reaches the shape, finiteness and range checks too
near_inputs = st.lists(st.lists(st.one_of(numbers, st.sampled_from([0, 1, 0.5, 2, -1])), min_size=0, max_size=4),
                       min_size=1, max_size=4)


@pytest.fixture(scope="module")
def plane(model_repository):
    return DataPlane(ModelRegistry(model_repository).load_all(), Limits(max_batch=8))


@pytest.fixture(scope="module")
def client(model_repository):
    return create_app({"max_batch": 8}, model_registry=ModelRegistry(model_repository).load_all()).test_client()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(json_values, near_inputs), model=st.sampled_from(["xor", "digits", "nope"]))
def test_any_json_value_is_answered_or_a_documented_client_error(plane, value, model):
    try:
        if not isinstance(value, list) or not value:
            raise ServiceError(422, "validation_error", "the envelope refuses it")  # pydantic's job: list, min 1
        result = plane.infer(model, None, jsonio.to_array(value, "inputs"))
    except ServiceError as exc:
        assert exc.status in DOCUMENTED, exc.message
        assert exc.message and (exc.details is None or all({"loc", "message", "type"} <= set(d) for d in exc.details))
    else:
        assert result.probabilities.shape[0] == len(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(json_values, near_inputs))
def test_through_the_app_never_a_5xx(client, value):
    body = json.dumps({"model": "xor", "inputs": value}, allow_nan=True)
    r = client.post("/predict", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 or r.status_code in DOCUMENTED, (r.status_code, r.get_data()[:300])
    assert b"Traceback" not in r.get_data()


def test_the_app_runs_without_debug_mode(client):
    assert client.application.debug is False
    assert client.application.config.get("PROPAGATE_EXCEPTIONS") is not True
