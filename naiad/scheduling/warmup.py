"""Model warmup (``model_warmup``): run sample requests before the model is READY.

As Triton does it: every instance runs every sample ``count`` times (at
least once), each time as one execution of ``batch_size`` requests of batch
1 (for a model without batching, requests of the given dims), before the
version is published. Inputs are ``zero_data`` (zeros; empty strings for
BYTES), ``random_data`` (random values; empty strings for BYTES, as Triton)
or ``input_data_file`` (raw row-major bytes read from ``<model>/warmup/``;
BYTES as 4-byte little-endian lengths each followed by the bytes). Warmup
executions count in the model's statistics, as in Triton.

A sample that fails makes the load fail: the version is UNAVAILABLE with
``failed to run warmup sample '<name>': <error>; `` (one error per failed
request), Triton's reason.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

import numpy as np

from naiad.core import datatypes
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.core.types import InferenceRequest, Tensor
from naiad.protocol import model_config_pb2 as mc

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model

WARMUP_FOLDER = "warmup"


def _wire(data_type: int) -> str:
    return datatypes.config_to_wire(mc.DataType.Name(data_type))


def _element_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _read_bytes_elements(raw: bytes, count: int, where: str) -> list[bytes]:
    out = []
    offset = 0
    while len(out) < count:
        if offset + 4 > len(raw):
            raise InvalidArgument(
                f"warmup data file '{where}' holds {len(out)} strings, {count} are needed")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"warmup data file '{where}' ends inside a string")
        out.append(bytes(raw[offset:offset + length]))
        offset += length
    return out


def sample_inputs(model: "Model", sample: mc.ModelWarmup, rng: np.random.Generator) -> dict:
    """name -> Tensor for one request of the sample (batch 1 when the model batches)."""
    tensors = {}
    lead = (1,) if model.max_batch_size > 0 else ()
    for name, spec in sample.inputs.items():
        wire = _wire(spec.data_type)
        dtype = datatypes.numpy_dtype(wire)
        dims = tuple(int(d) for d in spec.dims)
        if any(d < 0 for d in dims):
            raise InvalidArgument(
                f"warmup sample '{sample.name}' input '{name}' must give fixed dims, got "
                f"{list(dims)}")
        shape = lead + dims
        count = _element_count(shape)
        kind = spec.WhichOneof("input_data_type")
        if wire == "BYTES":
            if kind == "input_data_file":
                path = os.path.join(model.model_dir, WARMUP_FOLDER, spec.input_data_file)
                raw = _read_file(path, sample.name)
                items = _read_bytes_elements(raw, count, path)
            else:
                items = [b""] * count
            arr = np.empty(count, dtype=np.object_)
            arr[:] = items
            arr = arr.reshape(shape)
        elif kind == "input_data_file":
            path = os.path.join(model.model_dir, WARMUP_FOLDER, spec.input_data_file)
            raw = _read_file(path, sample.name)
            need = count * np.dtype(dtype).itemsize
            if len(raw) < need:
                raise InvalidArgument(
                    f"warmup setting expects {need} bytes, but the data provided from "
                    f"{spec.input_data_file} only has {len(raw)} bytes")
            arr = np.frombuffer(raw[:need], dtype=dtype).reshape(shape).copy()
        elif kind == "random_data":
            if dtype == np.bool_:
                arr = rng.integers(0, 2, size=shape).astype(np.bool_)
            elif np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                arr = rng.integers(max(info.min, -128), min(info.max, 127), size=shape,
                                   endpoint=True).astype(dtype)
            else:
                arr = rng.random(size=shape).astype(dtype)
        else:  # zero_data (or nothing chosen)
            arr = np.zeros(shape, dtype=dtype)
        tensors[name] = Tensor(name, wire, arr)
    return tensors


def _read_file(path: str, sample: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument(
            f"failed to read warmup data file for sample '{sample}': {exc}") from None


def run_warmup(model: "Model", instances: "list[ModelInstance]") -> None:
    """Run every warmup sample on every instance; raise the load failure if one fails."""
    samples = list(model.config.model_warmup)
    if not samples:
        return
    rng = np.random.default_rng(0)
    for sample in samples:
        batch = max(1, int(sample.batch_size))
        count = max(1, int(sample.count))
        if model.max_batch_size == 0 and batch > 1:
            raise InvalidArgument(
                f"warmup sample '{sample.name}' of model '{model.name}': batch_size must be 1 "
                "for a model that does not support batching")
        template = sample_inputs(model, sample, rng)
        for instance in instances:
            for _ in range(count):
                errors = _run_once(model, instance, template, batch)
                if errors:
                    raise InvalidArgument(
                        f"failed to run warmup sample '{sample.name}': "
                        + "".join(f"{e}; " for e in errors))


def _run_once(model: "Model", instance: "ModelInstance", template: dict, batch: int) -> list:
    errors: list[str] = []
    requests = []
    for _ in range(batch):
        inputs = {n: Tensor(t.name, t.datatype, t.data.copy()) for n, t in template.items()}
        req = InferenceRequest(model.name, inputs, model_version=model.version)
        try:
            model.validate(req)
        except NaiadError as exc:
            return [exc.message]

        def on_response(response, final, errors=errors):
            if final and response is not None and response.error is not None:
                errors.append(response.error.message)

        req.set_response_callback(on_response)
        req.model_version = model.version
        req.queue_start_ns = req.arrival_ns
        requests.append(req)
    with instance.lock:
        instance.run(requests)
    return errors
