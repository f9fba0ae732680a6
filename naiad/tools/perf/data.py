"""Input data for ``naiad perf``: random, zero, perf_analyzer's JSON files, directories.

The result is a list of *streams*, each a list of *steps*, each a dict input
name -> :class:`Value` (a batch-1 tensor). Models without sequences use the
steps of all streams round-robin; sequence models play one stream per
sequence (perf_analyzer's rules, docs/input_data.md of perf_analyzer):

* ``random`` (default): one random tensor per input, made once and reused;
  floats uniform in [0, 1), integers in [0, 100), booleans, and strings of
  ``--string-length`` random letters (or ``--string-data``).
* ``zero``: zeros (empty strings... of ``--string-length`` zero bytes for BYTES).
* ``FILE.json``: ``{"data": [step, ...]}`` or ``{"data": [[step, ...], ...]}``
  (streams); a value is a flat list, ``{"b64": ...}`` (raw little-endian bytes,
  length-prefixed elements for BYTES) or ``{"content": ..., "shape": [...]}``.
  Several files append their streams.
* a directory: one file per input named after it, raw bytes of a batch-1
  tensor (BYTES inputs: a text file, one element per line).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import string
from typing import Any

import numpy as np
import orjson

from naiad.core import datatypes
from naiad.core import tensor_bytes as tb
from naiad.tools.perf.model import ModelInfo, TensorSpec


class DataError(Exception):
    pass


@dataclasses.dataclass
class Value:
    datatype: str
    shape: list[int]  # batch-1 shape, without the batch dimension for batching models
    array: np.ndarray


Step = dict[str, Value]


def _concrete_shape(spec: TensorSpec, shapes: dict[str, list[int]],
                    override: list[int] | None = None) -> list[int]:
    if override is not None:
        shape = list(override)
    elif spec.name in shapes:
        shape = list(shapes[spec.name])
    else:
        shape = list(spec.shape)
    if len(shape) != len(spec.shape) and spec.shape:
        raise DataError(f"input {spec.name}: --shape {shape} does not have the model's "
                        f"{len(spec.shape)} dimensions {spec.shape}")
    for i, (d, m) in enumerate(zip(shape, spec.shape)):
        if m != -1 and d != m:
            raise DataError(f"input {spec.name}: dimension {i} is {d} but the model expects {m}")
    if any(d < 0 for d in shape):
        raise DataError(f"input {spec.name} contains dynamic shape, provide shapes to send "
                        "along with the request")
    return shape


def _random_strings(n: int, length: int, rng: np.random.Generator) -> list[bytes]:
    alphabet = np.frombuffer((string.ascii_letters + string.digits).encode(), dtype=np.uint8)
    picks = rng.integers(0, len(alphabet), size=(n, length))
    return [alphabet[row].tobytes() for row in picks]


def synthetic(model: ModelInfo, kind: str, shapes: dict[str, list[int]], string_length: int,
              string_data: str | None, seed: int = 0) -> list[list[Step]]:
    """One stream of one step: random or zero data for every input."""
    rng = np.random.default_rng(seed)
    step: Step = {}
    for spec in model.inputs:
        shape = _concrete_shape(spec, shapes)
        n = int(np.prod(shape)) if shape else 1
        if spec.datatype == "BYTES":
            if string_data is not None:
                items = [string_data.encode()] * n
            elif kind == "zero":
                items = [b"\0" * string_length] * n
            else:
                items = _random_strings(n, string_length, rng)
            arr = np.empty(n, dtype=np.object_)
            arr[:] = items
            arr = arr.reshape(shape)
        else:
            dtype = datatypes.numpy_dtype(spec.datatype)
            if kind == "zero":
                arr = np.zeros(shape, dtype=dtype)
            elif spec.datatype == "BOOL":
                arr = rng.integers(0, 2, size=shape).astype(np.bool_)
            elif spec.datatype in ("FP16", "FP32", "FP64"):
                arr = rng.random(size=shape).astype(dtype)
            elif spec.datatype == "BF16":
                arr = tb.float_to_bf16_bits(rng.random(size=shape))
            else:
                arr = rng.integers(0, 100, size=shape).astype(dtype)
        step[spec.name] = Value(spec.datatype, shape, arr)
    return [[step]]


def _decode_b64(text: str, spec: TensorSpec, shape: list[int] | None) -> np.ndarray:
    raw = base64.b64decode(text)
    if spec.datatype == "BYTES":
        arr = tb.decode_bytes_elements(raw, (tb.count_bytes_elements(
            raw, spec.name),), spec.name)
        return arr
    dtype = datatypes.WIRE_NUMPY[spec.datatype]
    if len(raw) % dtype.itemsize:
        raise DataError(f"input {spec.name}: b64 data of {len(raw)} bytes is not a whole "
                        f"number of {spec.datatype} elements")
    return np.frombuffer(raw, dtype=dtype).copy()


def _value(spec: TensorSpec, raw: Any, shapes: dict[str, list[int]], where: str) -> Value:
    shape_given = None
    content = raw
    if isinstance(raw, dict) and "content" in raw:
        content = raw["content"]
        if "shape" in raw:
            shape_given = [int(d) for d in raw["shape"]]
    if isinstance(content, dict):
        if "b64" not in content:
            raise DataError(f"{where}: input {spec.name}: expected a list, {{\"b64\": ...}} or "
                            "{\"content\": ..., \"shape\": ...}")
        flat = _decode_b64(content["b64"], spec, shape_given)
    elif isinstance(content, list):
        leaves = np.asarray(content, dtype=object).reshape(-1).tolist() if content else []
        if spec.datatype == "BYTES":
            flat = np.empty(len(leaves), dtype=np.object_)
            flat[:] = [v.encode() if isinstance(v, str) else str(v).encode() for v in leaves]
        elif spec.datatype == "BF16":
            flat = tb.float_to_bf16_bits(np.asarray(leaves, dtype=np.float32))
        else:
            try:
                flat = np.asarray(leaves, dtype=datatypes.numpy_dtype(spec.datatype))
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}: input {spec.name}: {exc}") from None
    else:
        raise DataError(f"{where}: input {spec.name}: expected a list of values")
    try:
        shape = _concrete_shape(spec, shapes, shape_given)
    except DataError:
        if shape_given is not None:
            raise
        # a variable-size input without --shape: a flat tensor of what is given
        if len(spec.shape) == 1:
            shape = [int(flat.size)]
        else:
            raise
    n = int(np.prod(shape)) if shape else 1
    if flat.size != n:
        raise DataError(f"{where}: input {spec.name}: {flat.size} values given, the shape "
                        f"{shape} needs {n}")
    return Value(spec.datatype, shape, flat.reshape(shape))


def from_json(path: str, model: ModelInfo, shapes: dict[str, list[int]]) -> list[list[Step]]:
    try:
        with open(path, "rb") as f:
            doc = orjson.loads(f.read())
    except OSError as exc:
        raise DataError(f"unable to read input data file '{path}': {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise DataError(f"input data file '{path}' is not valid JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise DataError(f"input data file '{path}' must have a non-empty \"data\" array")
    streams_raw = data if all(isinstance(s, list) for s in data) else [data]
    specs = {s.name: s for s in model.inputs}
    streams: list[list[Step]] = []
    for si, stream in enumerate(streams_raw):
        steps: list[Step] = []
        for ti, entry in enumerate(stream):
            where = f"{path}: stream {si} step {ti}"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected an object of input values")
            step: Step = {}
            for name, raw in entry.items():
                spec = specs.get(name)
                if spec is None:
                    raise DataError(f"{where}: the model has no input named '{name}'")
                step[name] = _value(spec, raw, shapes, where)
            missing = [s.name for s in model.inputs if s.name not in step and not s.optional]
            if missing:
                raise DataError(f"{where}: missing input(s) {', '.join(missing)}")
            steps.append(step)
        if steps:
            streams.append(steps)
    return streams


def from_directory(path: str, model: ModelInfo, shapes: dict[str, list[int]]) -> list[list[Step]]:
    step: Step = {}
    for spec in model.inputs:
        file = os.path.join(path, spec.name)
        if not os.path.isfile(file):
            if spec.optional:
                continue
            raise DataError(f"input data directory '{path}' has no file for input {spec.name}")
        shape = _concrete_shape(spec, shapes)
        n = int(np.prod(shape)) if shape else 1
        if spec.datatype == "BYTES":
            with open(file, "rb") as f:
                items = f.read().splitlines()
            if len(items) != n:
                raise DataError(f"{file}: {len(items)} lines, the shape {shape} needs {n}")
            arr = np.empty(n, dtype=np.object_)
            arr[:] = items
        else:
            dtype = datatypes.WIRE_NUMPY[spec.datatype]
            raw = open(file, "rb").read()
            if len(raw) != n * dtype.itemsize:
                raise DataError(f"{file}: {len(raw)} bytes, the shape {shape} needs "
                                f"{n * dtype.itemsize}")
            arr = np.frombuffer(raw, dtype=dtype).copy()
        step[spec.name] = Value(spec.datatype, shape, arr.reshape(shape))
    return [[step]]


def load(sources: list[str], model: ModelInfo, shapes: dict[str, list[int]],
         string_length: int = 128, string_data: str | None = None) -> list[list[Step]]:
    streams: list[list[Step]] = []
    for source in sources:
        if source in ("random", "zero"):
            streams += synthetic(model, source, shapes, string_length, string_data)
        elif os.path.isdir(source):
            streams += from_directory(source, model, shapes)
        elif os.path.isfile(source) or source.endswith(".json"):
            streams += from_json(source, model, shapes)
        else:
            raise DataError(f"--input-data '{source}': not random, zero, a JSON file or a "
                            "directory")
    if not streams:
        raise DataError("no input data")
    return streams


def batched(step: Step, batch_size: int, batching: bool) -> Step:
    """The step as one request: batch_size copies along a new first dimension."""
    if not batching:
        return step
    out: Step = {}
    for name, v in step.items():
        arr = np.broadcast_to(v.array, (batch_size, *v.array.shape))
        out[name] = Value(v.datatype, [batch_size, *v.shape], np.ascontiguousarray(arr))
    return out


def tensor_bytes(value: Value) -> bytes:
    return bytes(tb.raw_bytes(value.datatype, value.array))
