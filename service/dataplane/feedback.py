"""Feedback: the ground truth for captured requests, and labelled examples that carry their own inputs.

The rules, for every protocol that offers feedback (today ``POST /feedback``):

* a label for a request id needs that request captured (``CAPTURE_DIR``): an id never captured, or
  forgotten (older than the id index holds), is a 404 that names it; an id captured again with
  another answer (a client reusing its ids) is a 409, as the label could be either's; a label the
  version that answered does not have is a 422; one label per captured sample (``label`` for one,
  ``labels`` for a batch);
* the first feedback for an id stands. The same labels again are answered as before, marked
  ``duplicate``, and write nothing (so a client may retry freely); other labels for an id already
  labelled are a 409 that says which labels stand. Two workers receiving an id's first feedback
  at the same instant may both write it: training takes the earliest and counts the rest
  (``training/feedback.py``);
* a labelled example is checked like a ``/predict`` batch (shape, finiteness, range) and run on
  the version serving now, so that its outcome counts towards that version's live accuracy;
* feedback is stored whole and durably (fsync) before the answer, within the capture's disk budget
  (507 when the budget is full: nothing half-stored). It is counted (``accuracy.py``) and shown, and
  trained on only when an operator passes the directory to a training run.

Lookups and writes read and write files, so they run through ``run`` (the HTTP worker's background
thread; inline elsewhere).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.capture import events
from service.capture.capture import Capture
from service.capture.journal import CaptureWriteError
from service.dataplane.dataplane import DataPlane, label_indices
from service.dataplane.diagnostics import Offload, run_inline
from service.errors import ServiceError, invalid, not_found, quote
from service.observability import accuracy

FRESH_WAIT = 0.5  # seconds an unknown id is looked for again before it is a 404


@dataclass(frozen=True)
class Labelled:
    """What one piece of feedback did: the labels stored for ``id`` and the answers they judge."""

    id: str  # the request id labelled, or the new example's event id
    model: str
    version: int
    labels: list[str]
    predicted: list[str]
    duplicate: bool = False

    @property
    def correct(self) -> list[bool]:
        return [a == b for a, b in zip(self.labels, self.predicted, strict=True)]


def off() -> ServiceError:
    return ServiceError(404, "feedback_off",
                        "feedback is off: the server has no CAPTURE_DIR, or cannot use it (see its log)")


def disk_refused() -> ServiceError:
    return ServiceError(503, "capture_failing", "feedback not stored: the disk refused to write CAPTURE_DIR; "
                        "nothing of it was kept, send it again later", headers={"Retry-After": "5"})


def budget_full() -> ServiceError:
    return ServiceError(507, "capture_full", "feedback not stored: CAPTURE_DIR is at CAPTURE_MAX_BYTES; "
                        "an operator must move files away", headers={"Retry-After": "60"})


class Feedback:
    """``POST /feedback``'s rules over the data plane's models and the capture directory."""

    def __init__(self, plane: DataPlane, run: Offload = run_inline) -> None:
        self.plane, self.run = plane, run

    @property
    def capture(self) -> Capture | None:
        """The data plane's (None: no ``CAPTURE_DIR``, or a worker that cannot use it)."""
        return self.plane.capture

    def label(self, items: list[tuple[str, list[str], str]]) -> list[Labelled]:
        """Labels for captured requests: ``(request id, labels, field)`` each; all stored, or none (a
        process killed inside the one write may leave its first lines, each whole: a retry completes it).

        ``field`` names the item in the client's body for errors (``0.labels``)."""
        if self.capture is None:
            raise off()
        index = self.capture.index
        self._offload(index.refresh)
        waited = 0.0
        # A request answered a moment ago may still be in its process's queue (written every 50 ms).
        # The wait is the caller's (a greenlet in an HTTP worker, whose sleep yields), never ``run``'s:
        # the worker's one background thread also runs explanations, and a client sending unknown
        # ids must not hold it.
        while waited < FRESH_WAIT and any(index.captured(rid) is None for rid, _, _ in items):
            time.sleep(0.05)
            waited += 0.05
            self._offload(index.refresh)
        return self._offload(self._label, items)

    def _label(self, items: list[tuple[str, list[str], str]]) -> list[Labelled]:
        index = self.capture.index
        answers, lines, seen = [], [], {}
        for rid, labels, field in items:
            captured = index.captured(rid)
            if captured is None:
                raise not_found(f"no captured request with id {quote(rid)}: it was not sampled "
                                "(CAPTURE_SAMPLE_RATE), not captured here, or is too old")
            if captured.ambiguous:
                raise ServiceError(409, "ambiguous_request_id", f"request id {quote(rid)} was captured more than "
                                   "once, with other answers: a label for it could belong to either request. "
                                   "Send the inputs with their labels instead (model, inputs, labels)")
            if len(labels) != len(captured.predicted):
                raise invalid(field, f"request {quote(rid)} had {len(captured.predicted)} samples: send one "
                              f"label per sample, not {len(labels)}")
            self._check_labels(captured.model, captured.version, labels, field)
            before = index.labels_of(rid) or seen.get(rid)
            if before is not None:
                if list(before) != labels:
                    raise ServiceError(409, "already_labelled", f"request {quote(rid)} is already labelled "
                                       f"{list(before)}; the first feedback stands")
                answers.append(Labelled(rid, captured.model, captured.version, labels, list(captured.predicted),
                                        duplicate=True))
                continue
            seen[rid] = tuple(labels)
            answer = Labelled(rid, captured.model, captured.version, labels, list(captured.predicted))
            answers.append(answer)
            lines.append(events.feedback_event(
                event_id=events.new_event_id(), request_id=rid, model=captured.model, version=captured.version,
                labels=labels, predicted=list(captured.predicted), time_ns=time.time_ns()))
        self._store(b"".join(lines))
        for answer in answers:
            if not answer.duplicate:
                index.note_labels(answer.id, tuple(answer.labels))
                right = sum(answer.correct)
                accuracy.count(answer.model, answer.version, right, len(answer.labels) - right)
        return answers

    def example(self, name: str, inputs: np.ndarray, labels: list[str], field: str = "inputs") -> Labelled:
        """A labelled example with its own inputs: checked, run on the serving version, stored."""
        if self.capture is None:
            raise off()
        if len(labels) != len(inputs):
            raise invalid("labels", f"{len(inputs)} samples need {len(inputs)} labels, not {len(labels)}")
        result = self.plane.infer(name, None, inputs, field=field)  # every /predict rule, and the version now
        entry = self.plane.resolve(result.model, result.version)
        label_indices(labels, entry)  # the 422 for a label the model does not have
        batch = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1)
        event_id = events.new_event_id()
        line = events.feedback_event(event_id=event_id, model=result.model, labels=labels, inputs=batch,
                                     time_ns=time.time_ns())
        self._offload(self._store, line)
        answer = Labelled(event_id, result.model, result.version, labels, result.predicted())
        right = sum(answer.correct)
        accuracy.count(answer.model, answer.version, right, len(labels) - right)
        return answer

    def _offload(self, fn, *args):
        """``fn(*args)`` through ``run``, its exception raised here: a thread pool would print it as
        a crash (with the client's text in it) instead of handing it back."""
        result, error = self.run(returning_errors, fn, *args)
        if error is not None:
            raise error
        return result

    def _check_labels(self, model: str, version: int, labels: list[str], field: str) -> None:
        known = self.plane.registry.snapshot.models.get(model, {})
        entry = known.get(version) if isinstance(known, dict) else None
        if entry is None or not entry.ready:  # that version is gone: judge by the one serving now
            entry = self.plane.resolve(model)
        label_indices(labels, entry, field)

    def _store(self, lines: bytes) -> None:
        limit = self.capture.feedback.journal.max_bytes
        if len(lines) > limit:  # no retry and no operator could make room for it: not a 507
            raise ServiceError(413, "feedback_too_large", f"this feedback takes {len(lines)} bytes as stored, "
                               f"over the whole feedback budget ({limit} bytes, a sixteenth of CAPTURE_MAX_BYTES); "
                               "send it in smaller parts")
        try:
            stored = not lines or self.capture.feedback.write_now(lines)
        except CaptureWriteError:
            raise disk_refused() from None  # logged by the journal; the client learns nothing was kept
        if not stored:
            raise budget_full()


def returning_errors(fn, *args):
    try:
        return fn(*args), None
    except Exception as exc:  # re-raised by the caller, in its own thread
        return None, exc
