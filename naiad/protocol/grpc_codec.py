"""KServe v2 gRPC inference messages <-> the core's request and response.

``decode_infer_request`` turns an ``inference.ModelInferRequest`` into a core
:class:`~naiad.core.types.InferenceRequest`; ``encode_infer_response`` turns a
core response into an ``inference.ModelInferResponse``. Tensor bytes go
through ``tensor_codec`` (the same decoder the HTTP binary extension uses, so
sizes are checked against the declared shape before anything is allocated),
and request parameters through ``http_codec.apply_request_parameters``; only
what is particular to the protobuf messages lives here: typed ``contents``,
``InferParameter`` values and Triton's rules for mixing raw and typed data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from naiad.core import tensor_bytes
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from naiad.protocol import grpc_raw
from naiad.protocol import grpc_service_pb2 as pb
from naiad.protocol.http_codec import (
    SharedMemory,
    apply_request_parameters,
    check_shared_memory_output,
    read_shared_memory_input,
)

ModelInferRequest = pb.ModelInferRequest
ModelInferResponse = pb.ModelInferResponse
ModelStreamInferResponse = pb.ModelStreamInferResponse
InferParameter = pb.InferParameter

# the one request parameter the gRPC frontend consumes itself (ModelStreamInfer)
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
FINAL_RESPONSE = "triton_final_response"

_INT64_MAX = (1 << 63) - 1

# InferTensorContents fields in Triton's order, each with the wire datatypes it
# may carry (the first is the one named when a field does not fit its tensor)
_CONTENT_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bool_contents", ("BOOL",)),
    ("int_contents", ("INT32", "INT8", "INT16")),
    ("int64_contents", ("INT64",)),
    ("uint_contents", ("UINT32", "UINT8", "UINT16")),
    ("uint64_contents", ("UINT64",)),
    ("fp32_contents", ("FP32",)),
    ("fp64_contents", ("FP64",)),
    ("bytes_contents", ("BYTES",)),
)
# narrow integer types carried in 32-bit fields: range-checked instead of
# silently truncated
_NARROW = {"INT8": np.int8, "INT16": np.int16, "UINT8": np.uint8, "UINT16": np.uint16}
_FIELD_NUMPY = {
    "bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
    "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


# ---------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------


def parse_version(text: str) -> int:
    """A request's ``model_version`` string: '' is -1 (the server picks)."""
    if not text:
        return -1
    try:
        version = int(text)
    except ValueError:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{text}' "
            "(details: stol), version should be an integral value > 0") from None
    if version < 0:
        raise InvalidArgument(
            f"invalid model version specified '{text}' , version should be an integral "
            "value > 0")
    return version


def parameter_value(key: str, param: Any) -> Any:
    """The Python value of an ``InferParameter`` (bool, int, str or float)."""
    which = param.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidArgument(f"invalid value type for '{key}' parameter, expected "
                              "int64_param, bool_param, or string_param.")
    return getattr(param, which)


def parameters_dict(params: Any) -> dict[str, Any]:
    return {k: parameter_value(k, p) for k, p in params.items()}


def set_parameters(target: Any, params: dict[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` from Python values."""
    for key, value in params.items():
        p = target[key]
        if isinstance(value, (bool, np.bool_)):
            p.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            value = int(value)
            if value > _INT64_MAX:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, (float, np.floating)):
            p.double_param = float(value)
        else:
            p.string_param = str(value)


def _expected_bool(key: str, param: Any) -> bool:
    if param.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument(
            f"invalid value type for '{key}' parameter, expected bool_param.")
    return param.bool_param


# ---------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------


def decode_contents(contents: Any, datatype: str, shape: tuple[int, ...], name: str,
                    model_name: str) -> np.ndarray:
    """An input given in the typed ``contents`` fields, as an array of ``shape``."""
    found = None
    found_field = ""
    for field, types in _CONTENT_FIELDS:
        values = getattr(contents, field)
        if not values:
            continue
        if found is not None:
            raise InvalidArgument(
                f"unexpected explicit tensor data for input tensor '{name}' for model "
                f"'{model_name}', binary data was already supplied.")
        if datatype not in types:
            carried = datatype if datatype in types else types[0]
            raise InvalidArgument(
                f"unexpected explicit tensor data for input tensor '{name}' for model "
                f"'{model_name}' of type '{carried}', expected datatype '{datatype}'")
        found, found_field = values, field
    if found is None:  # no data at all: right only for an empty tensor
        return tensor_bytes.decode_raw(b"", datatype, shape, name)
    if datatype == "BYTES":
        return tensor_bytes.bytes_tensor(list(found), shape, name)
    arr = np.array(found, dtype=_FIELD_NUMPY[found_field])
    narrow = _NARROW.get(datatype)
    if narrow is not None:
        info = np.iinfo(narrow)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = arr.min() if arr.min() < info.min else arr.max()
            raise InvalidArgument(
                f"unable to parse contents of input '{name}': {bad} is out of range for "
                f"{datatype}")
        arr = arr.astype(narrow)
    # the same size check (and message) as raw bytes
    return tensor_bytes.decode_raw(memoryview(arr).cast("B"), datatype, shape, name)


def _requested_outputs(outputs: Any, shm: SharedMemory | None) -> dict[str, RequestedOutput]:
    requested: dict[str, RequestedOutput] = {}
    for out in outputs:
        params = None
        class_count = 0
        if out.parameters:
            params = {}
            for key, p in out.parameters.items():
                if key == "classification":
                    if p.WhichOneof("parameter_choice") != "int64_param":
                        raise InvalidArgument("invalid value type for 'classification' "
                                              "parameter, expected int64_param")
                    class_count = p.int64_param
                    if class_count < 0:
                        raise InvalidArgument(
                            f"invalid value for 'classification' parameter of output "
                            f"'{out.name}', expected value >= 0")
                else:
                    params[key] = parameter_value(key, p)
            if "shared_memory_region" in params:
                check_shared_memory_output(params, shm, out.name)
        requested[out.name] = RequestedOutput(out.name, params or None, class_count)
    return requested


def parse_infer_request(data: bytes) -> tuple[Any, Any]:
    """A ModelInferRequest from its bytes, and its raw_input_contents.

    A big message is split first (``grpc_raw.split_request``): its raw
    entries come back as views into ``data``, never copied; pass them to
    ``decode_infer_request(msg, shm, raw)``. Otherwise the message's own
    repeated field is returned. Bytes that do not parse are INVALID_ARGUMENT
    (``parse_message``).
    """
    if len(data) >= grpc_raw.MIN_SPLIT_BYTES:
        split = grpc_raw.split_request(data)
        if split is not None:
            rest, raws = split
            return parse_message(ModelInferRequest, rest), raws
    msg = parse_message(ModelInferRequest, data)
    return msg, msg.raw_input_contents


def decode_infer_request(msg: Any, shm: SharedMemory | None = None, raw: Any = None
                         ) -> tuple[InferenceRequest, bool]:
    """A core request from a ModelInferRequest.

    Returns the request and whether the client asked for an empty final
    response on a stream (``triton_enable_empty_final_response``).

    As Triton: an input takes its data from a shared-memory region, from its
    ``contents``, or else from the next ``raw_input_contents`` entry (raw and
    typed data are never mixed in one request); raw entries left over are
    ignored. ``raw``: the raw entries when they were split off the message
    (``parse_infer_request``), else the message's own.
    """
    model_name = msg.model_name
    version = parse_version(msg.model_version) if msg.model_version else -1
    if raw is None:
        raw = msg.raw_input_contents
    nraw = len(raw)
    used = 0
    inputs: dict[str, Tensor] = {}
    decode_raw = tensor_bytes.decode_raw
    for t in msg.inputs:
        name = t.name
        datatype = tensor_bytes.check_datatype(t.datatype, name)
        shape = tensor_bytes.check_shape(t.shape[:], name)  # a slice: faster than tuple()
        if name in inputs:
            raise tensor_bytes.duplicate_input_error(name, msg.id)
        if t.parameters and "shared_memory_region" in t.parameters:
            if t.HasField("contents"):
                raise InvalidArgument(
                    f"unexpected 'content' provided when using shared memory for input tensor "
                    f"'{name}' for model '{model_name}'")
            arr = read_shared_memory_input(parameters_dict(t.parameters), shm,
                                           datatype, shape, name)
        elif t.HasField("contents"):
            if nraw:
                raise InvalidArgument(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{name}' for model '{model_name}'")
            arr = decode_contents(t.contents, datatype, shape, name, model_name)
        elif used < nraw:
            arr = decode_raw(raw[used], datatype, shape, name)
            used += 1
        else:
            raise InvalidArgument(
                f"unable to find data for input tensor '{name}' for model '{model_name}' in "
                "request.")
        inputs[name] = Tensor(name, datatype, arr)
    requested = _requested_outputs(msg.outputs, shm) if msg.outputs else None
    request = InferenceRequest(model_name, inputs, model_version=version, id=msg.id,
                               requested_outputs=requested)
    request.origin = "grpc"
    empty_final = False
    if msg.parameters:
        params = {}
        for key, p in msg.parameters.items():
            if key == EMPTY_FINAL_RESPONSE:
                empty_final = _expected_bool(key, p)
            else:
                params[key] = parameter_value(key, p)
        apply_request_parameters(request, params)
    return request, empty_final


# ---------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------


def encode_infer_response(response: InferenceResponse, request: InferenceRequest,
                          shm: SharedMemory | None = None) -> Any:
    """A ModelInferResponse: every output's bytes in ``raw_output_contents``.

    As Triton, each output has a ``raw_output_contents`` entry (empty when the
    output was written to shared memory), so entries line up with outputs.
    """
    msg, raws = _response_parts(response, request, shm)
    msg.raw_output_contents.extend(raw if type(raw) is bytes else bytes(raw) for raw in raws)
    return msg


def serialize_infer_response(response: InferenceResponse, request: InferenceRequest,
                             shm: SharedMemory | None = None) -> bytes:
    """``encode_infer_response(...).SerializeToString()``, copying outputs once.

    A plain response (no parameters, no output in shared memory) is written
    directly (``grpc_raw.encode_response``). Otherwise, outputs of ``grpc_raw.MIN_SPLIT_BYTES`` or more in all are appended to the
    serialized message by hand (``grpc_raw.join_response``) straight from the
    output arrays, instead of being copied into the message and out again.
    """
    requested = request.requested_outputs
    if not response.parameters and (not requested or not any(
            ro.parameters and "shared_memory_region" in ro.parameters
            for ro in requested.values())):
        raw_bytes = tensor_bytes.raw_bytes
        return grpc_raw.encode_response(
            response.model_name, str(response.model_version), response.id,
            [(t.name, t.datatype, t.data.shape, raw_bytes(t.datatype, t.data))
             for t in response.outputs])
    msg, raws = _response_parts(response, request, shm)
    if sum(len(r) for r in raws) >= grpc_raw.MIN_SPLIT_BYTES:
        return grpc_raw.join_response(msg, raws)
    msg.raw_output_contents.extend(raw if type(raw) is bytes else bytes(raw) for raw in raws)
    return msg.SerializeToString()


def _response_parts(response: InferenceResponse, request: InferenceRequest,
                    shm: SharedMemory | None) -> tuple[Any, list]:
    """The response message without its raw contents, and each output's bytes (views)."""
    requested = request.requested_outputs
    outs = []
    raws = []
    raw_bytes = tensor_bytes.raw_bytes
    OutputTensor = ModelInferResponse.InferOutputTensor
    for t in response.outputs:
        data = t.data
        ro = requested.get(t.name) if requested else None
        if ro is not None and ro.parameters and "shared_memory_region" in ro.parameters:
            if shm is None:
                raise InvalidArgument("shared memory outputs are not supported by this endpoint")
            out = OutputTensor(name=t.name, datatype=t.datatype, shape=data.shape)
            set_parameters(out.parameters, shm.write_output(t, ro.parameters) or {})
            outs.append(out)
            raws.append(b"")
            continue
        outs.append(OutputTensor(name=t.name, datatype=t.datatype, shape=data.shape))
        raws.append(raw_bytes(t.datatype, data))
    msg = ModelInferResponse(model_name=response.model_name,
                             model_version=str(response.model_version), id=response.id,
                             outputs=outs)
    if response.parameters:
        set_parameters(msg.parameters, response.parameters)
    return msg, raws


def stream_response(response: InferenceResponse | None, request: InferenceRequest,
                    model_version: str, final: bool, shm: SharedMemory | None = None) -> Any:
    """One ModelStreamInferResponse, marked with ``triton_final_response`` as Triton does.

    ``response`` None is the empty final response a client may ask for.
    Errors travel as ``error_message`` with the request's id, model name and
    (requested) version, and the stream stays open.
    """
    error = None
    if response is not None and response.error is None:
        try:
            infer = encode_infer_response(response, request, shm)
        except NaiadError as exc:
            error = exc.message
        except Exception as exc:  # an output the codec cannot encode
            error = str(exc) or type(exc).__name__
    else:
        error = response.error.message if response is not None else None
    if response is None or error is not None:
        infer = ModelInferResponse(id=request.id, model_name=request.model_name,
                                   model_version=model_version)
    infer.parameters[FINAL_RESPONSE].bool_param = final
    if error is not None:
        return ModelStreamInferResponse(error_message=error, infer_response=infer)
    return ModelStreamInferResponse(infer_response=infer)


def stream_error(message: str, request_id: str) -> Any:
    """A request the server refused before running it: the message and the id only."""
    return ModelStreamInferResponse(error_message=message,
                                    infer_response=ModelInferResponse(id=request_id))


# ---------------------------------------------------------------------------
# repository, logging and trace settings
# ---------------------------------------------------------------------------


def repository_load_parameters(params: Any) -> dict[str, Any]:
    """RepositoryModelLoad parameters as Python values for the core.

    ``config`` must be a string (Triton's check); ``file:<path>`` contents
    arrive as raw bytes, which the core takes as they are.
    """
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if key == "config" and which != "string_param":
            raise InvalidArgument("invalid value type for load parameter 'config', "
                                  "expected string_param.")
        out[key] = getattr(p, which) if which else None
    return out


def unload_dependents(params: Any) -> bool:
    p = params.get("unload_dependents") if params else None
    if p is None:
        return False
    if p.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument("invalid value type for 'unload_dependents' parameter, "
                              "expected bool_param.")
    return p.bool_param


def log_settings_dict(settings: Any) -> dict[str, Any]:
    """LogSettingsRequest settings as Python values (unset values are None)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def fill_log_settings(target: Any, settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        v = target[key]
        if isinstance(value, bool):
            v.bool_param = value
        elif isinstance(value, int):
            v.uint32_param = value
        else:
            v.string_param = str(value)


def trace_settings_dict(settings: Any) -> dict[str, Any]:
    """TraceSettingRequest settings in the HTTP JSON shapes: ``trace_level`` a list of
    strings, the others one string; no value resets the setting (None)."""
    out: dict[str, Any] = {}
    for key, setting in settings.items():
        values = list(setting.value)
        if key == "trace_level":
            out[key] = values or None
        elif len(values) > 1:
            raise InvalidArgument(f"expect only 1 value for '{key}'")  # Triton's text
        else:
            out[key] = values[0] if values else None
    return out


def fill_trace_settings(target: Any, settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        target[key].value.extend(str(v) for v in values)


def parse_message(cls: Any, data: bytes) -> Any:
    """An RPC's request message from its bytes; bytes that do not parse as it are the
    client's mistake (INVALID_ARGUMENT), never a server error."""
    try:
        return cls.FromString(data)
    except Exception as exc:
        raise InvalidArgument(
            f"Unable to parse request: not a valid {cls.DESCRIPTOR.full_name} message "
            f"({exc or type(exc).__name__})") from None


class Unparsable:
    """What a lenient deserializer hands the handler for bytes that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: NaiadError):
        self.error = error


def lenient_parser(cls: Any) -> Any:
    """A grpcio request deserializer that never raises (grpcio would answer INTERNAL):
    bytes that do not parse become an ``Unparsable`` for the handler to refuse."""

    def parse(data: bytes) -> Any:
        try:
            return parse_message(cls, data)
        except NaiadError as exc:
            return Unparsable(exc)

    return parse
