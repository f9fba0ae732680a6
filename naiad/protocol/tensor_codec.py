"""Tensor (de)serialisation shared by every protocol.

- raw little-endian bytes <-> numpy (binary tensor extension, gRPC raw contents,
  shared memory), without copying where numpy allows;
- BYTES: elements prefixed by a 4-byte little-endian length;
- JSON ``data`` lists <-> numpy (flat or nested, row-major);
- BF16 <-> float32.

Every decoder checks sizes against the declared shape *before* it allocates
anything shaped by that declaration, so a request declaring a huge shape over
a small body is refused cheaply.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from naiad.core.errors import InvalidArgument
from naiad.protocol import datatypes

_U32 = struct.Struct("<I")


def element_count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# numpy's own limits: a shape beyond them cannot be built, so it is refused as
# a client error instead of failing later inside numpy
MAX_DIMS = 64
_MAX_DIM = (1 << 63) - 1


def check_shape(shape: Any, name: str) -> tuple[int, ...]:
    """A request shape: a list of non-negative ints."""
    if not isinstance(shape, (list, tuple)):
        raise InvalidArgument(f"shape of input '{name}' must be an array of integers")
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(
            f"shape of input '{name}' has {len(shape)} dimensions, more than {MAX_DIMS}")
    for d in shape:
        if type(d) is not int or d < 0 or d > _MAX_DIM:
            # the client's values, but never a nested structure (its repr could recurse)
            flat = all(isinstance(x, (int, float, str, type(None))) for x in shape)
            got = str(list(shape))[:200] if flat else "an array holding arrays or objects"
            raise InvalidArgument(
                f"shape of input '{name}' must contain non-negative integers, got {got}")
    return tuple(shape)


def check_datatype(datatype: Any, name: str) -> str:
    """A request input's wire datatype, refused unless it is one of the known names."""
    if type(datatype) is not str or datatype not in datatypes.ELEMENT_SIZE:
        raise InvalidArgument(f"invalid datatype for input {name}")
    return datatype


def duplicate_input_error(name: str, request_id: str = "") -> InvalidArgument:
    return InvalidArgument(f"[request id: {request_id or '<id_unknown>'}] input '{name}' "
                           "already exists in request")


# ---------------------------------------------------------------------------
# raw bytes
# ---------------------------------------------------------------------------


def decode_raw(buf, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """An array over ``buf`` (bytes/bytearray/memoryview) of the declared shape.

    Fixed-size types are viewed without copying; BYTES elements are parsed.
    """
    if datatype == "BYTES":
        return decode_bytes_elements(buf, shape, name)
    size = datatypes.ELEMENT_SIZE[datatype]
    n = element_count(shape)
    expected = n * size
    if len(buf) != expected:
        raise InvalidArgument(
            f"unexpected byte size for input '{name}': expected {expected} bytes for shape "
            f"{list(shape)} of {datatype}, got {len(buf)}"
        )
    arr = np.frombuffer(buf, dtype=datatypes.WIRE_NUMPY[datatype], count=n)
    if arr.dtype.byteorder == "<" and np.little_endian is False:  # pragma: no cover
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr.reshape(shape)


def decode_bytes_elements(buf, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Parse 4-byte-length-prefixed elements; the count must match the shape."""
    n = element_count(shape)
    mv = memoryview(buf)
    total = len(mv)
    # every element needs at least its 4-byte length: refuse impossible shapes early
    if n * 4 > total:
        raise InvalidArgument(
            f"unexpected byte size for BYTES input '{name}': {total} bytes cannot hold {n} "
            "elements"
        )
    items = []
    off = 0
    append = items.append
    for i in range(n):
        if off + 4 > total:
            raise InvalidArgument(
                f"incomplete string length indicator for BYTES input '{name}': element {i} "
                f"needs 4 bytes but only {total - off} bytes are left")
        (ln,) = _U32.unpack_from(mv, off)
        off += 4
        if off + ln > total:
            raise InvalidArgument(
                f"incomplete string data for BYTES input '{name}': element {i} has length "
                f"{ln} but only {total - off} bytes are left")
        append(bytes(mv[off:off + ln]))
        off += ln
    if off != total:
        raise InvalidArgument(
            f"unexpected byte size for BYTES input '{name}': {total - off} bytes left after "
            f"the {n} elements its shape {list(shape)} holds"
        )
    arr = np.empty(n, dtype=np.object_)
    arr[:] = items
    return arr.reshape(shape)


def count_bytes_elements(buf, name: str) -> int:
    """How many length-prefixed BYTES elements ``buf`` holds (it must hold them exactly)."""
    mv = memoryview(buf)
    total = len(mv)
    off = 0
    n = 0
    while off < total:
        if off + 4 > total:
            raise InvalidArgument(f"truncated BYTES element in input '{name}'")
        (ln,) = _U32.unpack_from(mv, off)
        off += 4 + ln
        if off > total:
            raise InvalidArgument(f"truncated BYTES element in input '{name}'")
        n += 1
    return n


def bytes_tensor(items: list, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A BYTES tensor from a list of ``bytes`` elements (gRPC ``bytes_contents``)."""
    n = element_count(shape)
    if len(items) != n:
        raise InvalidArgument(
            f"expected {n} string elements for inference input '{name}' of shape "
            f"{list(shape)}, got {len(items)}")
    arr = np.empty(n, dtype=np.object_)
    arr[:] = items
    return arr.reshape(shape)


def encode_bytes_elements(arr: np.ndarray) -> bytes:
    """Serialise a BYTES tensor (object array of bytes/str) as length-prefixed elements."""
    parts = []
    append = parts.append
    for item in arr.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray)):
            item = str(item).encode("utf-8") if not isinstance(item, np.bytes_) else bytes(item)
        append(_U32.pack(len(item)))
        append(item)
    return b"".join(parts)


def raw_bytes(datatype: str, arr: np.ndarray):
    """The wire bytes of an output tensor (a memoryview where no copy is needed)."""
    if datatype == "BYTES":
        return encode_bytes_elements(arr)
    want = datatypes.WIRE_NUMPY[datatype]
    if arr.dtype != want:
        arr = arr.astype(want)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return memoryview(arr).cast("B") if arr.size else b""


# ---------------------------------------------------------------------------
# BF16
# ---------------------------------------------------------------------------


def float_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest-even) and return their uint16 bits."""
    f = np.asarray(values, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


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
