"""The byte rules of tensors, whatever carries them.

- raw little-endian bytes <-> numpy (binary tensor extension, gRPC raw contents,
  shared memory), without copying where numpy allows;
- BYTES: elements prefixed by a 4-byte little-endian length;
- BF16 <-> float32;
- the checks every decoder makes on a declared shape and datatype.

Every decoder checks sizes against the declared shape *before* it allocates
anything shaped by that declaration, so a request declaring a huge shape over
a small body is refused cheaply. ``naiad.protocol.tensor_codec`` adds the JSON
``data`` lists on top.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from naiad.core import datatypes
from naiad.core.errors import InvalidArgument

_U32 = struct.Struct("<I")
_BIG_ENDIAN_HOST = not np.little_endian


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
    if _BIG_ENDIAN_HOST:  # pragma: no cover
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr if len(shape) == 1 else arr.reshape(shape)


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
