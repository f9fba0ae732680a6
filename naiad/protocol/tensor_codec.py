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

from naiad.core.errors import InvalidArgument
from naiad.protocol import datatypes

_U32 = struct.Struct("<I")


def element_count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_shape(shape: Any, name: str) -> tuple[int, ...]:
    """A request shape: a list of non-negative ints."""
    if not isinstance(shape, (list, tuple)):
        raise InvalidArgument(f"shape of input '{name}' must be an array of integers")
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidArgument(
                f"shape of input '{name}' must contain non-negative integers, got {list(shape)}"
            )
    return tuple(shape)


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
    for _ in range(n):
        if off + 4 > total:
            raise InvalidArgument(f"truncated BYTES element in input '{name}'")
        (ln,) = _U32.unpack_from(mv, off)
        off += 4
        if off + ln > total:
            raise InvalidArgument(f"truncated BYTES element in input '{name}'")
        append(bytes(mv[off:off + ln]))
        off += ln
    if off != total:
        raise InvalidArgument(
            f"unexpected byte size for BYTES input '{name}': {total - off} bytes left after "
            f"{n} elements"
        )
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


def _flatten(data, out: list) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, out)
        else:
            out.append(item)


def decode_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A JSON ``data`` field (flat or nested, row-major) as an array of ``shape``."""
    n = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat: list = []
        _flatten(data, flat)
        if len(flat) != n:
            raise InvalidArgument(
                f"unable to parse 'data' of input '{name}': {len(flat)} elements given, shape "
                f"{list(shape)} needs {n}"
            )
        arr = np.empty(n, dtype=np.object_)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                arr[i] = item.encode("utf-8")
            elif isinstance(item, (bool, int, float)):
                arr[i] = str(item).encode("utf-8")
            else:
                raise InvalidArgument(
                    f"unable to parse 'data' of input '{name}': BYTES elements must be strings"
                )
        return arr.reshape(shape)
    target = np.float32 if datatype == "BF16" else datatypes.numpy_dtype(datatype)
    try:
        arr = np.asarray(data, dtype=target)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}' as {datatype}: {exc}"
        ) from None
    if arr.size != n:
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}': {arr.size} elements given, shape "
            f"{list(shape)} needs {n}"
        )
    if datatype == "BF16":
        arr = float_to_bf16_bits(arr)
    return arr.reshape(shape)


def json_data(datatype: str, arr: np.ndarray):
    """An output tensor as a flat JSON-serialisable value (numpy arrays for orjson)."""
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
