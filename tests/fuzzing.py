"""Seeded random mutation of real requests, for the protocol fuzz tests.

Every choice comes from one ``random.Random(seed)``, so a failing case is
reproduced by its seed and round (the tests print both). Mutations work at
three levels: bytes (flip, insert, delete, truncate, splice, repeat), JSON
trees (replace a value with an odd one, drop or add keys, deep nesting) and,
in the tests, the protocol's own fields (headers, lengths, encodings, paths,
protobuf fields).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

# values a client should never send where a string/number/list/object is expected
ODD_SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, 10**30,
    1.5, -0.0, 1e308, -1e308, "", "0", "-1", "1e9", "abc", "\u00e9\u4e2d\U0001f600",
    "x" * 5000, "\x00", "TYPE_FP32", "FP32", "BYTES", "OFF", "TIMESTAMPS", "null",
]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES", "fp32", "FLOAT", "", "STRING"]


def nested(rng: random.Random, depth: int | None = None) -> Any:
    """A list or object nested ``depth`` deep (deeper than parsers allow, sometimes).

    Deep values are a placeholder string that ``dumps`` expands into the nested
    JSON text, so the fuzzer itself never recurses that deep.
    """
    depth = depth if depth is not None else rng.choice([2, 10, 100, 1000, 1100, 5000])
    leaf = rng.choice(["1", '"a"', "null", "[]"])
    opening = "".join("[" if rng.random() < 0.7 else '{"a":' for _ in range(depth))
    closing = "".join("]" if c == "[" else "}" for c in reversed(opening.replace('{"a":', "{")))
    return _DEEP + str(len(_deep_texts)) + _deep_texts_add(opening + leaf + closing)


_DEEP = "\u0000deep:"
_deep_texts: list[str] = []


def _deep_texts_add(text: str) -> str:
    _deep_texts.append(text)
    return ""


def dumps(obj: Any) -> bytes:
    """JSON text of a (mutated) request, deep placeholders expanded."""
    text = json.dumps(obj)
    if "\\u0000deep:" in text:
        def expand(m: re.Match) -> str:
            return _deep_texts[int(m.group(1))]
        text = re.sub(r'"\\u0000deep:(\d+)"', expand, text)
    return text.encode()


def odd_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.55:
        return rng.choice(ODD_SCALARS)
    if r < 0.65:
        return nested(rng)
    if r < 0.75:
        return [odd_value(rng) for _ in range(rng.randint(0, 4))]
    if r < 0.85:
        return {rng.choice(["name", "datatype", "shape", "data", "parameters", "x", ""]):
                odd_value(rng) for _ in range(rng.randint(0, 3))}
    if r < 0.92:
        return [rng.choice([-1, 0, 1, 2**40, 2**63 - 1]) for _ in range(rng.randint(0, 5))]
    return rng.choice(DATATYPES)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if len(prefix) > 12:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):  # long data arrays: only the first elements
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(rng: random.Random, obj: Any, rounds: int | None = None) -> Any:
    """A copy of ``obj`` with 1-3 random changes at random places in its tree."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rounds or rng.randint(1, 3)):
        paths = _paths(obj)
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.2:
                obj = odd_value(rng)
            continue
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = rng.random()
        if action < 0.6:
            parent[key] = odd_value(rng)
        elif action < 0.75:
            del parent[key]
        elif action < 0.9 and isinstance(parent, dict):
            parent[rng.choice(["extra", "binary_data_size", "shared_memory_region",
                               "shared_memory_byte_size", "classification", "binary_data",
                               "sequence_id", "priority", "timeout", "id", "outputs",
                               "parameters"])] = odd_value(rng)
        elif isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))  # duplicate an element
        else:
            parent[key] = nested(rng)
    return obj


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """1-4 byte-level changes."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        pos = rng.randint(0, len(buf)) if buf else 0
        if action < 0.3 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randint(0, 7)
        elif action < 0.45:
            buf[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        elif action < 0.6 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        elif action < 0.7:
            del buf[pos:]
        elif action < 0.8 and buf:
            start = rng.randint(0, len(buf) - 1)
            chunk = buf[start:start + rng.randint(1, 64)]
            buf[pos:pos] = chunk * rng.randint(1, 8)
        elif action < 0.9 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice([0x00, 0xFF, 0x7F, 0x80, ord('"'),
                                                      ord("{"), ord("]")])
        else:
            buf += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
    return bytes(buf)
