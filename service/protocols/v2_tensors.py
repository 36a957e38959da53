"""The Open Inference Protocol's tensor rules, shared by its REST codec and its gRPC codec. No Flask.

What a tensor's declared datatype and shape allow, how its raw little-endian bytes (REST's binary
tensor data extension, gRPC's ``raw_input_contents``) become an array, and how BYTES elements are
framed (a 4-byte little-endian length, then the UTF-8 bytes). Errors are 400s with the client's
values quoted (:func:`service.errors.quote`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from service.dataplane.dataplane import INPUT_DATATYPES
from service.errors import bad_request, quote


def input_dtype(name: str, datatype: str) -> str:
    """The NumPy dtype of an input's declared datatype (FP32, FP64 or an integer type)."""
    dtype = INPUT_DATATYPES.get(datatype)
    if dtype is None:
        raise bad_request(f"input {quote(name)} has datatype {quote(datatype)}; use FP32, FP64 or an "
                          f"integer type ({', '.join(INPUT_DATATYPES)})")
    return dtype


MAX_DIMS = 32  # NumPy's limit is 64; a served model's input has a few
MAX_SPAN = 2**48  # elements a shape may span, its zeros aside: NumPy cannot even describe [0, 2**62, 2**62]


def element_count(name: str, shape: Sequence[int]) -> int:
    """How many elements a declared shape holds; a negative dimension, more than ``MAX_DIMS`` of them,
    or dimensions past any array's size (even beside a 0) are a client's mistake, not NumPy's error."""
    if any(d < 0 for d in shape):
        raise bad_request(f"input {quote(name)} has shape {quote(list(shape))}: dimensions must be 0 or more")
    if len(shape) > MAX_DIMS or math.prod(max(d, 1) for d in shape) > MAX_SPAN:
        raise bad_request(f"input {quote(name)} has shape {quote(list(shape))}: at most {MAX_DIMS} dimensions, "
                          f"spanning at most {MAX_SPAN} elements")
    return math.prod(shape)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """An input tensor from its raw little-endian bytes, which must be exactly what its shape holds
    (the shape is checked against the bytes before anything is allocated). A read-only view of them:
    a body received into a ``bytearray`` (``http_server/request_body.py``) would give a writable one,
    and nothing may write into a request's input, as nothing could when bodies were ``bytes``."""
    dtype = input_dtype(name, datatype)
    needed = element_count(name, shape) * np.dtype(dtype).itemsize
    if len(raw) != needed:
        raise bad_request(f"input {quote(name)}: shape {list(shape)} of {datatype} is {needed} bytes, but "
                          f"{len(raw)} bytes were sent")
    arr = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))
    arr.flags.writeable = False
    return arr


def check_integers(name: str, datatype: str, arr: np.ndarray) -> None:
    """Values sent as numbers for an integer datatype must be integers within its range."""
    dtype = input_dtype(name, datatype)
    if np.dtype(dtype).kind not in "iu":
        return
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr)):
        raise bad_request(f"input {quote(name)} is {datatype} but its data holds non-integer values")
    info = np.iinfo(dtype)
    # floats against the range's exact float bounds: float(2**64 - 1) rounds up to 2**64, which would pass
    top = float(info.max + 1) if arr.dtype.kind == "f" else None
    if arr.size and (arr.min() < info.min or (arr.max() >= top if top is not None else arr.max() > info.max)):
        raise bad_request(f"input {quote(name)} holds values outside the range of {datatype}")


def pack_bytes(values: Sequence[str]) -> bytes:
    """BYTES elements as raw contents: each a 4-byte little-endian length and its UTF-8 bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in values))
