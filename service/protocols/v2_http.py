"""The Open Inference Protocol's REST bodies, without a transport: what Flask's view
(``service/app/blueprints/v2.py``) and the inference middleware (``service/app/inference_middleware.py``) both run.

:func:`decode` turns a body (a JSON header, optionally followed by the binary tensor data extension's
raw bytes) into the validated request and its input tensor, raising a :class:`ServiceError` or
pydantic's ``ValidationError`` for a client's mistake and touching nothing else; :func:`encode_outputs`
turns the data plane's answer into the response's JSON header and binary tail. The tensor rules both
V2 front-ends (REST and gRPC) share are in ``service/protocols/v2_tensors.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.dataplane.dataplane import INPUT, LABEL, PROBABILITIES, Inference
from service.dataplane.diagnostics import Explanation
from service.errors import bad_request, quote
from service.protocols import json_codec, json_numbers, v2_tensors
from service.protocols.schemas import ExplainParameters
from service.protocols.v2_schemas import InferenceRequest, RequestInput, RequestOutput

ATTRIBUTIONS, CONVERGENCE_DELTA, TARGET = "attributions", "convergence_delta", "target"
EXPLAIN_OUTPUTS = (ATTRIBUTIONS, CONVERGENCE_DELTA)
HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION_TEXT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Decoded:
    """A validated inference request: what to run, on which version, and the explanation outputs asked for."""

    request: InferenceRequest
    head: bytes  # the JSON header (its booleans and baseline are read again by an explanation)
    version: int | None
    tensor: np.ndarray  # the input, in its declared shape and datatype
    explaining: list[RequestOutput]


def decode(raw: bytes, header: str | None, name: str, version: int | None,
           max_values: Callable[[], int]) -> Decoded:
    """The request in ``raw`` (``header``: its Inference-Header-Content-Length, if sent) for the model
    ``name`` (and ``version``) of the URL; ``max_values()`` bounds the numbers a body may hold (asked
    only of a large body)."""
    head, binary = split_body(raw, header)
    json_codec.check_value_count(head, max_values)
    doc, numbers, text = parse_head(head)
    req = InferenceRequest.model_validate(doc)
    version = named_in_body(req, name, version)
    names = [i.name for i in req.inputs]
    explaining = [o for o in req.outputs or [] if o.name in EXPLAIN_OUTPUTS]
    check_outputs(req)
    if names.count(INPUT) != 1 or not set(names) <= {INPUT, TARGET} or len(names) != len(set(names)) or \
            (TARGET in names and not explaining):
        raise bad_request(f"model '{name}' takes one input named '{INPUT}' (and '{TARGET}' with an explanation "
                          f"output); the request has {quote(names)}")
    # A JSON true/false may sit in the data only if the body holds more of them than the parameters do.
    booleans = json_codec.count_booleans(text) > sum(booleans_in(p) for p in parameter_dicts(req))
    tensor = decode_input(next(i for i in req.inputs if i.name == INPUT), binary, booleans, numbers)
    return Decoded(req, head, version, tensor, explaining)


def parse_head(head: bytes | bytearray) -> tuple[Any, np.ndarray | None, bytes | bytearray]:
    """(document, the input's data as float64 or None, the text to count booleans in).

    The common case, the input's data a float tensor of plain numbers and no boolean in the body but the
    parameters' (so :func:`decode_input` would read it with ``json_codec.floats``), is parsed by
    ``json_numbers`` (the document holding its placeholder there); any other head whole, by
    :func:`json_codec.loads`, as before.
    """
    found = json_numbers.cut(head, (b"data",))
    doc = found.doc if found is not None else None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if isinstance(inputs, list):
        holders = [i for i in inputs if isinstance(i, dict) and i.get("data") == json_numbers.PLACEHOLDER]
        datatype = holders[0].get("datatype") if holders else None
        outputs = doc.get("outputs") if isinstance(doc.get("outputs"), list) else []
        parameters = [x.get("parameters") for x in (doc, *inputs, *outputs) if isinstance(x, dict)]
        if holders and holders[0].get("name") == INPUT and isinstance(datatype, str) and datatype.startswith("FP") \
                and json_codec.count_booleans(found.rest) <= sum(booleans_in(p) for p in parameters):
            return doc, found.numbers, found.rest
    return json_codec.loads(head), None, head


def check_outputs(req: InferenceRequest) -> None:
    """The outputs asked for, checked before anything runs (a mistake here was a 400 only after the
    pass had run, been counted a success and captured): known names, each once, strict binary flags,
    and no classification extension (Triton's ``classification``: this server does not give it)."""
    all_binary = flag(req.parameters or {}, "binary_data_output", False, "the request's")
    names = [out.name for out in req.outputs or []]
    for out in req.outputs or []:
        params = out.parameters or {}
        flag(params, "binary_data", all_binary, f"output {quote(out.name)}'s")
        if out.name not in (PROBABILITIES, LABEL, *EXPLAIN_OUTPUTS):
            raise bad_request(f"unknown output {quote(out.name)}; the model gives '{PROBABILITIES}' and '{LABEL}', "
                              f"and explanations as '{ATTRIBUTIONS}' and '{CONVERGENCE_DELTA}'")
        if names.count(out.name) > 1:
            raise bad_request(f"output {quote(out.name)} is asked for more than once")
        if "classification" in params:
            raise bad_request(f"output {quote(out.name)}: the classification extension is not supported; "
                              f"ask for '{LABEL}' (the predicted class) and '{PROBABILITIES}'")


def explain_parameters(request_parameters: dict[str, Any], outputs: list[RequestOutput]) -> ExplainParameters:
    """The explanation's settings: the request's parameters of those names (tritonclient sends
    request parameters only), then the explanation outputs' own (less the binary extension's)."""
    merged = {k: v for k, v in request_parameters.items() if k in ExplainParameters.model_fields}
    for out in outputs:
        merged.update({k: v for k, v in (out.parameters or {}).items() if k != "binary_data"})
    if "targets" in merged:
        raise bad_request(f"name the classes in an input '{TARGET}' (BYTES, one per sample), not a parameter")
    if isinstance(merged.get("baseline"), list | dict):
        raise bad_request("baseline must be a number here (parameters are scalars); POST /explain takes a sample")
    params = ExplainParameters.model_validate(merged)
    if params.method != "integrated_gradients" and any(out.name == CONVERGENCE_DELTA for out in outputs):
        raise bad_request(f"output '{CONVERGENCE_DELTA}' is given by method 'integrated_gradients' only")
    return params


def decode_targets(inp: RequestInput) -> list[str]:
    if inp.datatype != "BYTES" or (inp.parameters or {}).get("binary_data_size") is not None:
        raise bad_request(f"input '{TARGET}' must be BYTES sent as JSON data: one class name per sample")
    data = inp.data
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data) or len(data) != math.prod(inp.shape):
        raise bad_request(f"input '{TARGET}' must hold {math.prod(inp.shape)} class names (strings) as its data")
    return data


def named_in_body(req: InferenceRequest, name: str, version: int | None) -> int | None:
    """The version to run, once the body's ``model_name``/``model_version`` (KServe's SDK sends them)
    agree with the URL: a body that names another model or version is a 400; a body version where
    the URL names none selects it."""
    if req.model_name not in (None, "") and req.model_name != name:
        raise bad_request(f"the body's model_name {quote(req.model_name)} contradicts the URL's model '{name}'")
    if req.model_version in (None, ""):
        return version
    if not VERSION_TEXT.fullmatch(req.model_version):
        raise bad_request(f"the body's model_version must be a version number, got {quote(req.model_version)}")
    named = int(req.model_version)
    if version is not None and named != version:
        raise bad_request(f"the body's model_version {quote(req.model_version)} contradicts the URL's version "
                          f"{version}")
    return named


def split_body(raw: bytes, header: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) per the Inference-Header-Content-Length request header's value."""
    if header is None:
        return raw, memoryview(b"")
    if not (header.isascii() and header.isdigit()) or not 0 < int(header) <= len(raw):
        raise bad_request(f"{HEADER_LENGTH} must be a byte count from 1 to the body's {len(raw)}, got {quote(header)}")
    n = int(header)
    return raw[:n], memoryview(raw)[n:]


def parameter_dicts(req: InferenceRequest) -> list[dict[str, Any]]:
    dicts = [req.parameters or {}, *((i.parameters or {}) for i in req.inputs)]
    return dicts + [o.parameters or {} for o in req.outputs or []]


def booleans_in(value: Any) -> int:
    """How many booleans a parsed JSON value holds (iteratively: parameters may nest ~1000 deep)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            count += 1
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def flag(params: dict[str, Any], name: str, default: bool, where: str) -> bool:
    """A boolean parameter, strictly: ``"no"`` or ``1`` is a client mistake, not true."""
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where} parameter {name} must be true or false, got {quote(value)}")
    return value


def whole_uint64(data: list[Any], arr: np.ndarray) -> np.ndarray:
    """UINT64 data as sent: NumPy reads a list mixing integers under and over 2**63 as float64, which
    rounds 2**64 - 1 up to 2**64, outside UINT64 (binary tensors, gRPC and /predict took it). Whole
    numbers in range are read again, exactly; anything else is left for ``check_integers`` to refuse."""
    if not arr.size or arr.min() < 0 or not np.array_equal(arr, np.trunc(arr)):
        return arr
    try:
        return np.array(data, dtype=np.uint64)
    except (OverflowError, ValueError, TypeError):  # 2**64 or more: out of range, as check_integers says
        return arr


def decode_input(inp: RequestInput, binary: memoryview, booleans: bool,
                 numbers: np.ndarray | None = None) -> np.ndarray:
    """The input tensor in its declared shape and datatype, from JSON data or the binary tail
    (the rules both V2 front-ends share: service/protocols/v2_tensors.py); ``numbers``: its JSON data,
    already parsed (:func:`parse_head`)."""
    v2_tensors.input_dtype(inp.name, inp.datatype)
    count = v2_tensors.element_count(inp.name, inp.shape)
    params = inp.parameters or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad_request(f"input {quote(inp.name)}: binary_data_size must be a byte count, got {quote(size)}")
        if inp.data is not None:
            raise bad_request(f"input {quote(inp.name)} has both data and binary_data_size; send one")
        if size != len(binary):
            raise bad_request(f"input {quote(inp.name)} declares {size} bytes of binary data, but {len(binary)} bytes "
                              f"follow the JSON header")
        return v2_tensors.from_raw(inp.name, inp.datatype, inp.shape, binary)
    if len(binary):
        raise bad_request(f"{len(binary)} bytes follow the JSON header, but no input names binary_data_size")
    if not isinstance(inp.data, list):
        raise bad_request(f"input {quote(inp.name)} has no data: send 'data' (a list) or binary_data_size")
    if numbers is not None:  # what json_codec.floats reads from the same data, parsed straight
        fast = numbers
    else:
        fast = json_codec.floats(inp.data) if not booleans and inp.datatype.startswith("FP") else None  # floats
    arr = fast if fast is not None else json_codec.to_array(inp.data, inp.name, booleans)
    if inp.datatype == "UINT64" and arr.dtype.kind == "f":
        arr = whole_uint64(inp.data, arr)
    if arr.size != count:
        raise bad_request(f"input {quote(inp.name)}: shape {inp.shape} holds {count} values, but data has {arr.size}")
    v2_tensors.check_integers(inp.name, inp.datatype, arr)
    return arr.reshape(inp.shape)


def encode_outputs(req: InferenceRequest, result: Inference, explanation: Explanation | None = None,
                   input_shape: tuple[int, ...] = ()) -> tuple[bytes, bytes | None]:
    """The response's JSON header and its binary tail (None when every output went as JSON data)."""
    all_binary = flag(req.parameters or {}, "binary_data_output", False, "the request's")
    wanted = req.outputs or [RequestOutput(name=PROBABILITIES)]
    outputs, tail = [], []
    for out in wanted:
        params = out.parameters or {}
        binary = flag(params, "binary_data", all_binary, f"output {quote(out.name)}'s")
        if out.name == PROBABILITIES:
            tensor = result.probabilities
            spec = {"name": PROBABILITIES, "datatype": "FP32", "shape": list(tensor.shape)}
            raw = np.ascontiguousarray(tensor, dtype="<f4") if binary else None  # joined below: one copy
            data = tensor.ravel() if not binary else None
        elif out.name == LABEL:
            labels = result.predicted()
            spec = {"name": LABEL, "datatype": "BYTES", "shape": [len(labels)]}
            raw = v2_tensors.pack_bytes(labels) if binary else None
            data = labels if not binary else None
        elif explanation is not None and out.name in EXPLAIN_OUTPUTS:
            if out.name == ATTRIBUTIONS:
                tensor = explanation.result.attributions.reshape(input_shape)
            elif explanation.result.convergence_delta is None:
                raise bad_request(f"output '{CONVERGENCE_DELTA}' is given by method 'integrated_gradients' only")
            else:
                tensor = explanation.result.convergence_delta
            spec = {"name": out.name, "datatype": "FP64", "shape": list(tensor.shape)}
            raw = np.ascontiguousarray(tensor, dtype="<f8") if binary else None
            data = tensor.ravel() if not binary else None
        else:
            raise bad_request(f"unknown output {quote(out.name)}; the model gives '{PROBABILITIES}' and '{LABEL}', and "
                              f"explanations as '{ATTRIBUTIONS}' and '{CONVERGENCE_DELTA}'")
        if raw is not None:
            spec["parameters"] = {"binary_data_size": raw.nbytes if isinstance(raw, np.ndarray) else len(raw)}
            tail.append(raw)
        else:
            spec["data"] = data
        outputs.append(spec)
    body: dict[str, Any] = {"model_name": result.model, "model_version": str(result.version)}
    if req.id is not None:
        body["id"] = req.id
    body["outputs"] = outputs
    return json_codec.dumps(body), (b"".join(tail) if tail else None)


def framed(head: bytes, tail: bytes | None) -> tuple[bytes, list[tuple[str, str]]]:
    """The response body and its headers: the JSON header alone, or followed by the binary outputs,
    their split in HEADER_LENGTH."""
    if tail is None:
        return head, [("Content-Type", "application/json")]
    return head + tail, [("Content-Type", "application/octet-stream"), (HEADER_LENGTH, str(len(head)))]
