"""The capture record format: CloudEvents 1.0 in structured JSON mode, one event per line (JSON Lines).

Each captured inference is two events with the same ``id`` (the request id), a request and a response,
with the types and extension attributes of KServe's payload logger (and ``modelversion``), so whatever
consumes KServe's logger reads these unchanged. Their ``data`` is the Open Inference Protocol's (V2)
request and response body. A third type, ``numpy-nets.inference.feedback``, carries labels: for a captured request
(``subject`` names it) or a self-contained labelled example.

A record is one line ending in ``"\\n"``: a reader takes only newline-terminated lines, so a line cut
short by a killed writer is never read (:func:`read_events`).

Numbers: float32 tensors are written as float32's shortest round-trip text (``0.1``, not
``0.10000000149011612``), save one value (``_MISREAD_BITS``), so that any reader that parses the text
as float64 and rounds it to float32 gets the very same bits back (``tests/test_capture.py`` checks
random bit patterns; every finite float32 was checked once). NaN and infinities cannot be JSON: orjson
writes ``null``; the data plane refuses such inputs, so only a broken model's outputs could hold one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import orjson

SPECVERSION = "1.0"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"  # KServe's payload logger's types
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
FEEDBACK_TYPE = "numpy-nets.inference.feedback"
FEEDBACK_SOURCE = "/feedback"
INPUT_NAME = "input"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def new_event_id() -> str:
    """A fresh event id: 32 random hex digits (as ``uuid4().hex``, the request ids' own form)."""
    return os.urandom(16).hex()


def rfc3339(time_ns: int) -> str:
    """``time_ns`` (ns since the epoch) as RFC 3339 in UTC with microseconds: ``2026-12-06T14:03:07.123456Z``."""
    seconds, ns = divmod(time_ns, 1_000_000_000)
    return f"{_second(seconds)}.{ns // 1000:06d}Z"


_last_second: tuple[int, str] = (-1, "")


def _second(seconds: int) -> str:
    # A flush encodes many records of the same second: strftime once per second, not per record. One
    # tuple, swapped whole, so a thread never pairs one second with another's text.
    global _last_second
    cached = _last_second
    if cached[0] != seconds:
        cached = _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return cached[1]


# The one float32 magnitude whose shortest text a float64 reader gets wrong. JSON readers parse numbers
# as float64 (NumPy and PyTorch then round to float32), so the text is rounded twice. Shortest text lies
# within half a float32 step of the value, and for 7.038531e-26 (0x15AE43FD) it lies so close to the
# midpoint with the next float32 that reading it as float64 lands exactly on that midpoint; rounding
# that to float32 goes to the even neighbour, 0x15AE43FE. Every finite float32 was checked (orjson 3.13,
# whose float32 text is the shortest-and-closest, as NumPy's repr): only this one and its negative fail.
# It is written as its float64 text (7.038530691851209e-26), which reads back exactly; every other value
# keeps its short text (float64 text throughout would make an MNIST record 25% larger, a dense one 70%).
# tests/test_capture.py holds orjson to NumPy's repr, so a change of formatting would be noticed.
_MISREAD_BITS = np.uint32(0x15AE43FD)
_MAGNITUDE = np.uint32(0x7FFFFFFF)


def _values(flat: np.ndarray) -> np.ndarray | list:
    """``flat`` as orjson should write it: the array itself, unless it holds the misread value."""
    hard = (flat.view(np.uint32) & _MAGNITUDE) == _MISREAD_BITS
    if not hard.any():
        return flat
    values: list = list(flat)  # float32 scalars: orjson writes their float32 text
    for i in np.flatnonzero(hard):
        values[i] = float(flat[i])  # a Python float: its float64 text
    return values


# One orjson call holds the GIL while it writes: a 1,024-row MNIST batch (800,000 values) took 45-58 ms,
# and the worker's event loop waited for the capture writer's thread all that time. A tensor of more
# than _CHUNK values is written a chunk per call instead and spliced into its event: the same bytes
# as one call, and the thread can give the GIL back between chunks.
_CHUNK = 1 << 15  # values per call: about 2 ms


def _tensor(name: str, array: np.ndarray, large: list[np.ndarray], datatype: str = "FP32") -> dict[str, Any]:
    """One V2 tensor: its shape and its values flat in row-major order. A large one's values are left
    to :func:`_dumps`: appended to ``large``, with a placeholder for its data."""
    # orjson serializes only C-contiguous arrays of the native byte order: this makes one if need be.
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    if flat.size > _CHUNK:
        large.append(flat)
        data: Any = _placeholder(len(large) - 1)
    else:
        data = _values(flat)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def _placeholder(k: int) -> str:
    # replaced once, at its first occurrence: what comes before it in an event (ids, model names, the
    # time) is a checked token, and the labels, a client's text, come after every tensor
    return f"\x00tensor {k}\x00"


def _dumps(event: dict[str, Any], large: list[np.ndarray], option: int = _OPTIONS) -> bytes:
    """``event`` as orjson writes it, with each large tensor's values written in chunks."""
    text = orjson.dumps(event, option=option)
    if not large:
        return text
    parts: list[bytes | memoryview] = []
    for k, flat in enumerate(large):
        head, text = text.split(orjson.dumps(_placeholder(k)), 1)
        parts += (head, b"[")
        for i in range(0, flat.size, _CHUNK):  # each chunk's "[...]" without its brackets, uncopied
            parts += (memoryview(orjson.dumps(_values(flat[i:i + _CHUNK]), option=_OPTIONS))[1:-1], b",")
        parts[-1] = b"]"
    parts.append(text)
    return b"".join(parts)  # the one copy of the values' text


def _attributes(rid: str, kind: str, model: str, version: int, when: str) -> dict[str, Any]:
    return {"specversion": SPECVERSION, "id": rid, "source": f"/models/{model}/versions/{version}", "type": kind,
            "time": when, "datacontenttype": "application/json", "inferenceservicename": model,
            "modelversion": str(version), "component": "predictor", "endpoint": ""}


def inference_events(rid: str, model: str, version: int, time_ns: int, inputs: np.ndarray,
                     probabilities: np.ndarray, labels: Sequence[str]) -> bytes:
    """The request and the response event of one inference: two lines, each ending in ``"\\n"``.

    Parameters
    ----------
    rid : str
        The request id (already a safe token, ``[A-Za-z0-9._:-]{1,128}``): both events' ``id``.
    model, version : str, int
        The model and the version that answered.
    time_ns : int
        When it was answered (``time.time_ns()``): both events' ``time``.
    inputs : numpy.ndarray
        ``(n, features)`` float32: the request's ``input`` tensor.
    probabilities : numpy.ndarray
        ``(n, classes)`` float32: the response's ``probabilities`` tensor.
    labels : sequence of str
        The ``n`` predicted labels: the response's ``label`` tensor (``BYTES``).
    """
    when = rfc3339(time_ns)
    large_in: list[np.ndarray] = []
    large_out: list[np.ndarray] = []
    request = _attributes(rid, REQUEST_TYPE, model, version, when)
    request["data"] = {"id": rid, "inputs": [_tensor(INPUT_NAME, inputs, large_in)]}
    response = _attributes(rid, RESPONSE_TYPE, model, version, when)
    response["data"] = {"id": rid, "model_name": model, "model_version": str(version),
                        "outputs": [_tensor(PROBABILITIES_NAME, probabilities, large_out),
                                    {"name": LABEL_NAME, "shape": [len(labels)], "datatype": "BYTES",
                                     "data": list(labels)}]}
    return b"".join((_dumps(request, large_in), b"\n", _dumps(response, large_out), b"\n"))


@overload
def feedback_event(*, event_id: str, time_ns: int, model: str, labels: Sequence[str], request_id: str,
                   version: int, predicted: Sequence[str]) -> bytes: ...


@overload
def feedback_event(*, event_id: str, time_ns: int, model: str, labels: Sequence[str], inputs: np.ndarray) -> bytes: ...


def feedback_event(*, event_id: str, time_ns: int, model: str, labels: Sequence[str], request_id: str | None = None,
                   version: int | None = None, predicted: Sequence[str] | None = None,
                   inputs: np.ndarray | None = None) -> bytes:
    """One feedback event (one line ending in ``"\\n"``), in either of two forms.

    Labels for a captured request: give ``request_id``, ``version`` and ``predicted`` (the labels the
    model gave when it was captured); ``subject`` is then the request id, and ``data`` is
    ``{"request_id", "model_name", "model_version", "labels", "predicted"}``.

    A self-contained labelled example: give ``inputs`` (``(n, features)`` float32); ``data`` is
    ``{"model_name", "inputs": [V2 FP32 tensor], "labels"}``.

    Parameters
    ----------
    event_id : str
        The event's own id (:func:`new_event_id`), which the server answers with.
    time_ns : int
        When the feedback arrived (``time.time_ns()``).
    model : str
        The model the labels are for.
    labels : sequence of str
        The true labels, one per sample.

    Raises
    ------
    ValueError
        Neither form, or both, was given.
    """
    large: list[np.ndarray] = []
    event: dict[str, Any] = {"specversion": SPECVERSION, "id": event_id, "source": FEEDBACK_SOURCE,
                             "type": FEEDBACK_TYPE, "time": rfc3339(time_ns), "datacontenttype": "application/json",
                             "inferenceservicename": model}
    if request_id is not None and inputs is None and version is not None and predicted is not None:
        event["subject"] = request_id
        event["modelversion"] = str(version)
        event["data"] = {"request_id": request_id, "model_name": model, "model_version": str(version),
                         "labels": list(labels), "predicted": list(predicted)}
    elif inputs is not None and request_id is None and version is None and predicted is None:
        event["data"] = {"model_name": model, "inputs": [_tensor(INPUT_NAME, inputs, large)], "labels": list(labels)}
    else:
        raise ValueError("feedback_event takes either request_id, version and predicted, or inputs alone")
    return _dumps(event, large, _OPTIONS | orjson.OPT_APPEND_NEWLINE)


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """The events of one capture file, in order: every complete (newline-terminated) line that parses.

    A last line without its ``"\\n"`` is a write in progress or one cut short by a killed process, never
    a record: it is skipped, as is any line that does not parse as a JSON object. Safe to call on a
    file another process is appending to.
    """
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                return
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event
