"""Big tensors through gRPC without copying them in Python.

A ``ModelInferRequest`` parsed by protobuf copies every ``raw_input_contents``
entry twice (into the message, then into a new ``bytes`` on each access), and
a ``ModelInferResponse`` built with its ``raw_output_contents`` copies each
output twice more (into the message, then out by ``SerializeToString``). For
a 64 MB tensor those copies cost more than the model.

Protobuf's wire format lets us step around them: a message is a sequence of
fields, each a key (field number, wire type) and a value, and a repeated
``bytes`` field is just that field repeated. So:

* ``split_request(data)`` walks the top-level fields of a serialized
  ``ModelInferRequest`` and returns the bytes of every field except
  ``raw_input_contents`` (field 7), to be parsed by protobuf as usual (small),
  plus a ``memoryview`` of each raw entry into ``data`` itself: the tensors are
  never copied, numpy views them where they arrived;
* ``join_response(head, raws)`` serializes a response whose
  ``raw_output_contents`` are appended by hand after the message protobuf
  serialized without them: each output is copied once, into the frame grpc
  sends;
* ``encode_response(...)`` writes a whole plain response (no parameters, no
  shared-memory outputs: the usual ModelInfer answer) without building a
  message at all: the encoded output descriptions (name, datatype, shape)
  are cached, since a model answers with the same few again and again.

Fields may appear in any order on the wire and a parser concatenates repeated
fields in order, so both forms are exactly what protobuf reads and writes.
Only messages of at least ``MIN_SPLIT_BYTES`` take this path; below that
protobuf's C parser is cheaper than a walk in Python.
"""

from __future__ import annotations

from typing import Any

MIN_SPLIT_BYTES = 64 * 1024
_RAW_INPUT_FIELD = 7
_RAW_OUTPUT_KEY = b"\x32"  # field 6 (raw_output_contents), wire type 2


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def split_request(data: bytes) -> tuple[bytes, list[memoryview]] | None:
    """(the message without raw_input_contents, views of each raw entry), or None.

    None when the bytes are not a well-formed sequence of fields: the caller
    then parses ``data`` with protobuf, which gives the usual error.
    """
    buf = memoryview(data)
    end = len(buf)
    rest: list[memoryview] = []
    raws: list[memoryview] = []
    i = start = 0
    try:
        while i < end:
            key, j = _varint(buf, i, end)
            wire_type = key & 7
            if wire_type == 2:
                size, j = _varint(buf, j, end)
                value_start, j = j, j + size
            elif wire_type == 0:
                _, j = _varint(buf, j, end)
            elif wire_type == 1:
                j += 8
            elif wire_type == 5:
                j += 4
            else:
                return None
            if j > end:
                return None
            if key >> 3 == _RAW_INPUT_FIELD and wire_type == 2:
                if i > start:
                    rest.append(buf[start:i])
                raws.append(buf[value_start:j])
                start = j
            i = j
    except ValueError:
        return None
    if start < end:
        rest.append(buf[start:end])
    return b"".join(rest), raws


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def join_response(head: Any, raws: list) -> bytes:
    """``head`` (a message without raw_output_contents) serialized, then each raw entry."""
    parts: list = [head.SerializeToString()]
    for raw in raws:
        parts.append(_RAW_OUTPUT_KEY + _encode_varint(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _string_field(key: bytes, text: str) -> bytes:
    if not text:
        return b""  # proto3: a default value is not written
    data = text.encode("utf-8")
    return key + _encode_varint(len(data)) + data


_OUTPUT_ENTRIES: dict[tuple, bytes] = {}
_OUTPUT_ENTRIES_MAX = 4096


def _output_entry(name: str, datatype: str, shape: tuple) -> bytes:
    """``outputs`` (field 5): one InferOutputTensor{name, datatype, packed shape}."""
    key = (name, datatype, shape)
    entry = _OUTPUT_ENTRIES.get(key)
    if entry is None:
        body = _string_field(b"\x0a", name) + _string_field(b"\x12", datatype)
        if shape:
            dims = b"".join(_encode_varint(d) for d in shape)
            body += b"\x1a" + _encode_varint(len(dims)) + dims
        entry = b"\x2a" + _encode_varint(len(body)) + body
        if len(_OUTPUT_ENTRIES) >= _OUTPUT_ENTRIES_MAX:
            _OUTPUT_ENTRIES.clear()
        _OUTPUT_ENTRIES[key] = entry
    return entry


def encode_response(model_name: str, model_version: str, request_id: str,
                    outputs: list[tuple[str, str, tuple, Any]]) -> bytes:
    """A ModelInferResponse without parameters: (name, datatype, shape, raw) per output.

    Byte for byte what protobuf writes for the same message (fields in number
    order, the shape packed, every raw entry written even when empty).
    """
    parts = [_string_field(b"\x0a", model_name), _string_field(b"\x12", model_version),
             _string_field(b"\x1a", request_id)]
    for name, datatype, shape, _ in outputs:
        parts.append(_output_entry(name, datatype, shape))
    for *_, raw in outputs:
        parts.append(_RAW_OUTPUT_KEY + _encode_varint(len(raw)))
        parts.append(raw)
    return b"".join(parts)
