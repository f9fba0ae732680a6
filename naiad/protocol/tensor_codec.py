"""JSON ``data`` lists <-> numpy (flat or nested, row-major), for the HTTP protocol.

The byte rules (raw bytes, BYTES elements, BF16, shape and datatype checks)
every protocol and shared memory share are ``naiad.core.tensor_bytes``. The
decoder checks sizes against the declared shape *before* it allocates
anything shaped by that declaration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from naiad.core import datatypes
from naiad.core.errors import InvalidArgument
from naiad.core.tensor_bytes import bf16_bits_to_float, element_count, float_to_bf16_bits

# ---------------------------------------------------------------------------
# JSON data
# ---------------------------------------------------------------------------


_INT_DATATYPES = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})


def _flat_strings(data: list, name: str) -> list:
    """The strings of a (nested) BYTES ``data`` list, row-major, iteratively."""
    out: list = []
    append = out.append
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            t = type(item)
            if t is str:
                append(item)
            elif t is list:
                stack.append(iter(item))
                break
            else:
                raise InvalidArgument(
                    f"unable to parse 'data' of input '{name}': BYTES elements must be JSON "
                    f"strings, got {_json_type(item)}")
        else:
            stack.pop()
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object"


def _flat_leaves(data: list) -> list:
    """The non-list leaves of a nested list, row-major, iteratively."""
    out: list = []
    append = out.append
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            append(item)
        else:
            stack.pop()
    return out


def _all_ints(data: list) -> bool:
    """Whether every leaf of a (nested) list is a JSON integer (not a boolean)."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            t = type(item)
            if t is list:
                stack.append(iter(item))
                break
            if t is not int:
                return False
        else:
            stack.pop()
    return True


def decode_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A JSON ``data`` field (flat or nested, row-major) as an array of ``shape``.

    The JSON types must fit the datatype, as in Triton: booleans for BOOL,
    integers for the integer types (in range), numbers for the float types,
    strings for BYTES. numpy infers the JSON types in C; only the rare
    results that need a closer look (integers beyond int64) take a Python pass.
    """
    n = element_count(shape)
    if type(data) is not list:
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}': expected a JSON array, got "
            f"{_json_type(data)}")
    if datatype == "BYTES":
        flat = _flat_strings(data, name)
        if len(flat) != n:
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': {len(flat)} elements given, shape "
                f"{list(shape)} needs {n}"
            )
        arr = np.empty(n, dtype=np.object_)
        try:
            arr[:] = [s.encode("utf-8") for s in flat]
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': invalid string: {exc}") from None
        return arr.reshape(shape)
    try:
        inferred = np.array(data)
    except ValueError:
        # ragged nesting, or deeper than numpy's 64 dimensions: Triton only counts
        # the leaves, row-major, so flatten them (this rare path only)
        data = _flat_leaves(data)
        inferred = np.array(data)
    if inferred.size != n:
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}': {inferred.size} elements given, shape "
            f"{list(shape)} needs {n}"
        )
    if n == 0:
        return np.empty(shape, dtype=datatypes.numpy_dtype(datatype))
    kind = inferred.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': BOOL elements must be JSON "
                "booleans")
        return inferred.reshape(shape)
    if datatype in _INT_DATATYPES:
        target = datatypes.numpy_dtype(datatype)
        if kind in "iu":
            if inferred.dtype != target:
                info = np.iinfo(target)
                lo, hi = inferred.min(), inferred.max()
                if lo < info.min or hi > info.max:
                    bad = lo if lo < info.min else hi
                    raise InvalidArgument(
                        f"unable to parse 'data' of input '{name}': {bad} is out of range "
                        f"for {datatype}")
                inferred = inferred.astype(target)
            return inferred.reshape(shape)
        # floats, or integers numpy could not hold in int64 (it then picks float64
        # or object): only all-integer data may go on, converted exactly
        if kind not in "fO" or not _all_ints(data):
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': {datatype} elements must be "
                "JSON integers")
        try:
            arr = np.array(data, dtype=target)
        except (OverflowError, ValueError):
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': a value is out of range for "
                f"{datatype}") from None
        return arr.reshape(shape)
    # FP16, FP32, FP64, BF16
    if kind not in "iuf":
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}': {datatype} elements must be JSON "
            "numbers")
    if datatype == "BF16":
        return float_to_bf16_bits(inferred.astype(np.float32)).reshape(shape)
    return inferred.astype(datatypes.numpy_dtype(datatype), copy=False).reshape(shape)


def nonfinite_json(flat: np.ndarray):
    """A flat float array as a JSON list with NaN/Infinity/-Infinity, as Triton writes them.

    orjson writes non-finite floats as null, which a client reads back as NaN
    at best; Triton writes the literals (which Python's json module reads).
    Returns an ``orjson.Fragment``, or ``flat`` itself when every value is finite.
    """
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat
    text = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    pieces = text.split(b"null")
    bad = flat[~np.isfinite(flat)]
    out = [pieces[0]]
    for value, piece in zip(bad.tolist(), pieces[1:]):
        out.append(b"NaN" if value != value else (b"Infinity" if value > 0 else b"-Infinity"))
        out.append(piece)
    return orjson.Fragment(b"".join(out))


def json_data(datatype: str, arr: np.ndarray):
    """An output tensor as a flat JSON-serialisable value (numpy arrays for orjson).

    Non-finite floats serialise as ``null`` here; ``nonfinite_json`` gives the
    NaN/Infinity literals (the HTTP codec applies it only when a ``null``
    shows up in the serialised response, keeping the check off the common path).
    """
    if datatype == "BYTES":
        out = []
        for item in arr.reshape(-1):
            if isinstance(item, (bytes, bytearray, np.bytes_)):
                out.append(bytes(item).decode("utf-8", "replace"))
            else:
                out.append(str(item))
        return out
    if datatype == "BF16":
        arr = bf16_bits_to_float(arr)
    flat = arr.reshape(-1)
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    return flat
