"""Labelled examples from served traffic: captured inferences joined with the labels sent to POST /feedback.

The server writes ``CAPTURE_DIR/capture-*.jsonl`` (a request and a response CloudEvent per captured
inference, ``id`` = the request id) and ``CAPTURE_DIR/feedback/feedback-*.jsonl`` (feedback events:
labels for a captured request, ``data.request_id``, or a self-contained labelled example,
``data.inputs``); files of either kind are read from ``CAPTURE_DIR`` and from its ``feedback/``. One
event per line; only newline-terminated lines count (a last line without its ``"\\n"`` is a write cut
short, skipped).

:func:`load_feedback` reads the feedback files first and the capture files second, keeping only the
captured requests some feedback labels, so a capture directory far larger than memory is fine. Each
labelled row becomes one example with an id (``<request id>/<row>`` or ``<feedback event id>/<row>``)
and a time (the capture's, or the self-contained feedback's). What fails validation is counted by
reason and logged, never raised:

``unparseable``  a complete line that is not JSON (counted per line)
``malformed``    JSON, but not an event of the expected form: no id or time, no labels list, no tensor
                 (per event)
``wrong_shape``  a tensor whose shape is not (n, features) or whose data is not n * features long, or
                 labels not one per captured row (per row)
``not_finite``   a row holding NaN or an infinity (the server writes NaN as ``null``) (per row)
``out_of_range`` a row with a value outside the recipe's ``input_range`` (per row)
``unknown_label`` a label that is not one of the model's (per row)
``conflict``     a later label for an example already labelled differently (per row; the first by
                 time wins: a later correction is treated as suspect, not as truth)
``not_captured`` a label for a request id with no captured request of this model (per row)
``ambiguous_id`` a label for a request id captured more than once with other inputs (a client reusing
                 its ids): the label could be either request's (per row)

A later label equal to the first is a ``duplicate``: ignored, counted apart (a client's retry is no fault).

A fixed share of the examples is the *field* set, chosen by a hash of the example's inputs
(:func:`is_field`): the same input is on the same side in every run, whatever else arrived and however
many times it was sent (as a captured request or an example), so the field set is never trained on by
any version and the accuracies of two versions on it compare. A self-contained example's id is that
hash too (``input-<hex>``), so one sent again is one example, as a captured request labelled again is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
FEEDBACK_TYPE = "numpy-nets.inference.feedback"
FEEDBACK_SUBDIR = "feedback"  # CAPTURE_DIR/feedback/feedback-*.jsonl (service/capture/capture.py)
INPUT_NAME = "input"
LABEL_NAME = "label"
FIELD_SHARE = 0.2  # the default share of examples held out as the field set
DISAGREEMENT_WARNING = 0.5  # above this share of labels contradicting the served answer, warn (poisoning?)
REASONS = ("unparseable", "malformed", "wrong_shape", "not_finite", "out_of_range", "unknown_label", "conflict",
           "not_captured", "ambiguous_id")
MAX_LINE_WARNINGS = 10  # warnings naming a bad line; beyond them, only the count


class FeedbackError(ValueError):
    """The feedback cannot be used: no such directory, or no examples where some are needed."""


def input_digest(row: np.ndarray) -> bytes:
    """The SHA-256 of one example's inputs, as the float32 little-endian bytes the model ran on."""
    return hashlib.sha256(np.ascontiguousarray(row, dtype="<f4").tobytes()).digest()


def is_field(row: np.ndarray, share: float) -> bool:
    """Whether the example with inputs ``row`` (features,) belongs to the field set of the given ``share``.

    The first 8 bytes of :func:`input_digest`, as a big-endian integer, below ``share * 2**64``: a
    property of the inputs alone, so stable across runs, machines and whatever else is in the set,
    and every copy of an input is on the same side (a copy on each side would be trained on and
    then judged on).
    """
    return int.from_bytes(input_digest(row)[:8], "big") < share * 2**64


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time as an aware UTC datetime (a time without an offset is taken as UTC); None if not one."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves it past year 9999
        return None


@dataclass
class FeedbackSet:
    """The joined, validated examples of one model, sorted by id.

    Attributes
    ----------
    ids : list of str, (n,)
    x : ndarray of shape (n, features), float32
        Exactly the values the server was sent (float32 bits, as served).
    y : ndarray of shape (n,), int64
        Indices into ``labels``.
    times : list of datetime, (n,)
        When the input was served (capture) or sent (self-contained feedback), UTC.
    served : list of (str or None), (n,)
        The label the serving model answered at capture; None for self-contained examples.
    field_mask : ndarray of shape (n,), bool
        The field set (:func:`is_field`), never trained on.
    """

    labels: list[str]
    ids: list[str]
    x: np.ndarray
    y: np.ndarray
    times: list[datetime]
    served: list[str | None]
    field_mask: np.ndarray
    field_share: float
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    partial_lines: int = 0

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def field_count(self) -> int:
        return int(self.field_mask.sum())

    @property
    def train_count(self) -> int:
        return self.count - self.field_count

    def train_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The examples to train on: (x (m, features), y (m,))."""
        return self.x[~self.field_mask], self.y[~self.field_mask]

    def field_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The field set: (x (k, features), y (k,))."""
        return self.x[self.field_mask], self.y[self.field_mask]

    @property
    def sha256(self) -> str:
        """SHA-256 of the set, canonical: per example in id order, the id's length (8 bytes, little
        endian) and UTF-8 bytes, the float32 values (little endian), the label's length and text."""
        digest = hashlib.sha256()
        for example_id, row, label in zip(self.ids, self.x, self.y, strict=True):
            ident, name = example_id.encode("utf-8"), self.labels[label].encode("utf-8")
            digest.update(len(ident).to_bytes(8, "little"))
            digest.update(ident)
            digest.update(np.ascontiguousarray(row, dtype="<f4").tobytes())
            digest.update(len(name).to_bytes(8, "little"))
            digest.update(name)
        return digest.hexdigest()

    @property
    def time_range(self) -> list[str] | None:
        """[first, last] example time as RFC 3339 (UTC), or None when empty."""
        if not self.times:
            return None
        return [min(self.times).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                max(self.times).isoformat(timespec="microseconds").replace("+00:00", "Z")]

    def disagreement_at_capture(self) -> tuple[float | None, int]:
        """The share of examples whose label differs from what the serving model answered at capture,
        over the examples where that answer is known, and their number (share None when there are none)."""
        known = [(self.labels[y], s) for y, s in zip(self.y, self.served, strict=True) if s is not None]
        if not known:
            return None, 0
        return sum(label != s for label, s in known) / len(known), len(known)

    def summary(self) -> dict[str, Any]:
        """Counts, time range, SHA-256, rejections and the disagreement with the served answers (JSON-ready)."""
        rate, known = self.disagreement_at_capture()
        return {"count": self.count, "train_count": self.train_count, "field_count": self.field_count,
                "field_share": self.field_share, "time_range": self.time_range, "sha256": self.sha256,
                "rejected": dict(self.rejected), "duplicates": self.duplicates, "partial_lines": self.partial_lines,
                "disagreement_at_capture": {"share": rate, "examples": known}}


@dataclass
class _Tensor:
    """A parsed input tensor: rows (n, features) float32, or the rejection of all of its n rows."""

    rows: np.ndarray | None
    n: int
    problem: str | None = None


@dataclass
class _Capture:
    time: datetime
    tensor: _Tensor
    served: list[str] | None = None
    ambiguous: bool = False  # captured again with other inputs: a label for the id could be either's


@dataclass(order=True)
class _Labelled:
    """One feedback event's claim, sorted by when it was made (then where it was read)."""

    time: datetime
    place: tuple[str, int]
    event_id: str = field(compare=False)
    labels: list[Any] = field(compare=False)
    request_id: str | None = field(compare=False, default=None)
    tensor: _Tensor | None = field(compare=False, default=None)
    predicted: list[Any] | None = field(compare=False, default=None)


class _Loader:
    """State of one :func:`load_feedback` call: the counts, and the bad-line warnings given so far."""

    def __init__(self, model_name: str, labels: list[str], input_features: int,
                 input_range: tuple[float, float]) -> None:
        self.model_name, self.labels, self.features = model_name, list(labels), input_features
        self.low, self.high = (float(v) for v in input_range)
        self.rejected = dict.fromkeys(REASONS, 0)
        self.partial_lines = 0
        self.warned = 0

    def reject(self, reason: str, count: int = 1, where: str = "") -> None:
        self.rejected[reason] += count
        if reason in ("unparseable", "malformed") and self.warned < MAX_LINE_WARNINGS:
            self.warned += 1
            log.warning("skipping %s: %s", where, reason)

    def events(self, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, event) of each complete line of ``path`` that is a JSON object; an unreadable
        file is skipped with a warning (as its lines would be)."""
        try:
            with open(path, "rb") as fh:
                yield from self._lines(path, fh)
        except OSError as e:  # e.g. a directory with a capture's name, or no permission
            log.warning("skipping %s: %s", path, e.strerror or e)

    def _lines(self, path: Path, fh: BinaryIO) -> Iterator[tuple[int, dict[str, Any]]]:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):  # a write cut short (crash, or in progress): never a record
                self.partial_lines += 1
                log.info("%s:%d: skipping the partial last line", path, number)
                return
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
                self.reject("unparseable", where=f"{path}:{number}")
                continue
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                self.reject("malformed", where=f"{path}:{number}")
                continue
            yield number, event

    def tensor(self, inputs: Any) -> _Tensor | None:
        """The input tensor of a V2 ``inputs`` list, validated row by row; None if there is no tensor at all."""
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
            return None
        named = [t for t in inputs if t.get("name") == INPUT_NAME]
        tensor = named[0] if named else inputs[0] if len(inputs) == 1 else None
        if tensor is None or tensor.get("datatype", "FP32") != "FP32":
            return None
        shape, data = tensor.get("shape"), tensor.get("data")
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(data, list)):
            return None
        n = shape[0]
        if len(shape) < 2 or math.prod(shape[1:]) != self.features or len(data) != n * self.features:
            return _Tensor(None, n, "wrong_shape")
        try:
            # float64 first: the text is float32's shortest repr, which float64 reads exactly, and the
            # rounding to float32 then gives the served bits back (service/capture/events.py). null -> NaN.
            rows = np.asarray(data, dtype=np.float64).astype(np.float32).reshape(n, self.features)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past any float
            return None
        return _Tensor(rows, n)

    def row_problem(self, row: np.ndarray) -> str | None:
        if not np.isfinite(row).all():
            return "not_finite"
        if row.min(initial=self.low) < self.low or row.max(initial=self.high) > self.high:
            return "out_of_range"
        return None


def load_feedback(directory: str | Path, model_name: str, labels: list[str], input_features: int, *,
                  input_range: tuple[float, float] | list[float] = (0.0, 1.0),
                  field_share: float = FIELD_SHARE) -> FeedbackSet:
    """The labelled examples for ``model_name`` in the capture directory ``directory``.

    Parameters
    ----------
    directory : path
        The server's ``CAPTURE_DIR``: ``capture-*.jsonl`` and ``feedback-*.jsonl`` files, in it or in
        its ``feedback/``.
    model_name : str
        Only this model's captures and feedback are read (others are ignored, not rejected).
    labels : list of str
        The model's labels: a feedback label must be one of them; ``y`` indexes them.
    input_features : int
        Features per row: a tensor of shape (n, features) (or (n, ...) with that many features).
    input_range : (low, high)
        Every value of a row must lie within it (the recipe's ``preprocessing["input_range"]``).
    field_share : float
        The share of examples in the field set, in (0, 1).

    Raises
    ------
    FeedbackError
        ``directory`` is not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FeedbackError(f"{directory}: no such directory (the server's CAPTURE_DIR)")
    if not 0.0 < field_share < 1.0:
        raise ValueError(f"field_share must be in (0, 1), got {field_share}")
    loader = _Loader(model_name, labels, input_features, tuple(input_range))
    claims = _read_feedback(loader, _files(directory, "feedback-*.jsonl"))
    wanted = {c.request_id for c in claims if c.request_id is not None}
    captures = _read_captures(loader, _files(directory, "capture-*.jsonl"), wanted)
    examples, duplicates = _join(loader, sorted(claims), captures)
    result = _assemble(loader, examples, duplicates, field_share)
    _log_summary(directory, model_name, result)
    return result


def _files(directory: Path, pattern: str) -> list[Path]:
    """The files named ``pattern`` in ``directory`` and in its ``feedback/`` (where the server keeps the
    labels, under a disk budget of their own), in name order."""
    return sorted(p for p in [*directory.glob(pattern), *(directory / FEEDBACK_SUBDIR).glob(pattern)] if p.is_file())


def _read_feedback(loader: _Loader, paths: list[Path]) -> list[_Labelled]:
    claims = []
    for path in paths:
        for number, event in loader.events(path):
            if event["type"] != FEEDBACK_TYPE:
                continue
            where = f"{path}:{number}"
            data = event.get("data")
            when = parse_time(event.get("time"))
            if not isinstance(data, dict) or not isinstance(event.get("id"), str) or when is None:
                loader.reject("malformed", where=where)
                continue
            model = data.get("model_name", event.get("inferenceservicename"))
            if model != loader.model_name:
                continue  # another model's
            request_id = data.get("request_id", event.get("subject"))
            labels = data.get("labels")
            if not isinstance(labels, list):
                loader.reject("malformed", where=where)
                continue
            claim = _Labelled(when, (path.name, number), event["id"], labels)
            if "inputs" in data:
                claim.tensor = loader.tensor(data["inputs"])
                if claim.tensor is None:
                    loader.reject("malformed", where=where)
                    continue
            elif isinstance(request_id, str):
                claim.request_id = request_id
                predicted = data.get("predicted")
                claim.predicted = predicted if isinstance(predicted, list) else None
            else:
                loader.reject("malformed", where=where)
                continue
            claims.append(claim)
    return claims


def _read_captures(loader: _Loader, paths: list[Path], wanted: set[str]) -> dict[str, _Capture]:
    """The captured requests (and the answers given) whose ids are ``wanted``, first capture of an id kept
    (a client's retry captured again is the same request; other inputs under that id make it ambiguous)."""
    captures: dict[str, _Capture] = {}
    answers: dict[str, list[str]] = {}
    for path in paths:
        for number, event in loader.events(path):
            kind, rid = event["type"], event.get("id")
            if kind not in (REQUEST_TYPE, RESPONSE_TYPE) or not isinstance(rid, str) or rid not in wanted:
                continue  # the unlabelled majority is never parsed further
            if event.get("inferenceservicename") != loader.model_name:
                continue
            data = event.get("data")
            if kind == RESPONSE_TYPE:
                outputs = data.get("outputs") if isinstance(data, dict) else None
                outputs = outputs if isinstance(outputs, list) else []
                label = next((o for o in outputs if isinstance(o, dict) and o.get("name") == LABEL_NAME), None)
                if label is not None and isinstance(label.get("data"), list):
                    answers.setdefault(rid, [str(v) for v in label["data"]])
                continue
            when = parse_time(event.get("time"))
            tensor = loader.tensor(data.get("inputs")) if isinstance(data, dict) else None
            if when is None or tensor is None:
                loader.reject("malformed", where=f"{path}:{number}")
                continue
            first = captures.setdefault(rid, _Capture(when, tensor))
            if first.tensor is not tensor and not same_rows(first.tensor, tensor):
                first.ambiguous = True
    for rid, capture in captures.items():
        capture.served = answers.get(rid)
    return captures


def same_rows(a: _Tensor, b: _Tensor) -> bool:
    """Whether two parsed tensors hold the very same rows (both unreadable alike counts as the same)."""
    if a.rows is None or b.rows is None:
        return a.rows is None and b.rows is None and a.n == b.n and a.problem == b.problem
    return a.rows.shape == b.rows.shape and a.rows.tobytes() == b.rows.tobytes()


@dataclass
class _Example:
    x: np.ndarray
    label: int
    time: datetime
    served: str | None


def _join(loader: _Loader, claims: list[_Labelled], captures: dict[str, _Capture]) -> tuple[dict[str, _Example], int]:
    """Each claim's rows validated and keyed by example id; the first valid claim of an id (by time) wins."""
    examples: dict[str, _Example] = {}
    duplicates = 0
    for claim in claims:
        if claim.request_id is not None:
            capture = captures.get(claim.request_id)
            if capture is None:
                loader.reject("not_captured", max(len(claim.labels), 1))
                continue
            if capture.ambiguous:
                loader.reject("ambiguous_id", max(len(claim.labels), 1))
                continue
            tensor, when, base = capture.tensor, capture.time, claim.request_id
            served = capture.served if capture.served is not None else claim.predicted
        else:
            assert claim.tensor is not None
            tensor, when, base, served = claim.tensor, claim.time, None, None
        if tensor.problem is not None or tensor.rows is None:
            loader.reject(tensor.problem or "malformed", max(tensor.n, 1))
            continue
        if len(claim.labels) != tensor.n:
            loader.reject("wrong_shape", tensor.n)
            continue
        for row, (values, label) in enumerate(zip(tensor.rows, claim.labels, strict=True)):
            problem = loader.row_problem(values)
            if problem is None and (not isinstance(label, str) or label not in loader.labels):
                problem = "unknown_label"
            if problem is not None:
                loader.reject(problem)
                continue
            # a captured request's row by its id, an example's by its inputs: sent again, it is one example
            example_id = f"{base}/{row}" if base is not None else f"input-{input_digest(values).hex()[:24]}"
            index = loader.labels.index(label)
            first = examples.get(example_id)
            if first is not None:
                if first.label == index:
                    duplicates += 1
                else:
                    loader.reject("conflict")
                continue
            answer = served[row] if served is not None and len(served) == tensor.n else None
            examples[example_id] = _Example(values, index, when, None if answer is None else str(answer))
    return examples, duplicates


def _assemble(loader: _Loader, examples: dict[str, _Example], duplicates: int, field_share: float) -> FeedbackSet:
    ids = sorted(examples)
    chosen = [examples[i] for i in ids]
    x = np.stack([e.x for e in chosen]) if chosen else np.empty((0, loader.features), dtype=np.float32)
    return FeedbackSet(labels=loader.labels, ids=ids, x=x.astype(np.float32, copy=False),
                       y=np.array([e.label for e in chosen], dtype=np.int64), times=[e.time for e in chosen],
                       served=[e.served for e in chosen],
                       field_mask=np.array([is_field(e.x, field_share) for e in chosen], dtype=bool),
                       field_share=field_share,
                       rejected={k: v for k, v in loader.rejected.items() if v}, duplicates=duplicates,
                       partial_lines=loader.partial_lines)


def _log_summary(directory: Path, model_name: str, result: FeedbackSet) -> None:
    log.info("feedback for %s in %s: %d examples (%d to train on, %d field), %s, sha256 %s",
             model_name, directory, result.count, result.train_count, result.field_count,
             "from {} to {}".format(*result.time_range) if result.time_range else "no times",
             result.sha256[:16])
    if result.rejected:
        log.warning("feedback rejected: %s", ", ".join(f"{k}={v}" for k, v in result.rejected.items()))
    if result.duplicates:
        log.info("feedback: %d duplicate labels ignored", result.duplicates)
    rate, known = result.disagreement_at_capture()
    if rate is not None:
        level = logging.WARNING if rate > DISAGREEMENT_WARNING else logging.INFO
        log.log(level, "feedback labels disagree with the served answer for %.1f%% of %d captured examples%s",
                100 * rate, known, " (poisoned labels?)" if level == logging.WARNING else "")
