"""``POST /feedback``: the ground truth for captured requests, or labelled examples (docs/feedback-loop.md).

The body is one of:

* ``{"id": "<X-Request-ID>", "label": "7"}`` (``"labels": [...]`` for a request of several samples);
* a list of those (at most ``MAX_ITEMS``), stored all or none;
* ``{"model": "mnist", "inputs": [[...]], "labels": ["7"]}``: an example that carries its inputs.

With ``FEEDBACK_TOKEN`` set, ``Authorization: Bearer <FEEDBACK_TOKEN>`` is required (401 / 403).
The rules (404, 409, 422, 503, 507, duplicates) are the data plane's: ``service/dataplane/feedback.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Response, current_app, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import Field, RootModel, TypeAdapter

from service.app.blueprints import dataplane, respond_json, settings
from service.dataplane.feedback import Feedback, Labelled
from service.errors import ServiceError, invalid
from service.protocols import json_codec
from service.protocols import repository as tokens
from service.protocols.schemas import ErrorResponse, FeedbackResponse, LabelledExample, RequestLabel

MAX_ITEMS = 1024  # labels for captured requests in one body
LABEL_LIST = TypeAdapter(list[RequestLabel])


class FeedbackRequest(RootModel[RequestLabel | list[RequestLabel] | LabelledExample]):
    root: RequestLabel | list[RequestLabel] | LabelledExample = Field(..., examples=[{"id": "1f0e...", "label": "7"}])


ERRORS = {status: ErrorResponse for status in (400, 404, 409, 413, 415, 422, 503, 507)}
TOKEN_ERRORS = {status: ErrorResponse for status in (401, 403)}


def blueprint(secured: bool) -> APIBlueprint:
    """``POST /feedback``; with ``FEEDBACK_TOKEN`` set (``secured``) the OpenAPI document says it needs
    the bearer token and may answer 401 / 403, and without one it says neither (it is open)."""
    bp = APIBlueprint("feedback", __name__, abp_tags=[Tag(name="feedback")],
                      abp_responses={**ERRORS, **(TOKEN_ERRORS if secured else {})},
                      abp_security=[{"bearer": []}] if secured else [])
    bp.post("/feedback", responses={200: FeedbackResponse})(post_feedback)
    return bp


def desk() -> Feedback:
    return current_app.extensions["feedback"]


def reads_own_body(func):
    """The view validates its body itself, after the token check and in the body's one shape (the
    signature still documents the body for the OpenAPI document)."""
    @functools.wraps(func)
    def view(**path_values):
        return func(body=None)
    view.__delay_validate_request__ = True  # flask-openapi3: do not parse and validate the body
    return view


@reads_own_body
def post_feedback(body: FeedbackRequest) -> Response:
    """Labels for captured requests (by the X-Request-ID of their answers), or labelled examples."""
    token = settings().feedback_token
    if token is not None:
        tokens.authorize(token, request.headers.get("Authorization", ""), "POST /feedback", "FEEDBACK_TOKEN")
    if not request.is_json:
        raise ServiceError(415, "unsupported_media_type",
                           f"send the body as application/json (got {request.mimetype or 'no content type'})")
    raw = request.get_data()
    json_codec.check_value_count(raw, dataplane().max_values)
    parsed = parse(json_codec.loads(raw))
    if isinstance(parsed, LabelledExample):
        g.model = parsed.model
        inputs = json_codec.samples(parsed.inputs, raw)
        results = [desk().example(parsed.model, inputs, parsed.labels)]
    else:
        items = parsed if isinstance(parsed, list) else [parsed]
        where = (lambda i: f"{i}.labels") if isinstance(parsed, list) else (lambda i: "labels")
        results = desk().label([(item.id, item.given(), where(i)) for i, item in enumerate(items)])
        g.model = results[0].model if results else None
    g.batch_size = sum(len(r.labels) for r in results)
    return respond_json({"stored": sum(not r.duplicate for r in results), "results": [as_json(r) for r in results]})


def parse(body: Any) -> RequestLabel | list[RequestLabel] | LabelledExample:
    """The body as the one shape it has (so a mistake is reported against that shape alone)."""
    if isinstance(body, list):
        if not body:
            raise invalid("", "send at least one {id, label}")
        if len(body) > MAX_ITEMS:
            raise invalid("", f"at most {MAX_ITEMS} labels per body, not {len(body)}")
        items = LABEL_LIST.validate_python(body)
        for i, item in enumerate(items):
            one_of(item, f"{i}.label")
        return items
    if isinstance(body, dict) and "inputs" in body:
        return LabelledExample.model_validate(body)
    if isinstance(body, dict):
        return one_of(RequestLabel.model_validate(body), "label")
    raise invalid("", "expected {id, label}, a list of them, or {model, inputs, labels}", "model_type")


def one_of(item: RequestLabel, loc: str) -> RequestLabel:
    if (item.label is None) == (item.labels is None):
        raise invalid(loc, "send either label (one sample) or labels (one per sample)")
    return item


def as_json(r: Labelled) -> dict[str, Any]:
    return {"id": r.id, "model": r.model, "version": r.version, "labels": r.labels, "predicted": r.predicted,
            "correct": r.correct, "duplicate": r.duplicate}
