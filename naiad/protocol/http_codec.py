"""KServe v2 HTTP/REST inference bodies: JSON plus the binary tensor extension.

``decode_infer_request`` turns a request body into a core InferenceRequest;
``encode_infer_response`` turns a core InferenceResponse into body parts.
Parameters that belong to the protocol (binary_data*, shared_memory_*,
classification, the sequence and schedule-policy keys) are consumed here;
everything else is passed through to the model as request parameters.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np
import orjson

from naiad.core import datatypes, tensor_bytes
from naiad.core.errors import InvalidArgument
from naiad.core.types import (
    SEQUENCE_END,
    SEQUENCE_START,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
)
from naiad.protocol import tensor_codec

# request-level parameters the protocol itself interprets
_RESERVED_REQUEST_PARAMS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
     "binary_data_output", "headers"}
)



class SharedMemory(Protocol):
    """The system shared-memory registry as the codec uses it (naiad.core.shared_memory)."""

    def read_input(self, region: str, offset: int, byte_size: int, datatype: str,
                   shape: tuple, name: str) -> np.ndarray: ...

    def check_output(self, params: dict, name: str) -> None: ...

    def write_output(self, tensor: Tensor, params: dict) -> dict: ...


# parameter keys Triton keeps for itself (its error message, verbatim)
_RESERVED_PREFIX = "triton_"
_RESERVED_MESSAGE = ("parameter keys starting with 'triton_' are reserved for Triton usage and "
                     "should not be specified.")


def _one_source_error(name: str) -> str:
    return (f"input '{name}' must set only one of 'data', 'binary_data_size' in 'parameters' "
            "and 'shared_memory_region' in 'parameters'")


def _params(obj: dict, where: str) -> dict:
    p = obj.get("parameters")
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise InvalidArgument(f"'parameters' of {where} must be a JSON object")
    return p


def _loads_nonfinite(json_part, exc: Exception) -> Any:
    """The error path of the JSON parse: accept NaN/Infinity/-Infinity as Triton does.

    Python's ``json.dumps`` writes these literals for non-finite floats (so
    tritonclient sends them for JSON data), and Triton's parser takes them;
    orjson refuses them. Only bodies that fail orjson and contain one of the
    literals are parsed again, by the standard library.
    """
    raw = bytes(json_part)
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass
    raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None


class _Template:
    """What a binary request's JSON header says, parsed once for all its repeats.

    Clients send the same header again and again (same names, shapes, sizes,
    outputs); only the binary data after it changes. Such headers are parsed and
    checked once and remembered: a repeat costs a dict lookup and one
    ``np.frombuffer`` per input. Only headers whose inputs are all fixed-size
    binary data, without an id or request parameters, are remembered.
    """

    __slots__ = ("inputs", "requested", "binary_default", "data_size")

    def __init__(self, inputs, requested, binary_default, data_size):
        self.inputs = inputs  # ((name, datatype, numpy dtype, count, shape, offset), ...)
        self.requested = requested  # shared, read-only RequestedOutput objects
        self.binary_default = binary_default
        self.data_size = data_size


_TEMPLATES: dict[bytes, _Template] = {}
_TEMPLATE_LIMIT = 256
_TEMPLATE_MAX_HEADER = 4096


def _remember(key: bytes, request: InferenceRequest, binary_default: bool, offsets) -> None:
    if len(_TEMPLATES) >= _TEMPLATE_LIMIT:
        _TEMPLATES.pop(next(iter(_TEMPLATES)))  # oldest first
    inputs = tuple(
        (t.name, t.datatype, t.data.dtype, t.data.size, t.data.shape, off)
        for t, off in zip(request.inputs.values(), offsets)
    )
    _TEMPLATES[key] = _Template(inputs, request.requested_outputs, binary_default,
                                sum(t.data.nbytes for t in request.inputs.values()))


def _from_template(tmpl: _Template, body, header_length: int, model_name: str,
                   model_version: int) -> InferenceRequest | None:
    if len(body) - header_length != tmpl.data_size:
        return None  # let the full parser report the problem
    frombuffer = np.frombuffer
    inputs = {}
    for name, datatype, dtype, count, shape, off in tmpl.inputs:
        arr = frombuffer(body, dtype, count, header_length + off).reshape(shape)
        inputs[name] = Tensor(name, datatype, arr)
    requested = tmpl.requested
    return InferenceRequest(model_name, inputs, model_version=model_version,
                            requested_outputs=None if requested is None else dict(requested))


def decode_infer_request(
    body,
    header_length: int | None,
    model_name: str,
    model_version: int,
    shm: SharedMemory | None = None,
) -> tuple[InferenceRequest, bool]:
    """Parse an infer request body (``body`` is bytes or bytearray).

    ``shm`` resolves inputs and checks outputs placed in shared memory; without
    it, requests naming shared memory regions are refused.

    Returns the request and whether outputs not named in the request default to
    binary (the ``binary_data_output`` request parameter).
    """
    key = None
    if header_length is not None and 0 < header_length <= _TEMPLATE_MAX_HEADER and \
            header_length <= len(body):
        key = bytes(memoryview(body)[:header_length])
        tmpl = _TEMPLATES.get(key)
        if tmpl is not None:
            request = _from_template(tmpl, body, header_length, model_name, model_version)
            if request is not None:
                return request, tmpl.binary_default
    request, binary_default, cacheable, offsets = _decode_full(
        body, header_length, model_name, model_version, shm)
    if key is not None and cacheable:
        _remember(key, request, binary_default, offsets)
    return request, binary_default


def _decode_full(body, header_length, model_name, model_version, shm):
    total = len(body)
    if header_length is None:
        json_part = body
        binary_start = total
    else:
        if header_length < 0 or header_length > total:
            raise InvalidArgument(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"({total} bytes)"
            )
        json_part = memoryview(body)[:header_length]
        binary_start = header_length
    try:
        obj = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        obj = _loads_nonfinite(json_part, exc)
    if not isinstance(obj, dict):
        raise InvalidArgument("the request JSON must be an object")

    req_id = obj.get("id", "")
    if not isinstance(req_id, str):
        raise InvalidArgument("request 'id' must be a string")
    params = _params(obj, "the request")

    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidArgument("request must contain an 'inputs' array")
    inputs: dict[str, Tensor] = {}
    offset = binary_start
    mv = None
    # rememberable: all inputs fixed-size binary, no id, no request parameters
    cacheable = not req_id and all(k == "binary_data_output" for k in params)
    offsets: list[int] = []
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise InvalidArgument("each element of 'inputs' must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("each input must have a string 'name'")
        datatype = tensor_bytes.check_datatype(item.get("datatype"), name)
        shape = tensor_bytes.check_shape(item.get("shape"), name)
        iparams = _params(item, f"input '{name}'")
        if name in inputs:
            raise tensor_bytes.duplicate_input_error(name, req_id)
        if "shared_memory_region" in iparams:
            if "data" in item or "binary_data_size" in iparams:
                raise InvalidArgument(_one_source_error(name))
            arr = read_shared_memory_input(iparams, shm, datatype, shape, name)
            cacheable = False
        elif "binary_data_size" in iparams:
            size = iparams["binary_data_size"]
            if "data" in item:
                raise InvalidArgument(_one_source_error(name))
            if type(size) is not int or size < 0:
                raise InvalidArgument(f"binary_data_size of input '{name}' must be a "
                                      "non-negative integer")
            if offset + size > total:
                raise InvalidArgument(
                    f"unexpected size for input '{name}', expecting {size} additional bytes for "
                    f"model '{model_name}'"
                )
            if mv is None:
                mv = memoryview(body)
            arr = tensor_bytes.decode_raw(mv[offset:offset + size], datatype, shape, name)
            offsets.append(offset - binary_start)
            if datatype == "BYTES":
                cacheable = False
            offset += size
        elif "data" in item:
            cacheable = False
            arr = tensor_codec.decode_json_data(item["data"], datatype, shape, name)
        else:
            raise InvalidArgument(f"input '{name}' must have 'data', binary data or a shared "
                                  "memory region")
        inputs[name] = Tensor(name, datatype, arr)
    if offset != total:
        raise InvalidArgument(f"unexpected additional input data for model '{model_name}'")

    binary_default = params.get("binary_data_output", False) is True
    requested: dict[str, RequestedOutput] | None = None
    raw_outputs = obj.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidArgument("'outputs' must be an array")
        requested = {}
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidArgument("each requested output must be an object with a 'name'")
            oparams = _params(item, f"output '{item['name']}'")
            cls = 0
            if "classification" in oparams:
                oparams = dict(oparams)
                cls = oparams.pop("classification")
            if type(cls) is not int or cls < 0:
                raise InvalidArgument(f"classification of output '{item['name']}' must be a "
                                      "non-negative integer")
            if "shared_memory_region" in oparams:
                if oparams.get("binary_data") is True:
                    raise InvalidArgument(
                        "Output can't set both 'shared_memory_region' and 'binary_data'")
                check_shared_memory_output(oparams, shm, item["name"])
                cacheable = False  # placement is checked against the registry every time
            requested[item["name"]] = RequestedOutput(item["name"], oparams, cls)
        if not requested:
            requested = None

    request = InferenceRequest(
        model_name, inputs, model_version=model_version, id=req_id, requested_outputs=requested
    )
    if params:
        apply_request_parameters(request, params)
    return request, binary_default, cacheable, offsets


def decode_raw_request(body, model, model_name: str, model_version: int) -> InferenceRequest:
    """Triton's raw binary request (Inference-Header-Content-Length: 0).

    The body is the data of the model's only input; its shape is the config's
    dims (batch size 1 for batching models), with one variable dimension
    deduced from the byte count. Every output comes back as binary data.
    """
    specs = list(model.inputs.values())
    if len(specs) != 1:
        raise InvalidArgument(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with "
            f"exactly one input; model '{model_name}' has {len(specs)}")
    spec = specs[0]
    dims = ([1] if model.max_batch_size > 0 else []) + list(spec.dims)
    datatype = spec.datatype
    total = len(body)
    if datatype == "BYTES":
        count = tensor_bytes.count_bytes_elements(body, spec.name)
    else:
        size = datatypes.ELEMENT_SIZE[datatype]
        if total % size:
            raise InvalidArgument(
                f"input byte size {total} for input '{spec.name}' of model '{model_name}' is not "
                f"a multiple of its {datatype} element size")
        count = total // size
    wild = [i for i, d in enumerate(dims) if d == -1]
    known = 1
    for d in dims:
        if d != -1:
            known *= d
    if len(wild) > 1:
        raise InvalidArgument(
            f"the shape of input '{spec.name}' of model '{model_name}' cannot be deduced from "
            "a raw binary request: more than one variable-size dimension")
    if wild:
        if known == 0 or count % known:
            raise InvalidArgument(
                f"[request id: <id_unknown>] input byte size mismatch for input '{spec.name}' "
                f"for model '{model_name}'. Got {total} bytes")
        dims[wild[0]] = count // known
    elif count != known:
        expected = known * datatypes.ELEMENT_SIZE[datatype] if datatype != "BYTES" else known
        raise InvalidArgument(
            f"[request id: <id_unknown>] input byte size mismatch for input '{spec.name}' "
            f"for model '{model_name}'. Expected {expected}, got {total}")
    arr = tensor_bytes.decode_raw(body, datatype, tuple(dims), spec.name)
    return InferenceRequest(model_name, {spec.name: Tensor(spec.name, datatype, arr)},
                            model_version=model_version)


def read_shared_memory_input(params: dict[str, Any], shm: SharedMemory | None,
                             datatype: str, shape: tuple, name: str) -> np.ndarray:
    """An input given as a shared-memory region (HTTP and gRPC input parameters)."""
    if shm is None:
        raise InvalidArgument("shared memory inputs are not supported by this endpoint")
    region = params["shared_memory_region"]
    byte_size = params.get("shared_memory_byte_size")
    shm_offset = params.get("shared_memory_offset", 0)
    if not isinstance(region, str) or type(byte_size) is not int or \
            type(shm_offset) is not int:
        raise InvalidArgument(
            f"input '{name}': shared_memory_region must be a string and "
            "shared_memory_byte_size/offset integers")
    return shm.read_input(region, shm_offset, byte_size, datatype, shape, name)


def check_shared_memory_output(params: dict[str, Any], shm: SharedMemory | None,
                               name: str) -> None:
    """An output to be written to a shared-memory region: its placement, checked now."""
    if shm is None:
        raise InvalidArgument("shared memory outputs are not supported by this endpoint")
    shm.check_output(params, name)


def apply_request_parameters(request: InferenceRequest, params: dict[str, Any]) -> None:
    """Consume the sequence and schedule-policy keys; pass the rest through.

    Keys starting with ``triton_`` are Triton's own: a frontend consumes the
    ones it knows before calling this; any other is refused, as Triton does.
    """
    passthrough = {}
    for key, value in params.items():
        if key.startswith(_RESERVED_PREFIX):
            raise InvalidArgument(_RESERVED_MESSAGE)
        if key == "sequence_id":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise InvalidArgument("sequence_id must be an unsigned integer or a string")
            if isinstance(value, int) and value < 0:
                raise InvalidArgument("sequence_id must be an unsigned integer or a string")
            request.correlation_id = value
        elif key == "sequence_start":
            if not isinstance(value, bool):
                raise InvalidArgument("sequence_start must be a boolean")
            if value:
                request.flags |= SEQUENCE_START
        elif key == "sequence_end":
            if not isinstance(value, bool):
                raise InvalidArgument("sequence_end must be a boolean")
            if value:
                request.flags |= SEQUENCE_END
        elif key == "priority":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument("priority must be a non-negative integer")
            request.priority = value
        elif key == "timeout":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument("timeout must be a non-negative integer (microseconds)")
            request.timeout_us = value
        elif key in ("binary_data_output", "headers"):
            continue
        else:
            if not isinstance(value, (bool, int, float, str)):
                raise InvalidArgument(
                    f"parameter '{key}' has invalid type. It should be either 'int', 'bool', "
                    "'double' or 'string'.")
            passthrough[key] = value
    request.parameters = passthrough


def encode_infer_response(
    response: InferenceResponse,
    request: InferenceRequest,
    binary_default: bool = False,
    shm: SharedMemory | None = None,
) -> tuple[list, int | None]:
    """Body parts and the JSON header length (None when the body is all JSON)."""
    requested = request.requested_outputs
    outs = []
    binaries = []
    for t in response.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if requested:
            # as Triton: binary_data_output is only the default of the outputs a
            # request does not list; a listed output is binary when it says so
            ro = requested.get(t.name)
            oparams = ro.parameters if ro is not None else None
            binary = oparams.get("binary_data") is True if oparams else False
        else:
            oparams = None
            binary = binary_default
        if oparams and "shared_memory_region" in oparams:
            if shm is None:
                raise InvalidArgument("shared memory outputs are not supported by this endpoint")
            shm_params = shm.write_output(t, oparams)
            if shm_params:
                entry["parameters"] = shm_params
        elif binary:
            raw = tensor_bytes.raw_bytes(t.datatype, t.data)
            size = len(raw)
            entry["parameters"] = {"binary_data_size": size}
            if size:
                binaries.append(raw)
        else:
            entry["data"] = tensor_codec.json_data(t.datatype, t.data)
        outs.append(entry)
    head: dict[str, Any] = {}
    if response.id:
        head["id"] = response.id
    head["model_name"] = response.model_name
    head["model_version"] = str(response.model_version)
    if response.parameters:
        head["parameters"] = response.parameters
    head["outputs"] = outs
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in header:
        # orjson writes NaN and +-inf as null; Triton writes NaN/Infinity/-Infinity.
        # A byte search keeps this off the common path; only a response that has a
        # null somewhere is looked at closely.
        for entry in outs:
            data = entry.get("data")
            if isinstance(data, np.ndarray):
                entry["data"] = tensor_codec.nonfinite_json(data)
        header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    # like Triton: an all-JSON body (no Inference-Header-Content-Length) when every
    # binary output is empty
    if not binaries:
        return [header], None
    return [header, *binaries], len(header)
